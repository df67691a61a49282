"""Idempotent submission: one run per identity, one job per run, however often it is asked.

Every decision about a run happens under its lock (`hcli.runs.run_lock`), so ten concurrent
`hcli submit` of the same spec create one folder and one job. Decisions for all runs are taken
before anything is submitted, so a refused run never leaves half a sweep behind.
"""

from __future__ import annotations

import contextlib
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from hcli.ckpt_identity import check_run_checkpoints, checkpoint_identity
from hcli.errors import ClusterError, RunError, UserError
from hcli.launch._local import start_background
from hcli.launch._plan import PlannedRun
from hcli.launch._slurm import make_executor, render_sbatch
from hcli.runs import ACTIVE_STATES, Run, create_run, find_run, now_iso, run_lock
from hcli.scheduler import job_alive, max_array_size

__all__ = ["Mode", "SubmitOutcome", "submit_runs", "resume_run", "dependency_for"]

Mode = Literal["slurm", "local", "foreground"]


@dataclass
class SubmitOutcome:
    run_id: str
    action: Literal["submitted", "exists", "dry-run"]
    state: str
    job_id: str | None = None
    run_dir: Path | None = None
    sbatch: str | None = None
    spec: dict = field(default_factory=dict)


def dependency_for(root: Path, refs: list[str]) -> str | None:
    """`afterok:` on the current jobs of the runs named; completed runs need no waiting."""
    job_ids = []
    for ref in refs:
        run = find_run(root, ref)
        state = run.state()
        if state["state"] == "COMPLETED":
            continue
        if state["state"] in ("FAILED", "CANCELLED"):
            raise RunError(
                f"--after {ref}: that run is {state['state']}; resume it first (hcli resume {ref})"
            )
        job = run.job_id
        if not job or job.startswith(("local-", "foreground")):
            raise RunError(
                f"--after {ref}: that run has no SLURM job to wait for; submit it with --cluster"
            )
        job_ids.append(job)
    return "afterok:" + ":".join(job_ids) if job_ids else None


def _archive_attempt(run: Run) -> None:
    """`--force`: move the previous attempt's outputs aside and start clean."""
    state = run.state()
    dest = run.path / "attempts" / str(state.get("attempt", 1))
    dest.mkdir(parents=True, exist_ok=True)
    for name in (
        "checkpoints",
        "logs",
        "tb",
        "figures",
        "progress.json",
        "metrics.jsonl",
        "results.json",
    ):
        src = run.path / name
        if src.exists():
            shutil.move(str(src), str(dest / name))
    (run.path / "checkpoints").mkdir()
    (run.path / "logs").mkdir()
    run.update_state(
        state="PENDING", attempt=state.get("attempt", 1) + 1, restarts=0, message=None, requeues=[]
    )


def submit_runs(
    planned: list[PlannedRun],
    root: Path,
    *,
    mode: Mode,
    dry_run: bool = False,
    force: bool = False,
    after: list[str] | None = None,
    max_parallel: int | None = None,
) -> list[SubmitOutcome]:
    dependency = dependency_for(root, after) if after else None
    if dependency and mode != "slurm":
        raise UserError("--after needs --cluster: local runs cannot wait for SLURM jobs")
    if dry_run:
        return [_dry_run(p, root, mode, dependency) for p in planned]

    outcomes: list[SubmitOutcome] = []
    with contextlib.ExitStack() as stack:
        for p in sorted(planned, key=lambda p: p.run_id):  # one order: no deadlock between sweeps
            stack.enter_context(run_lock(root, p.run_id))
        fresh: list[tuple[PlannedRun, Run, bool]] = []
        for p in planned:
            run_dir = root / p.run_id
            if not (run_dir / "state.json").exists():
                fresh.append((p, None, True))  # type: ignore[arg-type]
                continue
            run = Run(run_dir)
            state = run.state()
            current = state["state"]
            waiting = current == "PENDING" and not state.get("jobs")
            if waiting:
                fresh.append((p, run, False))
            elif current in ACTIVE_STATES and job_alive(run.job_id, state=state) is False:
                raise RunError(
                    f"run {p.run_id} died (state.json says {current}, but job {run.job_id} is "
                    f"gone): continue it with `hcli resume {p.run_id}`, or cancel it first "
                    "(hcli cancel) and start it over with --force"
                )
            elif current in ACTIVE_STATES and force:
                raise RunError(
                    f"run {p.run_id} is {current}; cancel it first (hcli cancel {p.run_id})"
                )
            elif current in ACTIVE_STATES or (current == "COMPLETED" and not force):
                outcomes.append(SubmitOutcome(p.run_id, "exists", current, run.job_id, run_dir))
            elif force:
                fresh.append((p, run, False))
            else:
                raise RunError(
                    f"run {p.run_id} is {current}: continue it with `hcli resume {p.run_id}`, or "
                    "start it over with --force"
                )
        created: list[Run] = []
        runs: list[Run] = []
        try:
            for p, run, is_new in fresh:
                if is_new:
                    run = create_run(root, p.run_id, p.spec)
                    created.append(run)
                elif run.state()["state"] != "PENDING":
                    _archive_attempt(run)
                runs.append(run)
            launched = _launch([p for p, _, _ in fresh], runs, root, mode, dependency, max_parallel)
        except BaseException:
            for run in created:  # never leave a run folder without a job behind
                shutil.rmtree(run.path, ignore_errors=True)
            raise
        for (p, _, _), run, (job_id, logs) in zip(fresh, runs, launched, strict=True):
            run.add_job(job_id, mode if mode != "foreground" else "local", **logs)
            outcomes.append(SubmitOutcome(p.run_id, "submitted", "PENDING", job_id, run.path))
    return outcomes


def _launch(
    planned: list[PlannedRun],
    runs: list[Run],
    root: Path,
    mode: Mode,
    dependency: str | None,
    max_parallel: int | None,
) -> list[tuple[str, dict]]:
    """Start the runs; returns (job id, where its logs go) per run."""
    if not runs:
        return []
    if mode == "foreground":
        return [("foreground", {})] * len(runs)
    if mode == "local":
        return [
            (jid, {"stdout": str(r.logs / "job.out"), "stderr": str(r.logs / "job.err")})
            for jid, r in zip(_launch_local(runs, max_parallel), runs, strict=True)
        ]
    return _launch_slurm(planned, runs, root, dependency, max_parallel)


def _launch_local(runs: list[Run], max_parallel: int | None) -> list[str]:
    chains = max(1, min(max_parallel or 1, len(runs)))
    ids: dict[Path, str] = {}
    for c in range(chains):
        chain = [r.path for r in runs[c::chains]]
        job_id = start_background(chain, chain[0] / "logs")
        ids.update({path: job_id for path in chain})
    return [ids[r.path] for r in runs]


def _launch_slurm(
    planned: list[PlannedRun],
    runs: list[Run],
    root: Path,
    dependency: str | None,
    max_parallel: int | None,
) -> list[tuple[str, dict]]:
    from jobs.entry import JobTarget

    def described(job: Any) -> tuple[str, dict]:
        return job.job_id, {"stdout": str(job.paths.stdout), "stderr": str(job.paths.stderr)}

    try:
        if len(runs) == 1:
            ex = make_executor(
                planned[0].spec,
                runs[0].logs,
                job_name=runs[0].run_id,
                runs_root=root,
                dependency=dependency,
            )
            return [described(ex.submit(JobTarget(runs[0].path)))]
        # An array shares one submitit folder; the slurm section of the first run applies to all.
        ids: list[tuple[str, dict]] = []
        chunk = max_array_size()
        for start in range(0, len(runs), chunk):
            part = runs[start : start + chunk]
            folder = root / ".arrays" / f"{now_iso()[:10]}-{uuid.uuid4().hex[:8]}"
            ex = make_executor(
                planned[start].spec,
                folder,
                job_name=f"hcli-array-{len(part)}",
                runs_root=root,
                dependency=dependency,
                array_parallelism=max_parallel or len(part),
            )
            with ex.batch():
                jobs = [ex.submit(JobTarget(r.path)) for r in part]
            ids.extend(described(j) for j in jobs)
        return ids
    except (OSError, RuntimeError) as exc:  # submitit raises RuntimeError on sbatch failure
        why = str(exc).strip().splitlines()[-1] if str(exc).strip() else repr(exc)
        raise ClusterError(f"sbatch failed: {why}") from exc


def _dry_run(p: PlannedRun, root: Path, mode: Mode, dependency: str | None) -> SubmitOutcome:
    run_dir = root / p.run_id
    sbatch = render_sbatch(
        p.spec, run_dir / "logs", job_name=p.run_id, runs_root=root, dependency=dependency
    )
    state = Run(run_dir).state()["state"] if (run_dir / "state.json").exists() else "NEW"
    return SubmitOutcome(
        p.run_id, "dry-run", state, None, run_dir, sbatch, p.spec.model_dump(mode="json")
    )


def _wait_until_ended(run: Run, state: dict, timeout_s: float = 60.0) -> None:
    """Let a cancelled job finish saving before a new one starts from its checkpoints.

    After `hcli cancel` the job still writes its stop checkpoint (SLURM shows it COMPLETING for
    up to KillWait seconds); a new job started meanwhile would resume from an older checkpoint
    while the old one still writes into the same folder.
    """
    import time

    deadline = time.monotonic() + timeout_s
    while job_alive(run.job_id, state=state) is True:
        if time.monotonic() > deadline:
            raise RunError(
                f"run {run.run_id} is {state['state']} but its job {run.job_id} is still ending "
                f"after {timeout_s:.0f} s; try `hcli resume {run.run_id}` again shortly"
            )
        time.sleep(1.0)


def resume_run(root: Path, ref: str, *, mode: Mode) -> SubmitOutcome:
    """Continue a stopped, failed or cancelled run from its newest checkpoint."""
    run = find_run(root, ref)
    state = run.state()
    if state["state"] not in ACTIVE_STATES:
        # Outside the lock: the ending job takes it to record how it stopped.
        _wait_until_ended(run, state)
    with run_lock(root, run.run_id):
        state = run.state()
        current = state["state"]
        if current == "COMPLETED":
            raise RunError(
                f"run {run.run_id} is COMPLETED; use `hcli submit ... --force` to redo it"
            )
        if current in ACTIVE_STATES and job_alive(run.job_id, state=state) is not False:
            raise RunError(
                f"run {run.run_id} is {current} (job {run.job_id}); cancel it first "
                f"(hcli cancel {run.run_id}) or wait for it"
            )
        spec = run.spec()
        # Refused here, before anything is queued; the job refuses it again when it loads.
        check_run_checkpoints(run.checkpoints, checkpoint_identity(run.path))
        run.update_state(state="PENDING", message=f"resumed at {now_iso()}")
        job_id, logs = _launch([PlannedRun(run.run_id, spec)], [run], root, mode, None, None)[0]
        run.add_job(job_id, mode if mode != "foreground" else "local", resumed=True, **logs)
    return SubmitOutcome(run.run_id, "submitted", "PENDING", job_id, run.path)
