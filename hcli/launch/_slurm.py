"""submitit's Slurm executor configured from a spec's `slurm` section.

The sbatch script `--dry-run` shows is rendered by submitit from the same parameters and python
command the submitting executor gets, so what a user reads is what the cluster gets (golden-file
test in tests/test_submit.py). Rendering needs no SLURM command (hcli._submitit_compat); only a
real submission needs `sbatch`, and says so in one line when it is missing.
"""

from __future__ import annotations

import shlex
import shutil
import sys
from pathlib import Path
from typing import Any

from hcli.errors import UserError
from hcli.spec import Spec

__all__ = ["make_executor", "render_sbatch", "slurm_parameters"]


def slurm_parameters(spec: Spec, *, job_name: str, dependency: str | None = None) -> dict[str, Any]:
    s = spec.slurm
    params: dict[str, Any] = {
        "job_name": job_name,
        "time": s.time_min,
        "nodes": s.nodes,
        "ntasks_per_node": s.ntasks_per_node,
        "cpus_per_task": s.cpus_per_task,
        "mem": f"{s.mem_gb:g}G",
        "signal_delay_s": s.signal_delay_s,
        "stderr_to_stdout": False,
        # Our job saves at a step boundary and only then hands USR2 to submitit, which requeues
        # it (jobs/runtime.py); SLURM itself must allow requeue for that.
        "additional_parameters": {"requeue": True, **s.additional_parameters},
        "setup": list(s.setup),
    }
    for key in ("partition", "account", "qos", "constraint"):
        value = getattr(s, key)
        if value:
            params[key] = value
    if s.gpus_per_node:
        params["gpus_per_node"] = s.gpus_per_node
    if dependency:
        params["additional_parameters"]["dependency"] = dependency
        # A job whose upstream failed is cancelled by SLURM rather than left pending forever
        # (reason DependencyNeverSatisfied); the failed run marks its run BLOCKED and says why.
        params["additional_parameters"]["kill_on_invalid_dep"] = "yes"
    return params


def _python_command(spec: Spec, runs_root: Path) -> str:
    if spec.slurm.container is None:
        return shlex.quote(sys.executable)
    # The job runs the container's python, which has hcli installed; the runs root is bound so the
    # run folder (spec, code snapshot, checkpoints) is visible inside.
    return " ".join(
        ["apptainer", "exec", "--nv", "--bind", shlex.quote(str(runs_root)),
         shlex.quote(str(spec.slurm.container)), "python3"]
    )


def _executor_parameters(
    spec: Spec, *, job_name: str, dependency: str | None, array_parallelism: int | None
) -> dict[str, Any]:
    """What `update_parameters` gets, for the submitting executor and the renderer alike."""
    params = slurm_parameters(spec, job_name=job_name, dependency=dependency)
    if array_parallelism:
        params["array_parallelism"] = array_parallelism
    return params


def make_executor(spec: Spec, folder: Path, *, job_name: str, runs_root: Path,
                  dependency: str | None = None, array_parallelism: int | None = None) -> Any:
    # submitit itself needs both: sbatch to submit, srun to build the executor at all.
    missing = [cmd for cmd in ("sbatch", "srun") if shutil.which(cmd) is None]
    if missing:
        raise UserError(
            f"submitting to SLURM needs {' and '.join(missing)} on the PATH, not found here: "
            "submit from a SLURM login node (or load SLURM), use --local, or see the script "
            "with --dry-run"
        )
    import submitit

    executor = submitit.SlurmExecutor(
        folder=folder,
        max_num_timeout=spec.slurm.max_requeues,
        python=_python_command(spec, runs_root),
    )
    executor.update_parameters(**_executor_parameters(
        spec, job_name=job_name, dependency=dependency, array_parallelism=array_parallelism
    ))
    return executor


def render_sbatch(spec: Spec, folder: Path, *, job_name: str, runs_root: Path,
                  dependency: str | None = None, array_parallelism: int | None = None,
                  array_size: int | None = None) -> str:
    """The sbatch script `make_executor` would submit for one run, or, with `array_size`, for a
    batch of that many runs (one array, `--array=0-N%P`); works without SLURM."""
    from hcli._submitit_compat import render_sbatch_text

    return render_sbatch_text(
        folder,
        python=_python_command(spec, runs_root),
        max_num_timeout=spec.slurm.max_requeues,
        parameters=_executor_parameters(
            spec, job_name=job_name, dependency=dependency, array_parallelism=array_parallelism
        ),
        array_size=array_size,
    )
