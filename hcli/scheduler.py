"""The scheduler as a second witness: one `squeue` and one `sacct` call per invocation.

The run folder is the source of truth (docs/run-folder.md); this module only answers "is this
job alive, and what does SLURM say about it", for many jobs at once.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterable

from hcli.errors import ClusterError

__all__ = ["cluster_available", "job_alive", "scheduler_states", "cancel_job", "max_array_size"]


def cluster_available() -> bool:
    return shutil.which("sbatch") is not None


def _run(cmd: list[str], timeout: float = 20) -> str | None:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def scheduler_states(job_ids: Iterable[str]) -> dict[str, str]:
    """SLURM's state per job id (`123` or `123_4`), from one squeue and, for the rest, one sacct."""
    wanted = sorted({j for j in job_ids if j and not j.startswith(("local-", "foreground"))})
    if not wanted or not cluster_available():
        return {}
    states: dict[str, str] = {}
    masters = ",".join(sorted({w.split("_")[0] for w in wanted}))
    # `-t all`: squeue also reports jobs that ended within MinJobAge, which sacct (written
    # asynchronously by slurmdbd) may not know yet.
    out = _run(["squeue", "-h", "-r", "-t", "all", "-o", "%i|%T", "-j", masters])
    for line in (out or "").splitlines():
        jid, _, state = line.strip().partition("|")
        states[jid] = state
    missing = [w for w in wanted if w not in states]
    if missing:
        out = _run(["sacct", "-n", "-P", "-X", "-o", "JobID,State", "-j", ",".join(missing)])
        for line in (out or "").splitlines():
            jid, _, state = line.strip().partition("|")
            if jid in missing:
                states[jid] = state.split()[0] if state else "UNKNOWN"
    return states


def job_alive(
    job_id: str | None, scheduler: dict[str, str] | None = None, state: dict | None = None
) -> bool | None:
    """True/False when known; None when nobody can tell (no scheduler answers).

    A foreground run is judged by the pid and host its job recorded in state.json.
    """
    if not job_id:
        return None
    if job_id == "foreground":
        import socket

        if not state or not state.get("pid") or state.get("host") != socket.gethostname():
            return None
        job_id = f"local-{state['pid']}"
    if job_id.startswith("local-"):
        try:
            pid = int(job_id.split("-", 1)[1])
            os.kill(pid, 0)
        except (ValueError, ProcessLookupError):
            return False
        except PermissionError:
            return True
        return _not_zombie(pid)
    known = (scheduler if scheduler is not None else scheduler_states([job_id])).get(job_id)
    if known is None:
        return None
    return known in (
        "PENDING",
        "RUNNING",
        "REQUEUED",
        "CONFIGURING",
        "COMPLETING",
        "SUSPENDED",
        "REQUEUE_HOLD",
        "REQUEUE_FED",
        "RESIZING",
        "SIGNALING",
        "STAGE_OUT",
    )


def _not_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(") ", 1)[1][:1] != "Z"
    except OSError:
        return True


def cancel_job(job_id: str) -> None:
    if job_id.startswith("local-"):
        import signal

        with contextlib.suppress(ProcessLookupError):
            os.killpg(int(job_id.split("-", 1)[1]), signal.SIGTERM)
        return
    if not cluster_available():
        raise ClusterError(f"cannot cancel job {job_id}: scancel is not on the PATH")
    done = subprocess.run(["scancel", job_id], capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise ClusterError(f"scancel {job_id} failed: {done.stderr.strip()}")


def max_array_size(default: int = 1001) -> int:
    """The cluster's MaxArraySize: arrays with more tasks are split into several."""
    out = _run(["scontrol", "show", "config"]) if cluster_available() else None
    for line in (out or "").splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "MaxArraySize":
            try:
                return int(value.strip())
            except ValueError:
                break
    return default
