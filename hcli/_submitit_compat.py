"""Every use of submitit's private API, in one place. Read from submitit 1.5.4.

pyproject.toml pins submitit to that minor version (`>=1.5.4,<1.6`); `SUBMITIT_READ_FROM` says
which release the code below was read from, and tests/test_no_slurm.py checks the pin agrees.
Before moving the pin, re-read the three places named here in the new release and run
tests/test_submit.py (the golden sbatch script), tests/test_no_slurm.py, tests/test_signals.py
and tests/test_distributed.py.

- `render_sbatch_text`: the sbatch script an executor would submit. submitit renders it only
  inside `Executor._submit_command`, which also runs sbatch, so `--dry-run` calls the two private
  methods that make it: `SlurmExecutor._make_submission_file_text(_submitit_command_str, uid)`.
  `SlurmExecutor.__init__` also refuses to exist when `srun` is not on the PATH (through the
  public classmethod `affinity()`), though writing the script needs no SLURM at all: the
  renderer is a subclass whose `affinity()` does not look, so the dry run works on a laptop.
  An array's script is the same text with `parameters["map_count"] = n` set on the executor,
  which is what `SlurmExecutor._internal_process_submissions` does to a batch of n jobs
  (`update_parameters` refuses `map_count`; submitit sets it directly too).
- `SlurmJobEnvironment` (module `submitit.slurm.slurm`, not exported by `submitit`): the job id
  in `scontrol`'s form (`ARRAYJOB_TASK`), hostnames parsed from `SLURM_JOB_NODELIST` and the
  ranks, as submitit's own `helpers.TorchDistributedEnvironment` reads them (jobs.signals,
  jobs.distributed).

Torch-free, but imports submitit (~30 ms): import this module inside the function that needs it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import submitit
from submitit.slurm.slurm import SlurmJobEnvironment

__all__ = ["SUBMITIT_READ_FROM", "SlurmJobEnvironment", "render_sbatch_text"]

SUBMITIT_READ_FROM = "1.5.4"


class _SbatchRenderer(submitit.SlurmExecutor):
    """A `SlurmExecutor` that is never asked to submit, so it need not find `srun`."""

    @classmethod
    def affinity(cls) -> int:
        return 2  # what SlurmExecutor.affinity() answers when srun is on the PATH


def render_sbatch_text(
    folder: Path,
    *,
    python: str,
    max_num_timeout: int,
    parameters: dict[str, Any],
    array_size: int | None = None,
) -> str:
    """The sbatch script `SlurmExecutor(folder, max_num_timeout, python=python)` with
    `update_parameters(**parameters)` would submit, rendered without any SLURM command; with
    `array_size`, the script of a batch of that many jobs (one array)."""
    executor = _SbatchRenderer(folder=folder, max_num_timeout=max_num_timeout, python=python)
    executor.update_parameters(**parameters)
    if array_size is not None and array_size > 1:
        executor.parameters["map_count"] = array_size
    # The uid names the temporary submission file only; the slurm text does not contain it.
    return str(executor._make_submission_file_text(executor._submitit_command_str, "dry-run"))
