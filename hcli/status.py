"""Where every run stands: the run folder first, the scheduler as a second witness.

One `squeue` (and one `sacct` for jobs squeue no longer lists, unless an earlier call already
learnt how they ended) per call, about the runs recorded as active only, whatever the number of
runs (submitit #1720: status must not depend on one query per job, nor on sacct alone). The
run folders are read through `hcli.scan`, whose index spares re-reading runs whose files did not
change.
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path
from typing import Any

from hcli.scan import (
    ACTIVE_STATES,
    ENDED_STATES,
    FIELD,
    SUMMARY_KEYS,
    read_json,
    scan_rows,
    summarize,
)
from hcli.scheduler import ENDED, SchedulerQuery, job_alive

__all__ = [
    "DEFAULT_SINCE",
    "REASON_STATES",
    "SCHEDULER_CACHE",
    "STALE_AFTER_S",
    "is_pattern",
    "log_files",
    "next_command",
    "parse_since",
    "run_detail",
    "select_rows",
    "status_rows",
]

STALE_AFTER_S = 300.0
# How ended jobs ended, as sacct said (hcli.scheduler); relative to the runs root.
SCHEDULER_CACHE = Path(".cache", "scheduler.json")
# The states whose row says why (the state's message, or what hcli concluded).
REASON_STATES = ("FAILED", "CANCELLED", "BLOCKED", "STALE", "REQUEUED", "CANCELLING", "STOPPING")
# A cancelled run's job may still be saving (SLURM: COMPLETING for up to KillWait, often
# 30-60 s); runs cancelled this recently are asked about too, so the row says CANCELLING.
_CANCELLING_WITHIN_S = 600.0
# Ended runs older than this are left out of the table (not of --json) unless --all.
DEFAULT_SINCE = "24h"
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_since(text: str) -> float:
    """`30m`, `24h`, `7d`, `2w` (s, m, h, d, w) as seconds."""
    number, unit = text.strip()[:-1], text.strip()[-1:].lower()
    try:
        seconds = float(number) * _UNITS[unit]
    except (KeyError, ValueError):
        seconds = -1.0
    if not seconds >= 0:  # also NaN
        from hcli.errors import UserError

        raise UserError(f"--since {text!r}: give a number and a unit (s, m, h, d, w), "
                        "e.g. 30m, 24h or 7d; --all shows every run")
    return seconds


def is_pattern(ref: str) -> bool:
    """A RUN argument with `*`, `?` or `[` is a glob on run ids (a list), else one run."""
    return any(c in ref for c in "*?[")


def _age_s(iso: str | None, now: float) -> float | None:
    if not iso:
        return None
    try:
        return max(0.0, now - datetime.fromisoformat(iso).timestamp())
    except ValueError:
        return None


def select_rows(
    root: Path,
    *,
    kind: str | None = None,
    state: str | None = None,
    pattern: str | None = None,
    since_s: float | None = None,
    query_scheduler: bool = True,
    runs: set[str] | None = None,
) -> tuple[list[dict[str, Any]], int]:
    """The status rows of the runs under `root` that pass every filter, and how many runs the
    time window hid: with `since_s`, a run whose state.json says it ended (COMPLETED, FAILED,
    CANCELLED) more than `since_s` seconds ago is counted, not shown; `runs`: only these run
    folders. A run the folder calls
    active is always shown, even when status finds its job long dead."""
    import time

    now = time.time()
    wanted = state.upper() if state else None
    cutoff = now - since_s if since_s is not None else None
    if pattern:
        from fnmatch import fnmatchcase
    # Filters read the recorded values by position: a dict is built only for the runs shown
    # (at 5,000 runs most are hidden by the time window; benchmarks/bench_cli.py).
    k_kind, k_state, k_changed = FIELD["kind"], FIELD["state"], FIELD["changed_at"]
    base = os.fspath(root)
    found: list[tuple[str, dict[str, Any]]] = []
    hidden = 0
    for name, v in scan_rows(root):
        # Filters on what the run folder records; a new one (e.g. a pipeline's name) goes here.
        if kind and v[k_kind] != kind:
            continue
        if pattern and not fnmatchcase(name, pattern):
            continue
        if runs is not None and name not in runs:  # a pipeline's runs (--pipeline)
            continue
        if cutoff is not None and v[k_state] in ENDED_STATES and (v[k_changed] or now) < cutoff:
            # Ended runs are shown as recorded, so the state filter applies to them here.
            hidden += not wanted or v[k_state] == wanted
            continue
        found.append((f"{base}{os.sep}{name}", dict(zip(SUMMARY_KEYS, v, strict=True))))
    rows = _rows(found, root / SCHEDULER_CACHE if query_scheduler else None, now, query_scheduler)
    # Filters on the derived state (what the scheduler witnessed) apply to the rows.
    return [r for r in rows if not wanted or r["state"] == wanted], hidden


def status_rows(
    root: Path,
    *,
    kind: str | None = None,
    state: str | None = None,
    pattern: str | None = None,
    since_s: float | None = None,
    query_scheduler: bool = True,
) -> list[dict[str, Any]]:
    """The rows of `select_rows`, without the count of hidden runs."""
    return select_rows(root, kind=kind, state=state, pattern=pattern, since_s=since_s,
                       query_scheduler=query_scheduler)[0]


def _rows(
    found: list[tuple[str, dict[str, Any]]], cache: Path | None, now: float, query_scheduler: bool
) -> list[dict[str, Any]]:
    # Only runs the folder calls active need a witness (a finished run's state is settled), and
    # a study's hundreds of old job ids would make the sacct call slow (benchmarks/bench_cli.py).
    active = [
        s["job_id"] for _, s in found
        if s["job_id"] and (s["state"] in ACTIVE_STATES or _recently_cancelled(s, now))
    ]
    query = SchedulerQuery(active if query_scheduler else [], cache=cache)
    witness = query.result()
    return [_row(path, s, witness, now) for path, s in found]


def _recently_cancelled(s: dict[str, Any], now: float) -> bool:
    return s["state"] == "CANCELLED" and now - (s["changed_at"] or 0) < _CANCELLING_WITHIN_S


def ending_state(recorded: str, scheduler: str | None) -> str | None:
    """CANCELLING or STOPPING while the scheduler is still ending the run's job, else None.

    A cancelled run whose job SLURM still lists (running, or COMPLETING while it saves) is
    CANCELLING; a run recorded RUNNING whose job is COMPLETING was stopped by someone else (a
    plain scancel, the time limit) and is STOPPING: either way no longer training.
    """
    if scheduler is None or scheduler in ENDED:
        return None
    if recorded == "CANCELLED":
        return "CANCELLING"
    return "STOPPING" if recorded == "RUNNING" and scheduler == "COMPLETING" else None


def _row(path: str, s: dict[str, Any], witness: dict[str, str], now: float) -> dict[str, Any]:
    """One run's status row from its summary (`hcli.scan.summarize`) and the scheduler's word."""
    recorded = s["state"]
    job_id = s["job_id"]
    scheduler = witness.get(job_id or "")
    heartbeat_age = _age_s(s["heartbeat"], now)
    derived = recorded
    if recorded in ACTIVE_STATES:
        alive = job_alive(job_id, witness, s)
        if scheduler in ENDED:
            derived = "FAILED" if scheduler != "CANCELLED" else "CANCELLED"
        elif alive is False and (recorded != "PENDING" or (job_id or "").startswith("local-")):
            derived = "FAILED"
        elif (
            recorded == "RUNNING"
            and heartbeat_age is not None
            and heartbeat_age > STALE_AFTER_S
            and alive is not True
        ):
            derived = "STALE"
        elif scheduler == "PENDING" and recorded == "REQUEUED":
            derived = "REQUEUED"
    derived = ending_state(recorded, scheduler) or derived
    step, total = s["step"], s["total_steps"]
    run_id = s["run_id"] or os.path.basename(path)
    return {
        "run_id": run_id,
        "kind": s["kind"],
        "backbone": s["backbone"],
        "name": s["name"],
        "state": derived,
        "recorded_state": recorded,
        "scheduler_state": scheduler,
        "job_id": job_id,
        "restarts": s["restarts"],
        "step": step,
        "total_steps": total,
        "progress": (step / total) if step is not None and total else None,
        "latest_metric": s["latest_metric"],
        "stage": s["stage"],
        "eta_s": s["eta_s"] if derived == "RUNNING" else None,
        "heartbeat_age_s": heartbeat_age,
        "message": s["message"],
        "reason": _reason(run_id, s, derived, job_id, scheduler, heartbeat_age),
        "path": path,
    }


def _reason(
    run_id: str,
    st: dict[str, Any],
    derived: str,
    job_id: str | None,
    scheduler: str | None,
    heartbeat_age: float | None,
) -> str | None:
    """Why a run is FAILED, CANCELLED, STALE or REQUEUED, in one line: what the job recorded,
    or, when the job died before it could record anything, what status concluded and where to
    look next."""
    if derived not in REASON_STATES:
        return None
    message = " ".join(str(st.get("message") or "").split())  # one line, whatever was written
    if (derived == st.get("state") or derived == "CANCELLING") and message:
        return message
    if derived == "STOPPING":
        return f"SLURM is ending job {job_id} ({scheduler}); the job saves as it stops"
    if derived == "STALE":
        return (
            f"no heartbeat for {int((heartbeat_age or 0) // 60)} min and no scheduler says job "
            f"{job_id} lives; see `hcli logs {run_id} --err`"
        )
    if scheduler and scheduler != "PENDING":
        return (
            f"job {job_id} ended {scheduler} (scheduler) before the run recorded why; "
            f"see `hcli logs {run_id} --err`"
        )
    if derived == "FAILED":
        return f"job {job_id} is gone without recording why; see `hcli logs {run_id} --err`"
    return message or None


def run_detail(root: Path, ref: str, *, query_scheduler: bool = True) -> dict[str, Any]:
    """One run in full: its status row, every job and start with node-hours, requeues,
    checkpoints, latest and best metrics, its files and the command that continues it."""
    import time

    from hcli.runs import find_run

    run = find_run(root, ref)
    now = time.time()
    st = run.state()
    progress = read_json(os.path.join(run.path, "progress.json")) or {}
    results = read_json(os.path.join(run.path, "results.json"))
    # No scheduler cache here: it keeps only the jobs of the call that writes it, so a one-run
    # call would make the next `hcli status` ask sacct again about every other run.
    (row,) = _rows([(str(run.path), summarize(st, progress))], None, now, query_scheduler)
    jobs, compute = _jobs(st, row["state"] == "RUNNING")
    logs = log_files(run.logs, (st.get("jobs") or [{}])[-1])
    return {
        **row,
        "attempt": st.get("attempt", 1),
        "created_at": st.get("created_at"),
        "updated_at": st.get("updated_at"),
        "jobs": jobs,
        "compute": compute,
        "requeues": st.get("requeues") or [],
        "checkpoints": _checkpoints(run.checkpoints),
        "metrics": {
            "latest": progress.get("latest") or {},
            "best_val_miou": progress.get("best_val_miou"),
            "best_step": progress.get("best_step"),
            "results": _result_summary(results),
        },
        "paths": {
            "run": str(run.path),
            "spec": str(run.spec_path),
            "state": str(run.state_path),
            "logs": str(run.logs),
            **logs,
            "checkpoints": str(run.checkpoints),
            "metrics": str(run.path / "metrics.jsonl"),
            "results": str(run.path / "results.json") if results is not None else None,
        },
        "next": next_command(row["run_id"], row["state"]),
    }


def next_command(run_id: str, state: str) -> str:
    """What a user types next for a run in `state`."""
    return {
        "PENDING": f"hcli logs {run_id} -f  (once it starts; `hcli cancel {run_id}` withdraws it)",
        "RUNNING": f"hcli logs {run_id} -f",
        "REQUEUED": f"hcli status {run_id}  (it continues by itself when SLURM starts it again)",
        "COMPLETED": f"hcli collect {run_id}",
        "FAILED": f"hcli resume {run_id}  (after `hcli logs {run_id} --err` shows why)",
        "CANCELLED": f"hcli resume {run_id}",
        "CANCELLING": f"hcli status {run_id}  (the job is saving; then hcli resume {run_id})",
        "STOPPING": f"hcli status {run_id}  (the job is saving as SLURM ends it)",
        "STALE": f"hcli logs {run_id} --err; then hcli cancel {run_id} && hcli resume {run_id}",
    }.get(state, f"hcli logs {run_id}")


def _jobs(st: dict[str, Any], running: bool) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Every job and each of its executions (a requeued SLURM job starts again under the same
    id), timed by the contract's one computation (`hcli.contract.compute_from_state`): an
    execution lasts from its start to its recorded end, the newest one of a running run to now;
    one without an end (killed) has no node-hours and is counted as unended. Returns the jobs
    and the totals of the current attempt."""
    from hcli.contract import State, compute_from_state
    from hcli.runs import now_iso

    model = State.model_validate(st)
    timed: dict[tuple[str, str], Any] = {}
    totals: dict[str, Any] = {}
    for attempt in sorted({j.attempt for j in model.jobs} | {model.attempt}):
        current = attempt == model.attempt
        compute = compute_from_state(
            model.model_copy(update={"attempt": attempt}),
            now=now_iso() if running and current else None,
        )
        timed.update({(a.job_id, a.start): a for a in compute.attempts})
        if current:
            totals = {
                "node_hours": compute.node_hours,
                "gpu_hours": compute.gpu_hours,
                "wall_s": compute.wall_s,
                "unended": compute.unended,
            }
    jobs = []
    last = model.jobs[-1] if model.jobs else None
    newest = (last.job_id, last.starts[-1]) if last and last.starts else None
    for job in model.jobs:
        executions = []
        for start in job.starts:
            a = timed.get((job.job_id, start))
            executions.append(
                {
                    "start": start,
                    "end": a.end if a else None,
                    "running": running and (job.job_id, start) == newest,
                    "host": a.hardware.host if a else None,
                    "node_hours": a.node_hours if a else None,
                    "gpu_hours": a.gpu_hours if a else None,
                }
            )
        jobs.append(
            {
                "job_id": job.job_id,
                "executor": job.executor,
                "attempt": job.attempt,
                "submitted_at": job.submitted_at,
                "resumed": job.resumed,
                "starts": executions,
            }
        )
    return jobs, totals


def _checkpoints(folder: Path) -> dict[str, Any]:
    """Step checkpoints, newest first; complete = its `.done` marker exists (written last)."""
    try:
        names = set(os.listdir(folder))
    except OSError:
        names = set()
    steps = sorted((n for n in names if n.startswith("step-") and n.endswith(".pt")), reverse=True)
    complete = [n for n in steps if f"{n}.done" in names]
    return {
        "count": len(steps),
        "complete": len(complete),
        "newest": str(folder / steps[0]) if steps else None,
        "newest_complete": bool(steps) and steps[0] in complete,
        "newest_complete_path": str(folder / complete[0]) if complete else None,
        "best": str(folder / "best.pt") if "best.pt" in names else None,
    }


def _result_summary(results: Any) -> dict[str, Any] | None:
    if not isinstance(results, dict):
        return None
    keys = ("miou", "binary_miou", "coarse_miou", "rare_miou", "checkpoint", "step", "split")
    summary = {k: results[k] for k in keys if k in results}
    if isinstance(results.get("val"), dict):
        summary["val"] = results["val"]
    if isinstance(results.get("compute"), dict):
        summary["compute"] = results["compute"]
    return summary


def log_files(logs: Path, job: dict[str, Any]) -> dict[str, str | None]:
    """A job's stdout and stderr files, where they exist: where the job record says, else
    submitit's and the local runner's names in the run's logs folder."""
    jid = job.get("job_id", "")
    found: dict[str, str | None] = {}
    for key, suffix in (("stdout", "out"), ("stderr", "err")):
        candidates = [Path(job[key])] if job.get(key) else []
        candidates += [logs / f"{jid}_0_log.{suffix}", logs / f"job.{suffix}"]
        found[key] = next((str(p) for p in candidates if p.is_file()), None)
    return found
