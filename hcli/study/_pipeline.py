"""`hcli submit pipeline STUDY`: every stage queued behind the stages it needs, idempotently.

A stage is one submission (a job array) whose jobs wait, with `afterok`, for every job of the
stages it needs; SLURM cancels a waiting job whose dependency can no longer be met
(`--kill-on-invalid-dep`), and the run that failed marks the runs waiting for it BLOCKED, naming
itself (`block_dependants`, called by the job as it fails and by `hcli cancel`), so nothing is
left pending forever. Submitting the study again submits only what is missing: new runs, runs
BLOCKED or never queued, and FAILED or CANCELLED runs (continued from their newest checkpoint,
like `hcli resume`), behind the current jobs of the stages they need. Nothing waits on a replaced
job: a run whose upstream failed or was cancelled is BLOCKED and its job cancelled first.

The pipeline's record, `<runs root>/.pipelines/<study>.json`, lists each stage's runs and the
stages it needs: `hcli status --pipeline` groups runs by it, `block_dependants` walks it.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hcli.errors import ClusterError
from hcli.fsutil import atomic_write_json, read_json
from hcli.launch._plan import PlannedRun
from hcli.runs import ACTIVE_STATES, Run, now_iso, run_lock
from hcli.study._schema import Study, dependants

__all__ = [
    "PIPELINES",
    "StageOutcome",
    "block_dependants",
    "read_record",
    "records",
    "submit_pipeline",
    "write_record",
]

PIPELINES = ".pipelines"  # under the runs root; hidden, so no scanner takes it for a run
RESUBMIT = ("FAILED", "CANCELLED")


@dataclass
class StageOutcome:
    stage: str
    kind: str
    needs: list[str]
    runs: list[str]
    submitted: list[str] = field(default_factory=list)
    resumed: list[str] = field(default_factory=list)
    existing: list[str] = field(default_factory=list)
    dependency: str | None = None


def record_path(root: Path, name: str) -> Path:
    return root / PIPELINES / f"{name}.json"


def write_record(root: Path, study: Study, file: Path,
                 stages: dict[str, list[PlannedRun]]) -> Path:
    path = record_path(root, study.study)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, {
        "study": study.study,
        "file": str(file.resolve()),
        "written_at": now_iso(),
        "stages": {
            name: {"kind": study.stages[name].kind, "needs": study.stages[name].upstream(),
                   "runs": [p.run_id for p in runs]}
            for name, runs in stages.items()
        },
    })
    return path


def read_record(root: Path, name: str) -> dict[str, Any] | None:
    record = read_json(record_path(root, name))
    return record if isinstance(record, dict) and isinstance(record.get("stages"), dict) else None


def records(root: Path) -> list[dict[str, Any]]:
    folder = root / PIPELINES
    found = [read_record(root, p.stem) for p in sorted(folder.glob("*.json"))]
    return [r for r in found if r is not None]


def block_dependants(root: Path, run_id: str, why: str) -> list[str]:
    """Mark BLOCKED every waiting run of the stages that wait for `run_id`'s stage, and cancel
    their jobs; returns their ids. Never raises for a dependant it cannot reach: the run that
    calls it is failing already, and SLURM's kill-on-invalid-dep ends the jobs anyway."""
    from hcli.scheduler import cancel_job

    blocked: list[str] = []
    for record in records(root):
        stages = record["stages"]
        own = [name for name, s in stages.items() if run_id in s.get("runs", [])]
        for stage in own:
            needs = {name: s.get("needs", []) for name, s in stages.items()}
            for dependant in dependants(needs, stage):
                for rid in stages[dependant].get("runs", []):
                    run = Run(root / rid)
                    if not run.state_path.exists():
                        continue
                    with run_lock(root, rid):
                        state = run.state()
                        if state.get("state") != "PENDING":
                            continue
                        run.update_state(state="BLOCKED", message=(
                            f"BLOCKED by {run_id} ({why}); fix it, then `hcli submit pipeline "
                            f"{record.get('file', record['study'])}` submits what is missing"
                        ))
                    job = run.job_id
                    if job and job not in ("foreground",) and not job.startswith("local-"):
                        with contextlib.suppress(ClusterError, OSError,
                                                 subprocess.SubprocessError):
                            cancel_job(job)
                    blocked.append(rid)
    return blocked


def submit_pipeline(
    study: Study,
    file: Path,
    stages: dict[str, list[PlannedRun]],
    root: Path,
    *,
    mode: str,
    dry_run: bool = False,
    check: Callable[..., None] | None = None,
) -> list[StageOutcome]:
    """Submit (or, with `dry_run`, describe) every stage in dependency order.

    `check(planned, root, slurm=, dry_run=, force=)`: the submit command's checks, applied to a
    stage's runs just before it is queued (its upstream runs exist by then, which the checks of
    `init_from` need); a dry run checks only the stages that need none."""
    from hcli.launch._submit import dependency_for, resume_run, submit_runs

    outcomes: list[StageOutcome] = []
    if not dry_run:
        write_record(root, study, file, stages)
    local_chain: list[Run] = []
    for name, planned in stages.items():
        stage = study.stages[name]
        upstream = [p.run_id for s in stage.upstream() for p in stages[s]]
        out = StageOutcome(name, stage.kind, stage.upstream(), [p.run_id for p in planned])
        outcomes.append(out)
        if check is not None and not dry_run:
            check(planned, root, slurm=mode == "slurm", dry_run=False, force=False)
        elif check is not None and not upstream and planned:  # one warning per stage is enough
            check(planned[:1], root, slurm=mode == "slurm", dry_run=True, force=False)
        if dry_run:
            out.dependency = _dry_dependency(stage.upstream(), outcomes)
            out.submitted = [p.run_id for p in planned
                             if _state(root, p.run_id) in (None, "BLOCKED", *RESUBMIT)]
            out.existing = [r for r in out.runs if r not in out.submitted]
            continue
        after = upstream if mode == "slurm" and upstream else None
        defer = mode in ("local", "foreground")  # one chain for all stages, started at the end
        fresh, again = _to_submit(root, planned)
        if after:
            out.dependency = dependency_for(root, after)
        if fresh:
            done = submit_runs(fresh, root, mode=mode, after=after,  # type: ignore[arg-type]
                               max_parallel=stage.max_parallel, defer=defer)
            out.submitted = [o.run_id for o in done if o.action == "submitted"]
        for p in again:
            resume_run(root, p.run_id, mode=mode, after=after, defer=defer)  # type: ignore[arg-type]
            out.resumed.append(p.run_id)
        if defer:
            local_chain += [Run(root / r) for r in [*out.submitted, *out.resumed]]
        out.existing = [r for r in out.runs if r not in out.submitted and r not in out.resumed]
    if local_chain:
        _start_chain(local_chain, foreground=mode == "foreground")
    return outcomes


def _dry_dependency(needs: list[str], outcomes: list[StageOutcome]) -> str | None:
    """What the dry run shows for a stage's dependency: the stages' job ids are not known yet."""
    jobs = [f"<jobs of {n}>" for n in needs for o in outcomes if o.stage == n and o.runs]
    return "afterok:" + ":".join(jobs) if jobs else None


def _state(root: Path, run_id: str) -> str | None:
    doc = read_json(root / run_id / "state.json")
    return doc.get("state") if isinstance(doc, dict) else None


def _to_submit(root: Path, planned: list[PlannedRun]) -> tuple[list[PlannedRun],
                                                                list[PlannedRun]]:
    """(runs to submit afresh, runs to continue from their checkpoints) of one stage.

    Afresh: never submitted, BLOCKED, or waiting for a job that is gone before it started (SLURM
    cancelled it when its upstream failed). Continued: FAILED, CANCELLED, or recorded running
    while its job is gone (a node failure ended it before it could say so)."""
    from hcli.scheduler import job_alive, scheduler_states

    states = {p.run_id: read_json(root / p.run_id / "state.json") for p in planned}
    states = {k: v if isinstance(v, dict) else None for k, v in states.items()}
    active = [s for s in states.values() if s and s.get("state") in ACTIVE_STATES]
    witness = scheduler_states(
        j for s in active if (j := (s.get("jobs") or [{}])[-1].get("job_id"))
    ) if active else {}
    fresh, again = [], []
    for p in planned:
        st = states[p.run_id]
        current = st.get("state") if st else None
        jobs = (st or {}).get("jobs") or []
        gone = current in ACTIVE_STATES and bool(jobs) and job_alive(
            jobs[-1].get("job_id"), witness, st) is False
        if current in (None, "BLOCKED") or (current == "PENDING" and (not jobs or gone)):
            if gone:
                with run_lock(root, p.run_id):
                    Run(root / p.run_id).update_state(
                        state="BLOCKED", message="its job ended before it started")
            fresh.append(p)
        elif current in RESUBMIT or gone:
            again.append(p)
    return fresh, again


def _start_chain(runs: list[Run], *, foreground: bool) -> None:
    """`--local`: one background process runs the stages' runs in dependency order (in this
    process with `--foreground`); a run that fails marks the runs that need it BLOCKED, and the
    chain skips them (jobs.runtime)."""
    if foreground:
        from jobs.entry import JobTarget

        for r in runs:
            r.add_job("foreground", "local")
        # The jobs' printouts go to stderr: stdout carries the command's answer (--json).
        with contextlib.redirect_stdout(sys.stderr):
            for r in runs:
                with contextlib.suppress(Exception):  # recorded FAILED in the run folder
                    JobTarget(r.path, use_snapshot=False)()
        return
    from hcli.launch._local import start_background

    job_id = start_background([r.path for r in runs], runs[0].path / "logs")
    for r in runs:
        r.add_job(job_id, "local", stdout=str(r.logs / "job.out"), stderr=str(r.logs / "job.err"))
