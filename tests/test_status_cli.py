"""`hcli status` on the command line: the typer-free fast path says exactly what Typer says."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hcli.cli import _fast, _status_view, main
from tests.test_status import _run

FIXED_NOW = time.time()


@pytest.fixture
def runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PATH", "/nonexistent")  # no scheduler: rows depend on the folders only
    monkeypatch.delenv("HCLI_RUNS_DIR", raising=False)
    root = tmp_path / "runs"
    _run(root, "multiclass-swin-aaaa", "RUNNING", "1234", 5)
    _run(root, "multiclass-swin-bbbb", "COMPLETED", "1235", 900)
    _run(root, "pretrain-swin-cccc", "FAILED", "local-1", None, kind="pretrain")
    monkeypatch.setattr(time, "time", lambda: FIXED_NOW)  # heartbeat ages equal in both calls
    return root


@pytest.mark.parametrize("args", [
    [],
    ["--json"],
    ["--state", "completed"],
    ["--kind=pretrain", "--json"],
    ["--kind", "multiclass", "--kind", "pretrain"],  # the last one wins, as in click
    ["--state", "RUNNING", "--json", "--kind", "multiclass"],
    ["multiclass-*"],
    ["--json", "*-[ab]???", "--state", "completed"],
    ["--since", "1h", "--kind", "multiclass"],
    ["--all"],
    ["--state", "failed", "--json", "--since", "30m"],
])
def test_fast_path_prints_what_typer_prints(runs: Path, args: list[str],
                                             capsys: pytest.CaptureFixture[str]) -> None:
    from hcli.cli import app

    full = ["status", *args, "--runs-dir", str(runs)]
    assert _fast.try_status(full)
    fast = capsys.readouterr()
    with pytest.raises(SystemExit) as done:
        app(args=full, prog_name="hcli")
    assert done.value.code == 0
    typer_out = capsys.readouterr()
    assert fast.out == typer_out.out and fast.err == typer_out.err == ""
    if "--json" in args:
        assert isinstance(json.loads(fast.out), list)
    else:
        assert fast.out.startswith(f"runs in {runs}")


@pytest.mark.parametrize("args", [
    ["--help"], ["--watch"], ["-w"], ["--json=1"], ["--bogus"], ["--kind"], ["--kind", "--json"],
    ["extra"], ["--", "--json"],
])
def test_fast_path_leaves_everything_else_to_typer(args: list[str]) -> None:
    assert _fast.parse_status_args(args) is None
    assert not _fast.try_status(["status", *args])
    assert not _fast.try_status(["submit", "multiclass"])


def test_parse_status_args() -> None:
    none = {"json_out": False, "all_runs": False, "kind": None, "state": None, "since": None,
            "runs_dir": None, "pattern": None}
    assert _fast.parse_status_args(["--runs-dir=/a=b", "--state", "failed", "--json"]) == {
        **none, "json_out": True, "state": "failed", "runs_dir": "/a=b"}
    assert _fast.parse_status_args([]) == none
    assert _fast.parse_status_args(["multiclass-*", "--since", "7d", "--all"]) == {
        **none, "pattern": "multiclass-*", "since": "7d", "all_runs": True}
    # A RUN without glob characters is one run in detail: Typer's.
    assert _fast.parse_status_args(["multiclass-swin-aaaa"]) is None
    assert _fast.parse_status_args(["a*", "b*"]) is None


def test_unknown_option_still_gets_typers_error(runs: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["status", "--bogus", "--runs-dir", str(runs)])
    assert done.value.code == 2 and "No such option" in capsys.readouterr().err


@pytest.mark.parametrize("extra", [[], ["--json", "multiclass-*", "--since", "7d"], ["--all"]])
def test_plain_status_imports_no_typer(runs: Path, extra: list[str]) -> None:
    heavy = ("typer", "click", "pydantic", "torch", "yaml", "rich")
    code = ("import sys; from hcli.cli import main; main(sys.argv[1:]); "
            f"print([m for m in {heavy!r} if m in sys.modules], file=sys.stderr)")
    done = subprocess.run([sys.executable, "-c", code, "status", "--runs-dir", str(runs), *extra],
                          capture_output=True, text=True, check=True)
    assert done.stderr.strip() == "[]"
    assert "multiclass-swin-aaaa" in done.stdout


def test_table_colours_states_only_when_asked(runs: Path) -> None:
    from hcli.status import status_rows

    rows = status_rows(runs)
    plain = _status_view.format_table(rows, runs, color=False)
    coloured = _status_view.format_table(rows, runs, color=True)
    assert "\x1b[" not in plain
    assert "\x1b[32mCOMPLETED" in coloured and "\x1b[31mFAILED" in coloured
    assert [line.split()[0] for line in plain.splitlines()[2:]] == sorted(
        p.name for p in runs.iterdir())


def test_one_run_in_detail_takes_the_typer_path(runs: Path) -> None:
    assert not _fast.try_status(["status", "multiclass-swin-aaaa", "--runs-dir", str(runs)])
    assert not _fast.try_status(["status", "--json", "multiclass-swin-aaaa"])
