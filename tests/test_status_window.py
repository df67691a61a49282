"""What `hcli status` shows by default: active runs and those ended in the last 24 h, with one
line saying how many older ones are hidden; --since, --all, --kind, --state and a glob compose,
on the fast path and the Typer path alike."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hcli.cli import _fast
from tests.conftest import run_cli
from tests.test_index import _run

ENV = {"PATH": "/nonexistent"}  # no scheduler


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "runs"
    _run(root, "multiclass-convnext-old1", "COMPLETED", ended_ago_h=72)
    _run(root, "multiclass-swin-old2", "FAILED", ended_ago_h=30)
    _run(root, "mae-swin-old3", "COMPLETED", ended_ago_h=24 * 10, kind="mae")
    _run(root, "multiclass-swin-new1", "COMPLETED", ended_ago_h=2)
    _run(root, "mae-convnext-new2", "CANCELLED", ended_ago_h=0.5, kind="mae")
    # Recorded active long ago, its job gone: shown whatever its age (status says FAILED).
    _run(root, "multiclass-maxvit-pend", "PENDING", ended_ago_h=24 * 30)
    return root


def _ids(out: str) -> list[str]:
    """The run ids of a status table (rows start with the id; the header and footer do not)."""
    return [line.split()[0] for line in out.splitlines()
            if line.startswith(("multiclass-", "mae-"))]


def _status(root: Path, *args: str) -> str:
    return run_cli(["status", *args, "--runs-dir", str(root)], env=ENV).stdout


def test_default_view_hides_old_ended_runs_and_says_how_many(root: Path) -> None:
    out = _status(root)
    assert _ids(out) == ["mae-convnext-new2", "multiclass-maxvit-pend", "multiclass-swin-new1"]
    assert out.splitlines()[-1].startswith("3 runs that ended more than 24h ago not shown: "
                                           "`hcli status --all`")
    everything = _status(root, "--all")
    assert len(_ids(everything)) == 6 and "not shown" not in everything
    week = _status(root, "--since", "7d")
    assert "multiclass-convnext-old1" in _ids(week) and "mae-swin-old3" not in _ids(week)
    assert week.splitlines()[-1].startswith("1 run that ended more than 7d ago not shown")


def test_json_keeps_every_run_unless_filtered(root: Path) -> None:
    assert len(json.loads(_status(root, "--json"))) == 6
    recent = json.loads(_status(root, "--json", "--since", "24h"))
    assert {r["run_id"] for r in recent} == {
        "mae-convnext-new2", "multiclass-maxvit-pend", "multiclass-swin-new1"}


def test_filters_compose(root: Path) -> None:
    assert _ids(_status(root, "--kind", "multiclass")) == [
        "multiclass-maxvit-pend", "multiclass-swin-new1"]
    out = _status(root, "--kind", "multiclass", "--state", "completed")
    assert _ids(out) == ["multiclass-swin-new1"]
    assert out.splitlines()[-1].startswith("1 run that ended")  # old1; old3 is not multiclass
    assert _ids(_status(root, "multiclass-swin-*", "--all")) == [
        "multiclass-swin-new1", "multiclass-swin-old2"]
    rows = json.loads(_status(root, "*-old?", "--json", "--state", "failed"))
    assert [r["run_id"] for r in rows] == ["multiclass-swin-old2"]
    assert "matches the filters" in _status(root, "nothing-*")


def test_nothing_recent_says_so(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    _run(root, "multiclass-convnext-old1", "COMPLETED", ended_ago_h=72)
    lines = _status(root).splitlines()
    assert lines[0].startswith(f"no run under {root} is active or ended in the last 24h")
    assert lines[1].startswith("1 run that ended more than 24h ago not shown")


def test_a_glob_lists_and_an_id_shows_one_run(root: Path) -> None:
    assert _fast.parse_status_args(["multiclass-swin-*"]) is not None
    assert _fast.parse_status_args(["multiclass-swin-new1"]) is None
    detail = _status(root, "multiclass-swin-new1")
    assert "next" in detail and "runs in" not in detail
    listed = _status(root, "multiclass-swin-new?")
    assert listed.startswith("runs in") and _ids(listed) == ["multiclass-swin-new1"]


@pytest.mark.parametrize("args", [["--since", "soon"], ["--since", "1y"],
                                  ["--all", "--since", "1h"]])
def test_bad_window_is_one_line_and_exit_2(root: Path, args: list[str]) -> None:
    done = run_cli(["status", *args, "--runs-dir", str(root)], env=ENV, check=False)
    assert done.returncode == 2 and done.stdout == ""
    assert len(done.stderr.strip().splitlines()) == 1 and "--" in done.stderr


def test_watch_and_detail_refuse_window_options(root: Path) -> None:
    done = run_cli(["status", "multiclass-swin-new1", "--all", "--runs-dir", str(root)],
                   env=ENV, check=False)
    assert done.returncode == 2 and "--all do not apply" in done.stderr
