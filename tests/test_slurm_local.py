"""The local SLURM (slurm_templates/local) works end to end with submitit from this venv.

These tests validate the cluster configuration the launch code relies on: jobs run with the venv's
python, sacct has accounting, array throttles hold, and a USR2-interrupted Checkpointable is
requeued and completes.
"""

from __future__ import annotations

import os
import sys
import time
from datetime import datetime
from pathlib import Path

import cloudpickle
import pytest
import submitit

from tests.slurm_cluster import SlurmCluster, make_eligible, slurm_env, wait_for_state  # noqa: F401

pytestmark = pytest.mark.slurm

# Jobs unpickle their callable in a fresh interpreter where this test module is not importable
# (pytest put tests/ on sys.path, the job does not), so its functions travel by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def _where(a: int, b: int) -> tuple[int, str, str]:
    return a + b, sys.prefix, os.environ.get("SLURM_JOB_PARTITION", "")


def _slow_square(x: int) -> int:
    time.sleep(2)
    return x * x


class _WaitUntilRequeued(submitit.helpers.Checkpointable):
    """First attempt blocks until interrupted; the requeued attempt returns its restart count."""

    def __call__(self, folder: str) -> int:
        restarts = int(os.environ.get("SLURM_RESTART_COUNT", "0"))
        Path(folder, f"started.{restarts}").touch()
        if restarts == 0:
            time.sleep(300)
        return restarts


def _executor(folder: Path, **params: object) -> submitit.AutoExecutor:
    # cluster="slurm" so a broken cluster fails instead of silently running jobs locally.
    executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
    executor.update_parameters(slurm_partition="local", timeout_min=5, cpus_per_task=1, **params)
    return executor


def _sacct(cluster: SlurmCluster, job_id: str, *extra: str) -> list[list[str]]:
    proc = cluster.run("sacct", "-n", "-X", "-P", "-j", job_id, *extra)
    assert proc.returncode == 0, proc.stderr
    return [line.split("|") for line in proc.stdout.splitlines() if line.strip()]


def _sacct_until(cluster: SlurmCluster, job_id: str, fmt: str, want_rows: int,
                 *extra: str) -> list[list[str]]:
    # slurmdbd records a job's start and end asynchronously, and a short job's end may land before
    # its start fields: poll until every field of every wanted row is filled in.
    deadline = time.monotonic() + 30
    while True:
        rows = _sacct(cluster, job_id, "-o", fmt, *extra)
        if len(rows) >= want_rows and all(f and f != "Unknown" for r in rows for f in r):
            return rows
        assert time.monotonic() < deadline, f"sacct rows for {job_id}: {rows}"
        time.sleep(0.5)


def test_partition_and_array_limit(slurm_env: SlurmCluster) -> None:  # noqa: F811
    proc = slurm_env.run("sinfo", "-h", "-o", "%P %l")
    assert proc.returncode == 0, proc.stderr
    assert "local* infinite" in proc.stdout.splitlines()
    assert slurm_env.max_array_size() == 1001


def test_submit_result_uses_venv_python_and_sacct_lists_job(
    slurm_env: SlurmCluster, tmp_path: Path  # noqa: F811
) -> None:
    job = _executor(tmp_path).submit(_where, 2, 3)
    wait_for_state(job.job_id, {"COMPLETED"}, timeout=60)
    assert job.result() == (5, sys.prefix, "local")  # sys.prefix: the job ran in this venv
    rows = _sacct_until(slurm_env, job.job_id, "JobID,Partition,State", 1)
    assert rows == [[job.job_id, "local", "COMPLETED"]]


def test_array_of_three_respects_parallelism_two(
    slurm_env: SlurmCluster, tmp_path: Path  # noqa: F811
) -> None:
    jobs = _executor(tmp_path, slurm_array_parallelism=2).map_array(_slow_square, [1, 2, 3])
    master = jobs[0].job_id.split("_")[0]
    assert [j.job_id for j in jobs] == [f"{master}_{i}" for i in range(3)]
    wait_for_state(master, {"COMPLETED"}, timeout=90)
    assert [j.result() for j in jobs] == [1, 4, 9]

    rows = _sacct_until(slurm_env, master, "JobID,Start,End", 3)
    events: list[tuple[datetime, int]] = []
    for _, start, end in rows:
        events += [(datetime.fromisoformat(start), 1), (datetime.fromisoformat(end), -1)]
    # An end and a start in the same second are not concurrent: ends sort first (-1 < 1).
    running, peak = 0, 0
    for _, delta in sorted(events):
        running += delta
        peak = max(peak, running)
    assert peak <= 2, rows


def test_interrupted_checkpointable_is_requeued_and_completes(
    slurm_env: SlurmCluster, tmp_path: Path  # noqa: F811
) -> None:
    job = _executor(tmp_path / "logs").submit(_WaitUntilRequeued(), str(tmp_path))
    deadline = time.monotonic() + 60
    # The marker is written inside the callable, so submitit's USR2 handler is installed by then.
    while not (tmp_path / "started.0").exists():
        assert time.monotonic() < deadline, f"job {job.job_id} never started: {job.state}"
        time.sleep(0.3)

    job._interrupt(timeout=True)  # USR2, as the scheduler sends before the time limit
    make_eligible(job.job_id)
    wait_for_state(job.job_id, {"COMPLETED"}, timeout=60)
    assert job.result() == 1
    assert (tmp_path / "started.1").exists()
    # -D keeps the requeued attempt's record next to the final one.
    states = [r[0] for r in _sacct_until(slurm_env, job.job_id, "State", 2, "-D")]
    assert states == ["REQUEUED", "COMPLETED"], states
