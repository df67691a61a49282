"""What every job does around its workload: state.json bookkeeping, stop signals, requeue.

`run_job(run_dir)` reads the spec back from the run folder, marks the run RUNNING, runs the kind's
workload and records how it ended. A workload polls `ctx.stop` at step boundaries; when a stop
was requested it saves and returns `Outcome("stopped")`, and only then does this module hand the
signal to submitit (which pickles `JobTarget.checkpoint()`'s resubmission and requeues the job).
So the save never happens inside a signal handler (Lightning #21406).
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hcli.contract import Hardware, JobRecord, Requeue, State, dump
from hcli.runs import Run, now_iso, run_lock
from hcli.spec import Spec
from jobs.progress import append_event

__all__ = ["JobContext", "Outcome", "run_job", "current_job_id"]


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


def _update(run: Run, *, ended: bool = False, **changes: Any) -> dict[str, Any]:
    """Change state.json under the run's lock; `ended` records the end of this execution."""
    with run_lock(run.path.parent, run.run_id):
        if ended:
            changes["jobs"] = _with_end(run.state())
        return run.update_state(**changes)


def _with_end(state: dict[str, Any]) -> list[dict[str, Any]]:
    """state.json's jobs with the newest execution's end set to now (the compute accounts)."""
    parsed = State.model_validate(state)
    if parsed.jobs and parsed.jobs[-1].starts:
        job = parsed.jobs[-1]
        job.ends += [None] * (len(job.starts) - len(job.ends))
        job.ends[-1] = now_iso()
    return [dump(j) for j in parsed.jobs]


def hardware(world_size: int) -> Hardware:
    """What this execution runs on, as rank 0 sees it (SLURM's variables, else this host)."""
    env = os.environ
    nodes = int(env.get("SLURM_JOB_NUM_NODES") or env.get("SLURM_NNODES") or 1)
    gpus, gpu_name = 0, None
    torch = sys.modules.get("torch")  # already imported by jobs.distributed; never import it here
    if torch is not None and torch.cuda.is_available():
        gpus = min(world_size, torch.cuda.device_count() * nodes) if world_size > 1 else 1
        gpu_name = torch.cuda.get_device_name(0)
    return Hardware(
        host=socket.gethostname(), nodes=nodes, nodelist=env.get("SLURM_JOB_NODELIST"),
        world_size=world_size, gpus=gpus, gpu_name=gpu_name,
    )


def _mark_running(ctx: JobContext, hw: Hardware | None = None) -> None:
    with run_lock(ctx.run.path.parent, ctx.run.run_id):
        state = State.model_validate(ctx.run.state())
        restarted = state.state == "REQUEUED" or any(ctx.run.checkpoints.glob("*.done"))
        if not state.jobs or state.jobs[-1].job_id != ctx.job_id:
            # A requeued SLURM job keeps its id; a new job id means a new submission we did not
            # record (e.g. the job was started by hand).
            executor = "slurm" if _on_slurm() else "local"
            state.jobs.append(JobRecord.new(ctx.job_id, executor, state.attempt))
        job = state.jobs[-1]
        # An earlier execution that died without recording its end keeps a null end.
        job.ends += [None] * (len(job.starts) - len(job.ends))
        job.hardware += [Hardware()] * (len(job.starts) - len(job.hardware))
        job.starts.append(now_iso())
        job.hardware.append(hw or Hardware(host=socket.gethostname()))
        if state.state == "REQUEUED" and state.requeues:
            # Written once the requeue has really happened (submitit may still decline it), at
            # the time it was asked for: the learning curve marks it (hcli/report/figures.py)
            # and collect's timestamp accounting cuts the run there.
            last = state.requeues[-1]
            append_event(ctx.run.path, last.step or 0, "requeued", time=last.at,
                         reason=last.reason, job_id=last.job_id)
        ctx.run.update_state(
            state="RUNNING",
            jobs=[dump(j) for j in state.jobs],
            host=socket.gethostname(),
            pid=os.getpid(),
            restarts=state.restarts + (1 if restarted else 0),
            message=None,
        )


def _load_workload(kind: str) -> Callable[[JobContext], Outcome]:
    from hcli.kinds import get_kind, load_attr

    workload = get_kind(kind).workload
    if workload is None:
        raise NotImplementedError(f"kind {kind!r} has no workload yet")
    return load_attr(workload)


def run_job(run_dir: Path) -> dict[str, Any]:
    from jobs.distributed import init_distributed
    from jobs.signals import StopFlag

    run = Run(Path(run_dir))
    spec = run.spec()
    submitit_usr2 = signal.getsignal(signal.SIGUSR2)  # submitit's requeue handler, when on SLURM
    stop = StopFlag.install()
    dist = init_distributed()
    ctx = JobContext(run=run, spec=spec, job_id=current_job_id(), stop=stop, rank=dist.rank)
    if _cancelled_before_start(ctx):
        return {"status": "stopped", "step": None}
    if run.state().get("state") == "BLOCKED":  # a pipeline run whose upstream failed: skip it
        return {"status": "blocked", "step": None}
    if ctx.is_main:
        _mark_running(ctx, hardware(dist.world_size))
    try:
        # What `hcli submit` checked on the submitting machine, again where the job runs (a
        # submission with --skip-checks checked nothing): same messages, before any work.
        from hcli.launch._checks import preflight

        preflight(spec, run.path.parent, on_node=True)
        if spec.data.stage_to_local:
            # Before the workload opens any data; only the in-memory spec changes, so the run
            # folder's spec.json and the run id keep the shared path.
            from jobs.data.staging import stage_spec

            ctx.spec, _ = stage_spec(spec)
        outcome = _load_workload(spec.kind)(ctx)
    except BaseException as exc:
        if ctx.is_main:
            from hcli.errors import UserError

            said = str(exc) if isinstance(exc, UserError) else f"{type(exc).__name__}: {exc}"
            reason = said.splitlines()[0][:500] if said else type(exc).__name__
            _update(run, ended=True, state="FAILED", message=reason)
            _block_dependants(run, "FAILED")
        raise
    if not ctx.is_main:
        return {"status": outcome.status}
    if outcome.status == "completed":
        _update(run, ended=True, state="COMPLETED", message=None)
        return {"status": "completed", "step": outcome.step}
    return _after_stop(ctx, outcome, submitit_usr2)


def _block_dependants(run: Run, why: str) -> None:
    """Pipeline runs waiting for this one will never start: say so in their state.json."""
    from hcli.study._pipeline import block_dependants

    try:
        block_dependants(run.path.parent, run.run_id, why)
    except Exception as exc:  # the run's own failure is what must be recorded and raised
        print(f"could not mark the runs waiting for {run.run_id} BLOCKED: {exc}", file=sys.stderr)


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


def _cancelled_before_start(ctx: JobContext) -> bool:
    """True when this job must not run: its run was cancelled before it started.

    `hcli cancel` marks the run before it calls scancel, and a pending array task can start in
    between; a plain scancel's SIGTERM can arrive before `StopFlag` is installed, when
    submitit's handler only logs it. Either job would otherwise mark the run RUNNING, with
    no message, and train until SLURM kills it, saving nothing.
    """
    if ctx.run.state().get("state") == "CANCELLED":
        return True  # `hcli cancel` recorded who and when
    if not (_on_slurm() and _slurm_is_ending_job()):
        return False
    if ctx.is_main:
        _update(ctx.run, state="CANCELLED", message=(
            f"cancelled by scancel (SLURM was ending job {ctx.job_id}) before it started; "
            f"`hcli resume {ctx.run.run_id}` starts it"
        ))
    return True


def _after_stop(ctx: JobContext, outcome: Outcome, submitit_usr2: Any) -> dict[str, Any]:
    run = ctx.run
    cancelled = run.state().get("state") == "CANCELLED"  # `hcli cancel` marks before scancel
    ending = (not cancelled and outcome.reason == "SIGTERM" and _on_slurm()
              and _slurm_is_ending_job())
    saved = f"saved at step {outcome.step}; `hcli resume {run.run_id}` continues from it"
    if cancelled or ending or not _on_slurm() or not callable(submitit_usr2):
        if cancelled:
            by = "cancelled by hcli cancel"
        elif ending:
            by = f"cancelled by scancel (SLURM was ending job {ctx.job_id})"
        else:
            by = f"stopped by {outcome.reason}"
        _update(run, ended=True, state="CANCELLED", message=f"{by}; {saved}")
        return {"status": "stopped", "step": outcome.step}
    requeue = Requeue(at=now_iso(), step=outcome.step, reason=outcome.reason, job_id=ctx.job_id)
    requeues = [*run.state().get("requeues", []), dump(requeue)]
    _update(run, ended=True, state="REQUEUED", requeues=requeues,
            message=f"requeued after {outcome.reason}")
    sys.stdout.flush()
    # submitit's handler calls JobTarget.checkpoint(), requeues this job (only this array task)
    # unless max_num_timeout is used up, and exits the process.
    try:
        submitit_usr2(signal.SIGUSR2, None)
    except Exception:
        # submitit declined to requeue (slurm.max_requeues used up) and says so by raising.
        by = "the time limit" if outcome.reason == "SIGUSR2" else "a preemption"
        _update(run, state="CANCELLED", requeues=requeues[:-1], message=(
            f"cancelled by {by} ({outcome.reason}) with its requeues used up "
            f"(slurm.max_requeues={ctx.spec.slurm.max_requeues}); {saved}"
        ))
        raise
    return {"status": "stopped", "step": outcome.step}
