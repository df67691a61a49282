"""What every job does around its workload: state.json bookkeeping, stop signals, requeue.

`run_job(run_dir)` reads the spec back from the run folder, marks the run RUNNING, runs the kind's
workload and records how it ended. A workload polls `ctx.stop` at step boundaries; when a stop
was requested it saves and returns `Outcome("stopped")`, and only then does this module hand the
signal to submitit (which pickles `JobTarget.checkpoint()`'s resubmission and requeues the job).
So the save never happens inside a signal handler (Lightning #21406).
"""

from __future__ import annotations

import importlib
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hcli.runs import Run, now_iso, run_lock
from hcli.spec import Spec

__all__ = ["JobContext", "Outcome", "run_job", "current_job_id", "WORKLOADS"]

# kind -> "module:function"; later kinds (mae, meta, adapt) add a line here.
WORKLOADS: dict[str, str] = {
    "probe": "jobs.probe:run",
    "multiclass": "jobs.multiclass.train:run",
}


@dataclass
class Outcome:
    status: str  # "completed" | "stopped"
    step: int | None = None
    reason: str | None = None


@dataclass
class JobContext:
    run: Run
    spec: Spec
    job_id: str
    stop: Any  # jobs.signals.StopFlag
    rank: int = 0
    started: float = field(default_factory=time.time)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def current_job_id() -> str:
    env = os.environ
    if "HCLI_JOB_ID" in env:
        return env["HCLI_JOB_ID"]
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    if env.get("SLURM_JOB_ID"):
        return env["SLURM_JOB_ID"]
    return f"local-{os.getpid()}"


def _on_slurm() -> bool:
    return "SLURM_JOB_ID" in os.environ and os.environ.get("SUBMITIT_EXECUTOR") == "slurm"


def _update(run: Run, **changes: Any) -> dict[str, Any]:
    with run_lock(run.path.parent, run.run_id):
        return run.update_state(**changes)


def _mark_running(ctx: JobContext) -> None:
    with run_lock(ctx.run.path.parent, ctx.run.run_id):
        state = ctx.run.state()
        restarted = state["state"] == "REQUEUED" or any(ctx.run.checkpoints.glob("*.done"))
        jobs = state.get("jobs") or []
        if not jobs or jobs[-1]["job_id"] != ctx.job_id:
            # A requeued SLURM job keeps its id; a new job id means a new submission we did not
            # record (e.g. the job was started by hand).
            jobs.append(
                {
                    "job_id": ctx.job_id,
                    "executor": "slurm" if _on_slurm() else "local",
                    "submitted_at": now_iso(),
                    "attempt": state.get("attempt", 1),
                }
            )
        jobs[-1].setdefault("starts", []).append(now_iso())
        ctx.run.update_state(
            state="RUNNING",
            jobs=jobs,
            host=socket.gethostname(),
            pid=os.getpid(),
            restarts=state.get("restarts", 0) + (1 if restarted else 0),
            message=None,
        )


def _load_workload(kind: str) -> Callable[[JobContext], Outcome]:
    if kind not in WORKLOADS:
        raise NotImplementedError(f"kind {kind!r} has no workload yet")
    module, _, func = WORKLOADS[kind].partition(":")
    return getattr(importlib.import_module(module), func)


def run_job(run_dir: Path) -> dict[str, Any]:
    from jobs.distributed import init_distributed
    from jobs.signals import StopFlag

    run = Run(Path(run_dir))
    spec = run.spec()
    submitit_usr2 = signal.getsignal(signal.SIGUSR2)  # submitit's requeue handler, when on SLURM
    stop = StopFlag.install()
    dist = init_distributed()
    ctx = JobContext(run=run, spec=spec, job_id=current_job_id(), stop=stop, rank=dist.rank)
    if ctx.is_main:
        _mark_running(ctx)
    try:
        outcome = _load_workload(spec.kind)(ctx)
    except BaseException as exc:
        if ctx.is_main:
            reason = f"{type(exc).__name__}: {exc}".splitlines()[0][:500]
            _update(run, state="FAILED", message=reason)
        raise
    if not ctx.is_main:
        return {"status": outcome.status}
    if outcome.status == "completed":
        _update(run, state="COMPLETED", message=None)
        return {"status": "completed", "step": outcome.step}
    return _after_stop(ctx, outcome, submitit_usr2)


def _slurm_is_ending_job() -> bool:
    """True when SLURM itself is ending this job (a plain `scancel`, the time limit).

    Such a SIGTERM looks like a preemption warning, but `scontrol requeue` of a job SLURM already
    marked COMPLETING succeeds and brings back a job the user cancelled (seen on Slurm 22.05), so
    we requeue only while SLURM still counts the job as running.
    """
    import subprocess

    from jobs.signals import slurm_job_id

    job_id = slurm_job_id()
    if job_id is None:
        return False
    try:
        out = subprocess.run(
            ["scontrol", "show", "job", "-o", job_id],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return False
    fields = dict(f.split("=", 1) for f in out.split() if "=" in f)
    return fields.get("JobState") in ("COMPLETING", "CANCELLED")


def _after_stop(ctx: JobContext, outcome: Outcome, submitit_usr2: Any) -> dict[str, Any]:
    run = ctx.run
    cancelled = run.state().get("state") == "CANCELLED"  # `hcli cancel` marks before scancel
    ending = outcome.reason == "SIGTERM" and _on_slurm() and _slurm_is_ending_job()
    if cancelled or ending or not _on_slurm() or not callable(submitit_usr2):
        by = "scancel or the scheduler ending the job" if ending else outcome.reason
        msg = (
            f"stopped by {by} at step {outcome.step}; "
            f"`hcli resume {run.run_id}` continues from the checkpoint"
        )
        _update(run, state="CANCELLED", message=msg)
        return {"status": "stopped", "step": outcome.step}
    state = run.state()
    requeues = state.get("requeues", []) + [
        {"at": now_iso(), "step": outcome.step, "reason": outcome.reason, "job_id": ctx.job_id}
    ]
    _update(run, state="REQUEUED", requeues=requeues, message=f"requeued after {outcome.reason}")
    sys.stdout.flush()
    # submitit's handler calls JobTarget.checkpoint(), requeues this job (only this array task)
    # unless max_num_timeout is used up, and exits the process.
    try:
        submitit_usr2(signal.SIGUSR2, None)
    except Exception:
        # submitit declined to requeue (slurm.max_requeues used up) and says so by raising.
        _update(run, state="FAILED", message="stopped and out of requeues (slurm.max_requeues)")
        raise
    return {"status": "stopped", "step": outcome.step}
