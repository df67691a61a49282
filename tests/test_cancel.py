"""Cancelling is one recorded story: who cancelled a run and where it saved, and CANCELLING while
the scheduler still ends its job. The SLURM tests run tiny jobs on the local cluster."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from hcli import status as status_mod
from hcli.runs import Run, create_run
from hcli.spec import load_spec
from hcli.status import ending_state, status_rows
from tests.conftest import run_cli, tiny_overrides
from tests.slurm_cluster import SlurmCluster, slurm_env, wait_for_state  # noqa: F401

# As in tests/test_cluster.py: small jobs on the two-core local cluster, long enough to cancel.
SLURM = ("slurm.cpus_per_task=1", "slurm.mem_gb=2", "slurm.time_min=5", "slurm.signal_delay_s=30")
# Long enough that no task can finish before the test cancels it, however loaded the machine
# (cancelled runs never reach the end; the steps only bound a race).
LONG = ("train.steps=20000", "train.val_every_steps=10000", "train.checkpoint_every_steps=20",
        *SLURM)


# -- the derivation, without SLURM -----------------------------------------------------------


@pytest.mark.parametrize(
    ("recorded", "scheduler", "expected"),
    [
        ("CANCELLED", "COMPLETING", "CANCELLING"),  # saving its stop checkpoint
        ("CANCELLED", "RUNNING", "CANCELLING"),  # hcli cancel recorded, scancel not yet seen
        ("CANCELLED", "CANCELLED", None),  # over: the recorded state stands
        ("CANCELLED", "GONE", None),
        ("CANCELLED", None, None),  # no scheduler answered
        ("RUNNING", "COMPLETING", "STOPPING"),  # a plain scancel or the time limit
        ("RUNNING", "RUNNING", None),
        ("REQUEUED", "COMPLETING", None),  # the requeue itself passes through COMPLETING
        ("COMPLETED", None, None),
    ],
)
def test_ending_state(recorded: str, scheduler: str | None, expected: str | None) -> None:
    assert ending_state(recorded, scheduler) == expected


def _cancelled_run(root: Path, run_id: str, job: str, updated_at: str | None = None) -> Run:
    run = create_run(root, run_id, load_spec(kind="probe"), snapshot=False)
    run.add_job(job, "slurm")
    state = run.update_state(state="CANCELLED", message="cancelled by hcli cancel while running")
    if updated_at:  # update_state stamps now; an old cancellation is written as it would be
        state["updated_at"] = updated_at
        run.state_path.write_text(json.dumps(state))
    return run


def test_status_says_cancelling_while_the_job_is_listed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _cancelled_run(tmp_path, "probe-recent", "77_1")
    _cancelled_run(tmp_path, "probe-old", "70_0", updated_at="2020-01-01T00:00:00+00:00")
    asked: list[list[str]] = []
    answer = {"77_1": "COMPLETING", "70_0": "RUNNING"}

    class Witness:
        def __init__(self, job_ids: list[str], cache: Any = None) -> None:
            asked.append(sorted(job_ids))

        def result(self) -> dict[str, str]:
            return {j: s for j, s in answer.items() if j in asked[-1]}

    monkeypatch.setattr(status_mod, "SchedulerQuery", Witness)
    rows = {r["run_id"]: r for r in status_rows(tmp_path)}
    assert asked[-1] == ["77_1"]  # an old cancellation costs no scheduler query
    assert rows["probe-recent"]["state"] == "CANCELLING"
    assert rows["probe-recent"]["reason"] == "cancelled by hcli cancel while running"
    assert rows["probe-old"]["state"] == "CANCELLED"
    answer["77_1"] = "CANCELLED"
    assert status_rows(tmp_path)[1]["state"] == "CANCELLED"


# -- on the local SLURM ------------------------------------------------------------------------


def _wait(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f}s waiting for {what}"
        time.sleep(0.2)
    return value


def _state(run: Path) -> dict[str, Any]:
    return json.loads((run / "state.json").read_text())


def _trained_past(run: Path, step: int) -> bool:
    progress = run / "progress.json"
    return progress.is_file() and (json.loads(progress.read_text()).get("step") or 0) >= step


def _submit(runs: Path, data: Path, *extra: str, args: tuple[str, ...] = ()) -> list[dict]:
    done = run_cli(["submit", "multiclass", "--cluster", "--json", "--runs-dir", str(runs),
                    *args, *tiny_overrides(data, *extra)])
    return json.loads(done.stdout)


def _cancel(runs: Path, run: Path, check: bool = True) -> Any:
    return run_cli(["cancel", run.name, "--runs-dir", str(runs)], check=check)


def _row(runs: Path, run: Path) -> dict[str, Any]:
    rows = json.loads(run_cli(["status", "--json", "--runs-dir", str(runs)]).stdout)
    return next(r for r in rows if r["run_id"] == run.name)


@pytest.mark.slurm
def test_cancel_running_and_pending_array_tasks(
    slurm_env: SlurmCluster, synth_data: Path, tmp_path: Path  # noqa: F811
) -> None:
    runs = tmp_path / "runs"
    outs = _submit(runs, synth_data, "seed=0,1", *LONG, args=("--max-parallel", "1"))
    (running, job0), (pending, job1) = ((Path(o["run_dir"]), o["job_id"]) for o in outs)
    _wait(lambda: _trained_past(running, 4), 180, "task 0 training")
    assert _squeue_state(slurm_env, job1) == "PENDING"  # held back by %1

    _cancel(runs, pending)
    assert _state(pending)["message"].startswith("cancelled by hcli cancel before it started")
    wait_for_state(job1, {"CANCELLED"}, timeout=30)

    _cancel(runs, running)
    # From the moment `hcli cancel` returns, never RUNNING again.
    assert _row(runs, running)["state"] in ("CANCELLING", "CANCELLED")
    wait_for_state(job0, {"CANCELLED"}, timeout=60)
    state = _wait(lambda: "saved at step" in (_state(running)["message"] or "")
                  and _state(running), 30, "the job to record where it saved")
    step = int(state["message"].split("saved at step ")[1].split(";")[0])
    assert state["state"] == "CANCELLED" and state["message"].startswith("cancelled by hcli cancel")
    assert (running / "checkpoints" / f"step-{step:08d}.pt.done").is_file()
    assert state["requeues"] == []
    # The pending task never started and its record says so, whatever SLURM did meanwhile.
    time.sleep(2)
    late = _state(pending)
    assert late["state"] == "CANCELLED" and "before it started" in late["message"]
    assert not any(j["starts"] for j in late["jobs"])
    assert {_row(runs, r)["state"] for r in (running, pending)} == {"CANCELLED"}


def _squeue_state(cluster: SlurmCluster, job: str) -> str:
    return cluster.run("squeue", "-h", "-j", job, "-o", "%T").stdout.strip()


@pytest.mark.slurm
def test_cancel_of_a_finished_run_changes_nothing(
    slurm_env: SlurmCluster, tmp_path: Path  # noqa: F811
) -> None:
    runs = tmp_path / "runs"
    done = run_cli(["submit", "probe", "--cluster", "--json", "--runs-dir", str(runs),
                    *[a for s in SLURM for a in ("-o", s)]])
    (out,) = json.loads(done.stdout)
    run = Path(out["run_dir"])
    wait_for_state(out["job_id"], {"COMPLETED"}, timeout=120)
    _wait(lambda: _state(run)["state"] == "COMPLETED", 30, "the probe to record its end")
    before = _state(run)
    refused = _cancel(runs, run, check=False)
    assert refused.returncode != 0 and "is COMPLETED; there is nothing to cancel" in refused.stderr
    assert _state(run) == before


@pytest.mark.slurm
def test_time_limit_with_requeues_used_up_is_a_recorded_cancel(
    slurm_env: SlurmCluster, synth_data: Path, tmp_path: Path  # noqa: F811
) -> None:
    # time_min=5 is below submitit's guaranteed walltime, so its handler counts any USR2 as the
    # time limit; with no requeue left it declines, and the run says so.
    runs = tmp_path / "runs"
    (out,) = _submit(runs, synth_data, *LONG, "slurm.max_requeues=0")
    run, job = Path(out["run_dir"]), out["job_id"]
    _wait(lambda: _trained_past(run, 4), 180, "training")
    assert slurm_env.run("scancel", "-s", "USR2", job).returncode == 0
    state = _wait(lambda: _state(run)["state"] == "CANCELLED" and _state(run), 60, "the record")
    assert state["message"].startswith(
        "cancelled by the time limit (SIGUSR2) with its requeues used up (slurm.max_requeues=0)"
    )
    step = int(state["message"].split("saved at step ")[1].split(";")[0])
    assert (run / "checkpoints" / f"step-{step:08d}.pt.done").is_file()
    assert state["requeues"] == []  # declined: no requeue happened
    wait_for_state(job, {"FAILED", "COMPLETED", "CANCELLED"}, timeout=60)
    time.sleep(2)
    assert _state(run)["state"] == "CANCELLED" and _row(runs, run)["state"] == "CANCELLED"
