"""The index of run folders (`<runs root>/.cache/index.json`): never a stale row, safe to lose.

Runs are made by the writers (`create_run`, `Run.update_state`, `Run.add_job`, the contract's
models); "old" runs get their files' mtimes moved into the past, as a run that ended days ago has.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from hcli.contract import Progress, dump
from hcli.fsutil import atomic_write_json
from hcli.runs import Run, create_run
from hcli.scan import FIELD, INDEX, SUMMARY_KEYS, WATCHED, scan
from hcli.spec import load_spec
from hcli.status import status_rows

_SPEC = load_spec(None, kind="multiclass")
# An index row: size and mtime_ns of each watched file, then the summary's values.
_SIG = 2 * len(WATCHED)


@pytest.fixture(autouse=True)
def _no_scheduler(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")  # rows depend on the folders only


def _ago(**delta: float) -> str:
    return (datetime.now(UTC) - timedelta(**delta)).isoformat(timespec="seconds")


def _age(run: Run, seconds: float = 3 * 86400) -> None:
    """Move the run's files' mtimes into the past: a run that ended long ago."""
    when = time.time() - seconds
    for name in ("state.json", "progress.json", "results.json", "."):
        if (run.path / name).exists():
            os.utime(run.path / name, (when, when))


def _run(root: Path, name: str, state: str, *, ended_ago_h: float = 72.0, **changes: object) -> Run:
    run = create_run(root, name, _SPEC, snapshot=False)
    run.add_job("1234", "slurm")
    progress = Progress(step=100, total_steps=100, heartbeat=_ago(hours=ended_ago_h),
                        latest={"val_miou": 0.4})
    atomic_write_json(run.path / "progress.json", dump(progress))
    run.update_state(state=state, **changes)
    atomic_write_json(run.state_path, {**run.state(), "updated_at": _ago(hours=ended_ago_h)})
    _age(run, ended_ago_h * 3600)
    return run


def _index(root: Path) -> dict:
    return json.loads((root / INDEX).read_text())


def _states(root: Path) -> dict[str, str]:
    return {r["run_id"]: r["state"] for r in status_rows(root)}


def test_an_unchanged_run_is_read_from_the_index(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    run = _run(root, "multiclass-convnext-done", "COMPLETED")
    assert _states(root) == {run.run_id: "COMPLETED"}
    assert run.run_id in _index(root)["runs"]
    # Change what the index says, not the file: status shows the index's word, so it is used.
    doc = _index(root)
    doc["runs"][run.run_id][_SIG + FIELD["backbone"]] = "from-the-index"
    (root / INDEX).write_text(json.dumps(doc))
    assert status_rows(root)[0]["backbone"] == "from-the-index"


def test_a_finished_run_resumed_shows_its_new_state(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    run = _run(root, "multiclass-convnext-done", "COMPLETED")
    assert _states(root)[run.run_id] == "COMPLETED"
    run.add_job("local-999999999", "local", resumed=True)  # what `hcli resume --force` records
    run.update_state(state="PENDING", attempt=2)
    assert status_rows(root)[0]["recorded_state"] == "PENDING"


def test_a_cancelled_run_requeued_shows_its_new_state(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    run = _run(root, "multiclass-swin-cancelled", "CANCELLED")
    assert _states(root)[run.run_id] == "CANCELLED"
    run.update_state(state="REQUEUED", message="requeued after USR2")
    row = status_rows(root)[0]
    assert (row["recorded_state"], row["message"]) == ("REQUEUED", "requeued after USR2")


@pytest.mark.parametrize(("file", "before", "after", "key", "want"), [
    ("state.json", '"COMPLETED"', '"CANCELLED"', "recorded_state", "CANCELLED"),
    ("progress.json", '"val_miou": 0.4', '"val_miou": 0.7', "latest_metric", 0.7),
])
def test_a_file_rewritten_in_place_at_the_same_size_is_read_again(
        tmp_path: Path, file: str, before: str, after: str, key: str, want: object) -> None:
    # An editor, or `sed -i`-like tool, writing in place: the folder's mtime does not change
    # and the size stays; only the file's own mtime tells.
    root = tmp_path / "runs"
    run = _run(root, "multiclass-swin-edited", "COMPLETED")
    folder_mtime = run.path.stat().st_mtime_ns
    assert status_rows(root)[0][key] != want
    assert run.run_id in _index(root)["runs"]
    text = (run.path / file).read_text()
    assert before in text
    with open(run.path / file, "r+") as fh:
        fh.write(text.replace(before, after))
    assert run.path.stat().st_mtime_ns == folder_mtime
    assert status_rows(root)[0][key] == want


def test_the_signature_covers_every_file_a_row_is_read_from(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A row is reused while the watched files are unchanged, so it must be made of them only:
    # a summary field taken from another file (results.json, say) would go stale unseen.
    import hcli.scan

    root = tmp_path / "runs"
    run = _run(root, "multiclass-swin-done", "COMPLETED")
    (run.path / "results.json").write_text(json.dumps({"miou": 0.3}))
    read: list[str] = []

    def recording(path: str, default: object = None) -> object:
        read.append(os.path.basename(path))
        return hcli.fsutil.read_json(path, default)

    monkeypatch.setattr(hcli.scan, "read_json", recording)
    rows = scan(root, index=False)
    assert rows and read  # the run was read from its files
    assert set(read) <= set(WATCHED)
    assert set(WATCHED) <= set(read)  # the run has both files: both are part of its row


def test_a_results_file_rewritten_is_what_collect_reads(tmp_path: Path) -> None:
    # Status shows nothing of results.json (no part of the index's signature); collect, which
    # lists runs through the index, reads each run's results afresh: a re-evaluation shows.
    from hcli.report.load import discover_runs, load_runs

    root = tmp_path / "runs"
    run = _run(root, "multiclass-swin-results", "COMPLETED")
    results = {"run_id": run.run_id, "kind": "multiclass", "miou": 0.125}
    (run.path / "results.json").write_text(json.dumps(results))
    _age(run)
    status_rows(root)
    before = _index(root)["runs"][run.run_id]
    with open(run.path / "results.json", "r+") as fh:  # in place, the same size
        fh.write(json.dumps({**results, "miou": 0.375}))
    assert [r.miou for r in load_runs(discover_runs(root))] == [0.375]
    assert _index(root)["runs"][run.run_id] == before  # the row stands: nothing of it changed
    # Rewritten with the state (a re-evaluation that failed): the state shows at the next call.
    (run.path / "results.json").write_text(json.dumps({"miou": 0.25, "note": "re-evaluated"}))
    run.update_state(state="FAILED", message="re-evaluation failed")
    assert _states(root)[run.run_id] == "FAILED"


def test_recent_files_are_not_trusted_to_the_index(tmp_path: Path) -> None:
    # Timestamps are coarse: a file changed within the last seconds may change again within
    # the same tick, unseen. Such a run is read every time until it settles.
    root = tmp_path / "runs"
    run = create_run(root, "multiclass-swin-fresh", _SPEC, snapshot=False)
    run.update_state(state="COMPLETED")
    assert _states(root) == {run.run_id: "COMPLETED"}
    assert run.run_id not in _index(root)["runs"] if (root / INDEX).exists() else True
    _age(run, 60)
    status_rows(root)
    assert run.run_id in _index(root)["runs"]


@pytest.mark.parametrize("damage", ["delete", "garbage", "wrong-shape", "old-version", "bad-row"])
def test_a_deleted_or_corrupt_index_is_rebuilt(tmp_path: Path, damage: str) -> None:
    root = tmp_path / "runs"
    done = _run(root, "multiclass-convnext-done", "COMPLETED")
    failed = _run(root, "multiclass-convnext-failed", "FAILED")
    want = _states(root)
    index = root / INDEX
    if damage == "delete":
        index.unlink()
    elif damage == "garbage":
        index.write_bytes(b"\xff\x00{not json")
    elif damage == "wrong-shape":
        index.write_text(json.dumps([1, 2, 3]))
    elif damage == "old-version":
        index.write_text(json.dumps({**_index(root), "version": 0}))
    else:
        doc = _index(root)
        doc["runs"][done.run_id] = "not a row"
        doc["runs"][failed.run_id] = [[-1, 0], []]
        index.write_text(json.dumps(doc))
    assert _states(root) == want
    rebuilt = _index(root)
    assert set(rebuilt["runs"]) == {done.run_id, failed.run_id}
    assert all(len(row) == _SIG + len(SUMMARY_KEYS) for row in rebuilt["runs"].values())


def test_a_deleted_run_leaves_the_index(tmp_path: Path) -> None:
    import shutil

    root = tmp_path / "runs"
    keep = _run(root, "multiclass-convnext-keep", "COMPLETED")
    gone = _run(root, "multiclass-convnext-gone", "COMPLETED")
    status_rows(root)
    shutil.rmtree(gone.path)
    assert list(_states(root)) == [keep.run_id]
    assert list(_index(root)["runs"]) == [keep.run_id]


def test_an_unwritable_index_still_gives_a_status(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import hcli.fsutil

    def refuse(*args: object, **kwargs: object) -> None:
        raise PermissionError("read-only study folder")

    root = tmp_path / "runs"
    run = _run(root, "multiclass-convnext-done", "COMPLETED")
    monkeypatch.setattr(hcli.fsutil, "atomic_write_bytes", refuse)
    assert _states(root) == {run.run_id: "COMPLETED"}
    assert not (root / INDEX).exists()


def test_two_status_calls_while_a_run_finishes_leave_a_valid_index(tmp_path: Path) -> None:
    import hcli.scan

    root = tmp_path / "runs"
    for i in range(40):
        _run(root, f"multiclass-swin-old{i:03d}", "COMPLETED")
    finishing = _run(root, "multiclass-swin-finishing", "RUNNING")
    (root / INDEX).unlink(missing_ok=True)  # both calls rebuild it, and both write it
    env = dict(os.environ, PATH="/nonexistent")
    cmd = [sys.executable, "-m", "hcli", "status", "--json", "--runs-dir", str(root)]

    def finish() -> None:
        for n in range(20):  # the job writing progress, then its final state, meanwhile
            atomic_write_json(finishing.path / "progress.json",
                              dump(Progress(step=n, total_steps=20, heartbeat=_ago())))
        finishing.update_state(state="COMPLETED")

    for _ in range(3):
        writer = threading.Thread(target=finish)
        calls = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True)
                 for _ in range(2)]
        writer.start()
        outs = [c.communicate(timeout=120)[0] for c in calls]
        writer.join()
        assert all(c.returncode == 0 for c in calls)
        for out in outs:  # each call saw the run either still running or finished
            assert {r["recorded_state"] for r in json.loads(out)
                    if r["run_id"] == finishing.run_id} <= {"RUNNING", "COMPLETED"}
        doc = _index(root)  # whole, valid JSON: one writer's or the other's
        assert doc["version"] == hcli.scan._VERSION and len(doc["runs"]) >= 40
        assert not [p for p in (root / ".cache").iterdir() if p.name.endswith(".tmp")]
        assert _states(root)[finishing.run_id] == "COMPLETED"
        finishing.update_state(state="RUNNING")


def test_collect_lists_runs_through_the_index(tmp_path: Path) -> None:
    from hcli.report.load import discover_runs

    root = tmp_path / "runs"
    a = _run(root, "multiclass-convnext-a", "COMPLETED")
    b = _run(root, "multiclass-convnext-b", "FAILED")
    spec_only = root / "multiclass-convnext-spec-only"  # a damaged folder collect still lists
    spec_only.mkdir()
    (spec_only / "spec.yaml").write_text("kind: multiclass\n")
    (root / "not-a-run").mkdir()
    assert discover_runs(root) == [a.path, b.path, spec_only]
    assert set(_index(root)["runs"]) == {a.run_id, b.run_id}
    assert [p for p, _ in scan(root, index=False)] == [str(a.path), str(b.path)]
