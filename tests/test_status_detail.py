"""`hcli status RUN`: one run in detail, in every state, for people (rich) and scripts (--json).

Run folders are made by the writers (`create_run`, `Run.add_job`, `Run.update_state`, the
contract's models), not by hand-written JSON.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from hcli.contract import Hardware, MulticlassResults, Progress, Requeue, State, dump
from hcli.fsutil import atomic_write_json
from hcli.runs import Run, create_run
from hcli.spec import load_spec, resolve_paths


def _ago(**delta: float) -> str:
    return (datetime.now(UTC) - timedelta(**delta)).isoformat(timespec="seconds")


def _make(root: Path, name: str) -> Run:
    spec = resolve_paths(load_spec(None, kind="multiclass", overrides=["model.backbone=swin"]))
    run = create_run(root, name, spec, snapshot=False)
    run.add_job("1234", "slurm")
    return run


def _execution(run: Run, start: str, end: str | None = None, nodes: int = 1) -> None:
    """What the job records as it starts (and, when it stops cleanly, ends)."""
    state = State.model_validate(run.state())
    job = state.jobs[-1]
    job.starts.append(start)
    job.ends.append(end)
    job.hardware.append(Hardware(host="node1", nodes=nodes))
    run.update_state(jobs=[dump(j) for j in state.jobs])


def _progress(run: Run, heartbeat: str, step: int = 40) -> None:
    progress = Progress(step=step, total_steps=100, heartbeat=heartbeat, eta_s=60.0,
                        latest={"loss": 0.5, "val_miou": 0.3}, best_val_miou=0.35, best_step=20)
    atomic_write_json(run.path / "progress.json", dump(progress))


def _checkpoint(run: Run, step: int, complete: bool) -> None:
    name = f"step-{step:06d}.pt"
    (run.checkpoints / name).write_bytes(b"weights")
    if complete:
        (run.checkpoints / f"{name}.done").write_text("")


def _build(root: Path, state: str) -> Run:
    run = _make(root, f"multiclass-swin-{state.lower()}")
    if state == "PENDING":
        return run
    if state in ("RUNNING", "STALE"):
        _execution(run, _ago(hours=2), nodes=2)
        _progress(run, _ago(seconds=5) if state == "RUNNING" else _ago(hours=1))
        _checkpoint(run, 20, True)
        _checkpoint(run, 40, False)  # being written
        run.update_state(state="RUNNING")
    elif state == "REQUEUED":
        _execution(run, _ago(hours=3), _ago(hours=2))
        _progress(run, _ago(hours=2))
        _checkpoint(run, 40, True)
        requeue = Requeue(at=_ago(hours=2), step=40, reason="USR2", job_id="1234")
        run.update_state(state="REQUEUED", requeues=[dump(requeue)],
                         message="requeued after USR2")
    elif state == "COMPLETED":
        _execution(run, _ago(hours=3), _ago(hours=1))
        _progress(run, _ago(hours=1), step=100)
        _checkpoint(run, 100, True)
        (run.checkpoints / "best.pt").write_bytes(b"weights")
        results = MulticlassResults(run_id=run.run_id, kind="multiclass", backbone="swin",
                                    checkpoint="best", step=80, miou=0.42, rare_miou=0.1)
        atomic_write_json(run.path / "results.json", dump(results))
        run.update_state(state="COMPLETED")
    elif state == "FAILED":
        _execution(run, _ago(minutes=30), _ago(minutes=29))
        run.update_state(state="FAILED",
                         message="RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB")
    elif state == "CANCELLED":
        _execution(run, _ago(hours=1), _ago(minutes=30))
        _checkpoint(run, 40, True)
        run.update_state(state="CANCELLED", message="stopped by SIGTERM at step 40; "
                         "`hcli resume multiclass-swin-cancelled` continues from the checkpoint")
    return run


@pytest.fixture
def runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PATH", "/nonexistent")  # no scheduler: the folder is the only witness
    monkeypatch.delenv("HCLI_RUNS_DIR", raising=False)
    return tmp_path / "runs"


def _status(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    from hcli.cli import main

    with pytest.raises(SystemExit) as done:
        main(["status", *args])
    out = capsys.readouterr()
    return done.value.code or 0, out.out, out.err


NEXT = {
    "PENDING": "hcli logs multiclass-swin-pending -f",
    "RUNNING": "hcli logs multiclass-swin-running -f",
    "REQUEUED": "hcli status multiclass-swin-requeued",
    "COMPLETED": "hcli collect multiclass-swin-completed",
    "FAILED": "hcli resume multiclass-swin-failed",
    "CANCELLED": "hcli resume multiclass-swin-cancelled",
    "STALE": "hcli cancel multiclass-swin-stale && hcli resume multiclass-swin-stale",
}


@pytest.mark.parametrize("state", list(NEXT))
def test_one_run_in_each_state(runs: Path, state: str, capsys) -> None:
    run = _build(runs, state)
    _build(runs, "FAILED" if state != "FAILED" else "PENDING")  # another run beside it
    code, out, err = _status([run.run_id, "--json", "--runs-dir", str(runs)], capsys)
    assert code == 0, err
    d = json.loads(out)
    assert d["run_id"] == run.run_id and d["state"] == state
    assert NEXT[state] in d["next"]
    assert d["paths"]["spec"] == str(run.spec_path) and Path(d["paths"]["logs"]).is_dir()
    assert [j["job_id"] for j in d["jobs"]] == ["1234"]

    code, human, err = _status([run.run_id, "--runs-dir", str(runs)], capsys)
    assert code == 0, err
    assert run.run_id in human and state in human and NEXT[state] in human.replace("\n", " ")
    assert str(run.spec_path) in human


def test_running_run_counts_node_hours_to_now_and_shows_checkpoints(runs: Path, capsys) -> None:
    run = _build(runs, "RUNNING")
    d = json.loads(_status([run.run_id, "--json", "--runs-dir", str(runs)], capsys)[1])
    (execution,) = d["jobs"][0]["starts"]
    assert execution["running"] and execution["host"] == "node1"
    assert d["compute"]["node_hours"] == pytest.approx(4.0, abs=0.02)  # 2 h on 2 nodes
    ck = d["checkpoints"]
    assert (ck["count"], ck["complete"], ck["newest_complete"]) == (2, 1, False)
    assert ck["newest"].endswith("step-000040.pt")
    assert ck["newest_complete_path"].endswith("step-000020.pt")
    assert d["metrics"]["latest"]["val_miou"] == 0.3 and d["metrics"]["best_val_miou"] == 0.35
    human = _status([run.run_id, "--runs-dir", str(runs)], capsys)[1]
    assert "step-000040.pt (incomplete: no .done marker)" in human
    assert "running" in human and "val mIoU 0.3500 at step 20" in human


def test_requeues_and_their_reasons(runs: Path, capsys) -> None:
    run = _build(runs, "REQUEUED")
    d = json.loads(_status([run.run_id, "--json", "--runs-dir", str(runs)], capsys)[1])
    assert d["reason"] == "requeued after USR2"
    assert [(r["step"], r["reason"]) for r in d["requeues"]] == [(40, "USR2")]
    assert d["compute"]["node_hours"] == pytest.approx(1.0, abs=0.01)
    human = _status([run.run_id, "--runs-dir", str(runs)], capsys)[1]
    assert "requeues (UTC)" in human and "USR2" in human


def test_completed_run_shows_results(runs: Path, capsys) -> None:
    run = _build(runs, "COMPLETED")
    d = json.loads(_status([run.run_id, "--json", "--runs-dir", str(runs)], capsys)[1])
    assert d["metrics"]["results"]["miou"] == 0.42
    assert d["checkpoints"]["best"].endswith("best.pt")
    assert d["paths"]["results"] == str(run.path / "results.json")
    assert d["reason"] is None
    human = _status([run.run_id, "--runs-dir", str(runs)], capsys)[1]
    assert "miou 0.4200" in human and "checkpoint best" in human


def test_failed_run_says_why_in_full(runs: Path, capsys) -> None:
    _build(runs, "FAILED")
    human = _status(["multiclass-swin-fa", "--runs-dir", str(runs)], capsys)[1]  # a prefix
    assert "CUDA out of memory. Tried to allocate 2.00 GiB" in " ".join(human.split())


def test_stale_run_says_since_when(runs: Path, capsys) -> None:
    run = _build(runs, "STALE")
    d = json.loads(_status([run.run_id, "--json", "--runs-dir", str(runs)], capsys)[1])
    assert d["recorded_state"] == "RUNNING" and "no heartbeat for 60 min" in d["reason"]


def test_unknown_run_is_one_line(runs: Path, capsys) -> None:
    _build(runs, "FAILED")
    code, out, err = _status(["nosuch", "--runs-dir", str(runs)], capsys)
    assert code == 2 and "no run 'nosuch'" in err and len(err.strip().splitlines()) == 1


def test_run_with_watch_is_refused(runs: Path, capsys) -> None:
    run = _build(runs, "RUNNING")
    code, _, err = _status([run.run_id, "--watch", "--runs-dir", str(runs)], capsys)
    assert code == 2 and "--watch" in err
