"""The scheduler as a second witness: one `squeue` and at most one `sacct` call per invocation.

The run folder is the source of truth (docs/run-folder.md); this module only answers "is this
job alive, and what does SLURM say about it", for many jobs at once.

`squeue` is the liveness witness: it lists every pending and running job (and, with `-t all`,
those that ended within MinJobAge), so a job it no longer lists has ended. `sacct` only names
how such a job ended. Its answer cannot change once given, so it is remembered in a small cache
beside the run folders: one `sacct` round trip through slurmdbd costs 80-100 ms, which
`hcli status` would otherwise pay on every call while a dead run's folder still says RUNNING
(benchmarks/bench_cli.py).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path

from hcli.errors import ClusterError
from hcli.fsutil import read_json
from hcli.scan import ACTIVE_STATES, ENDED_STATES

__all__ = [
    "ENDED",
    "GONE",
    "SchedulerQuery",
    "cluster_available",
    "job_alive",
    "scheduler_states",
    "cancel_job",
    "max_array_size",
]

# squeue answered and no longer lists the job, and sacct cannot say how it ended.
GONE = "GONE"
# SLURM's job states, over the run states of hcli.scan (which SLURM spells the same way).
# A job in one of these states is over for good (its run folder may not know it yet).
ENDED = frozenset(ENDED_STATES) | {
    "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED", "BOOT_FAIL", "DEADLINE", GONE,
}
_ALIVE = frozenset(ACTIVE_STATES) | {
    "CONFIGURING", "COMPLETING", "SUSPENDED", "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING",
    "SIGNALING", "STAGE_OUT",
}
# A job neither squeue nor sacct knows (slurmdbd behind or down) is asked about again after this.
_RECHECK_GONE_S = 3600.0


def cluster_available() -> bool:
    return shutil.which("sbatch") is not None


def _run(cmd: list[str], timeout: float = 20) -> str | None:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def _parse(out: str) -> dict[str, str]:
    states = {}
    for line in out.splitlines():
        jid, _, state = line.strip().partition("|")
        if jid:
            states[jid] = state.split()[0] if state else "UNKNOWN"
    return states


class SchedulerQuery:
    """SLURM's state per job id (`123` or `123_4`), asked in the background: `squeue` starts on
    construction, so the caller can read its own files meanwhile; `result()` collects it and, for
    the jobs squeue no longer lists, asks `sacct` (once) what the cache does not already know.

    `cache` is a JSON file of {job id: {"state", "asked"}} for ended jobs; None keeps nothing.
    """

    def __init__(self, job_ids: Iterable[str], cache: Path | None = None) -> None:
        local = ("local-", "foreground")
        self.wanted = sorted({j for j in job_ids if j and not j.startswith(local)})
        self.cache_path = cache
        self._squeue: subprocess.Popen[str] | None = None
        if not self.wanted or not cluster_available():
            self.wanted = []
            return
        masters = ",".join(sorted({w.split("_")[0] for w in self.wanted}))
        with contextlib.suppress(OSError):
            # `-t all`: squeue also reports jobs that ended within MinJobAge, which sacct
            # (written asynchronously by slurmdbd) may not know yet.
            self._squeue = subprocess.Popen(
                ["squeue", "-h", "-r", "-t", "all", "-o", "%i|%T", "-j", masters],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            )

    def _listed(self) -> dict[str, str] | None:
        """squeue's answer; None when it could not answer (then nobody is proven gone)."""
        if self._squeue is None:
            return None
        try:
            out, err = self._squeue.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            self._squeue.kill()
            self._squeue.communicate()
            return None
        if self._squeue.returncode == 0:
            return _parse(out)
        # One unknown id alone makes squeue fail with this message: an answer, not an error.
        return {} if "Invalid job id" in err else None

    def result(self) -> dict[str, str]:
        if not self.wanted:
            return {}
        listed = self._listed()
        wanted = set(self.wanted)
        states = {w: s for w, s in (listed or {}).items() if w in wanted}
        ended = [w for w in self.wanted if w not in states]
        if not ended:
            return states
        cache = self._read_cache() if listed is not None else {}
        now = time.time()
        remembered = {
            j: e["state"] for j, e in cache.items()
            if j in ended and (e["state"] != GONE or now - e["asked"] < _RECHECK_GONE_S)
        }
        ask = [j for j in ended if j not in remembered]
        named = {}
        if ask:
            out = _run(["sacct", "-n", "-P", "-X", "-o", "JobID,State", "-j", ",".join(ask)])
            asked = set(ask)
            named = {j: s for j, s in _parse(out or "").items() if j in asked}
        states |= remembered | named
        if listed is not None:
            # squeue no longer lists them: ended, whatever sacct knows.
            for j in ask:
                states.setdefault(j, GONE)
            if ask:
                self._write_cache(cache, {j: states[j] for j in ask}, ended, now)
        return states

    def _read_cache(self) -> dict[str, dict]:
        if self.cache_path is None:
            return {}
        data = read_json(self.cache_path)
        return {
            j: e for j, e in data.items()
            if isinstance(e, dict) and isinstance(e.get("state"), str)
            and isinstance(e.get("asked"), int | float)
        } if isinstance(data, dict) else {}

    def _write_cache(
        self, cache: dict[str, dict], fresh: dict[str, str], ended: list[str], now: float
    ) -> None:
        if self.cache_path is None:
            return
        from hcli.fsutil import atomic_write_json

        # Only what this call still needed: entries of runs that moved on drop out.
        keep = {j: e for j, e in cache.items() if j in ended}
        keep |= {j: {"state": s, "asked": now} for j, s in fresh.items() if s in ENDED}
        # The cache is a convenience: a read-only study folder must not break status.
        with contextlib.suppress(OSError):
            atomic_write_json(self.cache_path, keep)


def scheduler_states(job_ids: Iterable[str], cache: Path | None = None) -> dict[str, str]:
    """SLURM's state per job id, from one squeue and, for the jobs it no longer lists, one sacct
    (GONE where sacct does not know them either)."""
    return SchedulerQuery(job_ids, cache).result()


def job_alive(
    job_id: str | None, scheduler: dict[str, str] | None = None, state: dict | None = None
) -> bool | None:
    """True/False when known; None when nobody can tell (no scheduler answers).

    A foreground run is judged by the pid and host its job recorded in state.json.
    """
    if not job_id:
        return None
    if job_id == "foreground":
        # os.uname() is what socket.gethostname() reads, without importing socket (8 ms).
        if not state or not state.get("pid") or state.get("host") != os.uname().nodename:
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
    return known in _ALIVE


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
