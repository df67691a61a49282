"""Pytest helpers for integration tests against the real local SLURM (slurm_templates/local).

The session fixture `slurm_env` finds the cluster through `$HCLI_SLURM_STATE/env.sh` (default
/tmp/hcli-slurm), starts it with `slurm_templates/local/up.sh` when the binaries are installed but
nothing answers, and exports its environment (SLURM_CONF) into `os.environ` for the session, since
submitit calls sbatch/sacct as subprocesses of the test process. When no SLURM can be had the
tests are skipped with a loud reason, except under CI=true where they fail: CI must never pass by
skipping the cluster tests.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import warnings
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

__all__ = [
    "DEFAULT_STATE_DIR",
    "SlurmCluster",
    "job_states",
    "load_env_file",
    "make_eligible",
    "slurm_env",
    "wait_for_state",
]

REPO = Path(__file__).resolve().parents[1]
UP_SH = REPO / "slurm_templates" / "local" / "up.sh"
DEFAULT_STATE_DIR = Path("/tmp/hcli-slurm")
PARTITION = "local"
# States a job does not leave unless someone requeues it (PREEMPTED is left out: with requeue on
# it is a passage, not an end).
FINAL_STATES = frozenset(
    {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL",
     "DEADLINE"}
)


def _run(args: list[str], timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)


def load_env_file(path: Path) -> dict[str, str]:
    """Variables that sourcing `path` (bash) adds or changes, e.g. {"SLURM_CONF": ...}."""
    # bash does the parsing so that env.sh may use any shell syntax.
    out = subprocess.run(
        ["bash", "-c", 'set -a && source "$1" >/dev/null && env -0', "_", str(path)],
        capture_output=True, text=True, check=True, timeout=10, env={"PATH": os.defpath},
    ).stdout
    pairs = (item.split("=", 1) for item in out.split("\0") if "=" in item)
    return {k: v for k, v in pairs if k not in {"PWD", "SHLVL", "_", "OLDPWD", "PATH"}}


def _sinfo_answers(env: dict[str, str]) -> str | None:
    """None when the cluster answers with a usable node, else why not."""
    try:
        proc = subprocess.run(
            ["sinfo", "-h", "-p", PARTITION, "-o", "%T"], capture_output=True, text=True,
            timeout=15, env={**os.environ, **env}, check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"sinfo did not answer: {exc}"
    states = proc.stdout.split()
    if proc.returncode != 0 or not states:
        return f"sinfo failed (rc={proc.returncode}): {proc.stderr.strip()[:300]}"
    if not any(s.rstrip("*~#") in {"idle", "mixed", "allocated", "completing"} for s in states):
        return f"partition {PARTITION!r} has no usable node (states {states})"
    # Accounting too: up.sh restarts a cluster whose database died (sacct then fails).
    acct = subprocess.run(["sacct", "-n", "-X", "-o", "JobID", "-S", "now-1minutes"],
                          capture_output=True, text=True, timeout=15,
                          env={**os.environ, **env}, check=False)
    if acct.returncode != 0:
        return f"sacct failed (rc={acct.returncode}): {acct.stderr.strip()[:300]}"
    return None


def _find_or_start(state_dir: Path) -> tuple[dict[str, str] | None, str]:
    env_file = state_dir / "env.sh"
    why = f"{env_file} does not exist"
    if env_file.is_file():
        env = load_env_file(env_file)
        problem = _sinfo_answers(env)
        if problem is None:
            return env, ""
        why = problem
    if shutil.which("slurmctld") is None or shutil.which("sinfo") is None:
        return None, f"{why}; SLURM is not installed (run slurm_templates/local/install.sh)"
    proc = subprocess.run(
        ["bash", str(UP_SH), str(state_dir)], capture_output=True, text=True, timeout=300,
        check=False,
    )
    if proc.returncode != 0:
        return None, f"{why}; {UP_SH} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    env = load_env_file(env_file)
    problem = _sinfo_answers(env)
    return (env, "") if problem is None else (None, f"up.sh succeeded but {problem}")


@dataclass(frozen=True)
class SlurmCluster:
    """The running local cluster: its state folder and the environment its commands need."""

    state_dir: Path
    env: dict[str, str]
    partition: str = PARTITION

    def run(self, *args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        """Run a SLURM command (sinfo, squeue, sacct, scontrol ...) against this cluster."""
        return _run(list(args), timeout=timeout)

    def max_array_size(self) -> int:
        out = _run(["scontrol", "show", "config"]).stdout
        for line in out.splitlines():
            key, _, value = line.partition("=")
            if key.strip() == "MaxArraySize":
                return int(value)
        raise AssertionError(f"MaxArraySize missing from `scontrol show config`:\n{out}")

    def wait_for_state(self, job_id: str | int, states: Collection[str],
                       timeout: float = 60.0) -> str:
        return wait_for_state(job_id, states, timeout)

    def make_eligible(self, job_id: str | int, timeout: float = 30.0) -> None:
        make_eligible(job_id, timeout)


def job_states(job_id: str | int) -> list[str]:
    """Current states of a job (one per array task), from squeue, else from sacct."""
    proc = _run(["squeue", "-h", "-j", str(job_id), "-o", "%T"])
    states = proc.stdout.split() if proc.returncode == 0 else []
    if not states:
        # Gone from squeue (older than MinJobAge, or squeue raced the end): ask accounting.
        proc = _run(["sacct", "-n", "-X", "-P", "-j", str(job_id), "-o", "State"])
        # sacct writes "CANCELLED by 0"; the first word is the state.
        states = [line.split()[0] for line in proc.stdout.splitlines() if line.strip()]
    return states


def wait_for_state(job_id: str | int, states: Collection[str], timeout: float = 60.0) -> str:
    """Poll until every task of `job_id` is in one of `states`; return that state.

    For a job array pass the master id to wait for all tasks or `ID_TASK` for one. Raises
    AssertionError on timeout, or at once when the job reaches a final state not in `states`.
    """
    wanted = {s.upper() for s in states}
    deadline = time.monotonic() + timeout
    seen: list[str] = []
    while True:
        seen = job_states(job_id)
        if seen and all(s in wanted for s in seen):
            return seen[0]
        if seen and all(s in FINAL_STATES for s in seen):
            raise AssertionError(f"job {job_id} ended in {seen}, expected {sorted(wanted)}")
        if time.monotonic() > deadline:
            raise AssertionError(
                f"job {job_id} not in {sorted(wanted)} after {timeout:.0f}s (last: {seen})"
            )
        time.sleep(0.3)


def make_eligible(job_id: str | int, timeout: float = 30.0) -> None:
    """Start a requeued job within seconds instead of after Slurm's ~120 s requeue hold.

    Waits until the job is PENDING again (the previous run fully ended), then sets its start
    time two seconds ahead: slurmd revokes the previous run's credential with one-second
    resolution, and a restart allocated within that same second is refused ("Job credential
    revoked") and the job ends FAILED. `StartTime=now` at the moment the job turns PENDING hit
    this in 4 of 8 tries here; `now+2` in none, the job then runs 2-5 s later.
    """
    wait_for_state(job_id, {"PENDING"}, timeout)
    deadline = time.monotonic() + timeout
    while True:
        proc = _run(["scontrol", "update", f"JobId={job_id}", "StartTime=now+2"])
        if proc.returncode == 0:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"scontrol update JobId={job_id} StartTime=now+2: {proc.stderr}")
        time.sleep(0.3)


@pytest.fixture(scope="session")
def slurm_env() -> Iterator[SlurmCluster]:
    """The local SLURM cluster, started if needed; skips loudly (fails under CI=true) without."""
    state_dir = Path(os.environ.get("HCLI_SLURM_STATE", str(DEFAULT_STATE_DIR)))
    env, why = _find_or_start(state_dir)
    if env is None:
        reason = f"NO LOCAL SLURM, integration tests not run: {why}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true and {reason}", pytrace=False)
        warnings.warn(reason, stacklevel=1)
        pytest.skip(reason)
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        yield SlurmCluster(state_dir=state_dir, env=env)
