"""`hcli.scan`: the one lister of run folders, the one list of run states, the one JSON reader."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from hcli import contract_keys, runs, scheduler, status
from hcli.contract import Progress, dump
from hcli.fsutil import atomic_write_json, read_json
from hcli.runs import create_run, find_run, iter_runs
from hcli.scan import (
    ACTIVE_STATES,
    ENDED_STATES,
    STATES,
    SUMMARY_KEYS,
    run_folders,
    scan,
    summarize,
)
from hcli.spec import load_spec


def test_one_list_of_states() -> None:
    assert runs.ACTIVE_STATES is ACTIVE_STATES and runs.STATES is STATES
    assert set(STATES) == set(ACTIVE_STATES) | set(ENDED_STATES)
    assert not set(ACTIVE_STATES) & set(ENDED_STATES)
    # SLURM's vocabulary extends the run states; a run state never changes sides there.
    assert set(ENDED_STATES) <= scheduler.ENDED and set(ACTIVE_STATES) <= scheduler._ALIVE
    assert not scheduler.ENDED & scheduler._ALIVE
    assert status.ACTIVE_STATES is ACTIVE_STATES


def test_run_folders_lists_visible_folders_by_name(tmp_path: Path) -> None:
    for name in ("b-run", "a-run", ".cache", ".tmp-x-123"):
        (tmp_path / name).mkdir()
    (tmp_path / "c-file").write_text("")
    assert run_folders(tmp_path) == ["a-run", "b-run"]
    assert run_folders(str(tmp_path)) == ["a-run", "b-run"]
    assert run_folders(tmp_path / "missing") == []
    assert run_folders(tmp_path / "c-file") == []


def test_the_json_reader_tolerates_what_a_dying_job_leaves(tmp_path: Path) -> None:
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"a": 1}))
    assert read_json(good) == read_json(str(good)) == {"a": 1}
    half = tmp_path / "half.json"
    half.write_text('{"a": ')
    latin = tmp_path / "latin.json"
    latin.write_bytes(b'{"a": "\xe9"}')
    for bad in (tmp_path / "missing.json", half, latin, tmp_path):
        assert read_json(bad) is None
        assert read_json(str(bad), {}) == {}


def test_the_json_reader_is_the_one_everyone_uses() -> None:
    import hcli.scan

    assert hcli.scan.read_json is read_json and status.read_json is read_json
    assert scheduler.read_json is read_json and runs.read_json is read_json


def test_summary_reads_the_contracts_fields(tmp_path: Path) -> None:
    spec = load_spec(None, kind="multiclass")
    run = create_run(tmp_path, "multiclass-convnext-abc", spec, snapshot=False)
    run.add_job("77", "slurm")
    run.update_state(state="RUNNING", restarts=2, message="requeued after USR2")
    atomic_write_json(run.path / "progress.json", dump(Progress(
        step=5, total_steps=10, eta_s=3.0, heartbeat="2026-01-01T00:00:00+00:00",
        latest={"loss": 1.0, "val_miou": 0.5})))
    ((folder, s),) = scan(tmp_path, index=False)
    assert folder == str(run.path) and tuple(s) == SUMMARY_KEYS
    assert (s["run_id"], s["kind"], s["state"], s["job_id"], s["restarts"]) == (
        run.run_id, "multiclass", "RUNNING", "77", 2)
    assert (s["step"], s["total_steps"], s["eta_s"], s["latest_metric"]) == (5, 10, 3.0, 0.5)
    assert s["message"] == "requeued after USR2"
    assert abs(s["changed_at"] - os.stat(run.state_path).st_mtime) < 5
    # What the summary reads of state.json and progress.json is named in the contract's keys.
    read_of_state = {"run_id", "kind", "backbone", "name", "state", "restarts", "message",
                     "jobs", "pid", "host", "updated_at"}
    assert read_of_state <= set(contract_keys.STATE_KEYS)
    assert {"step", "total_steps", "latest", "eta_s", "heartbeat"} <= set(
        contract_keys.PROGRESS_KEYS)


def test_summary_shows_the_validation_figure_of_any_kind() -> None:
    def metric(latest: dict[str, float]) -> object:
        return summarize({}, {"latest": latest})["latest_metric"]

    assert metric({"loss": 0.9, "val_miou": 0.4}) == 0.4
    assert metric({"miou": 0.3}) == 0.3
    assert metric({"loss": 0.9, "val_loss": 0.12}) == 0.12  # MAE: the engine's val_<metric>
    assert metric({"loss": 0.9}) is None


def test_summary_of_damaged_files() -> None:
    s = summarize({"jobs": ["not a job"], "updated_at": "yesterday"}, {"latest": [1]}, 12.0)
    assert (s["state"], s["job_id"], s["latest_metric"], s["changed_at"]) == (
        "UNKNOWN", None, None, 12.0)


def test_scan_skips_folders_without_a_readable_state(tmp_path: Path) -> None:
    (tmp_path / "no-state").mkdir()
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "state.json").write_text("{")
    (tmp_path / "ok").mkdir()
    (tmp_path / "ok" / "state.json").write_text(json.dumps({"state": "PENDING"}))
    assert [os.path.basename(p) for p, _ in scan(tmp_path)] == ["ok"]


def test_find_run_and_iter_runs_use_the_scanner(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    spec = load_spec(None, kind="multiclass")
    a = create_run(tmp_path, "multiclass-convnext-aaaa1111", spec, snapshot=False)
    b = create_run(tmp_path, "multiclass-swin-bbbb2222", spec, snapshot=False)
    (tmp_path / "multiclass-empty").mkdir()
    assert [r.run_id for r in iter_runs(tmp_path)] == [a.run_id, b.run_id]
    assert find_run(tmp_path, "multiclass-swin").path == b.path
    assert find_run(tmp_path, "aaaa1111").path == a.path
    listed: list[object] = []
    real = runs.run_folders
    monkeypatch.setattr(runs, "run_folders", lambda root: listed.append(root) or real(root))
    find_run(tmp_path, "2222")
    assert listed == [tmp_path]
