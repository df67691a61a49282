"""Habits of a mature CLI: --version, shell completion of run ids, doctor checking the data root
a run would use (the probe's own check: tests/test_submit.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path
from types import SimpleNamespace

import pytest

import hcli
from hcli.cli._common import complete_run_id
from tests.conftest import HCLI, REPO, run_cli

RUN_IDS = ["multiclass-convnext-bbbb", "multiclass-swin-aaaa", "probe-cccc"]


def test_version_is_the_package_version_and_needs_no_typer() -> None:
    code = (
        "import sys; from hcli.cli import main; main(['--version']); "
        "sys.stderr.write(' '.join(m for m in ('typer', 'click', 'pydantic') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=REPO, check=True)
    assert done.stdout == f"hcli {version('hcli')}\n"
    assert version("hcli") == hcli.__version__
    assert done.stderr == ""  # none of them imported


def test_version_through_typer_says_the_same(capsys: pytest.CaptureFixture[str]) -> None:
    from hcli.cli import app

    with pytest.raises(SystemExit) as done:
        app(args=["--version", "status"], prog_name="hcli")  # not the fast path's exact form
    assert done.value.code == 0
    assert capsys.readouterr().out == f"hcli {hcli.__version__}\n"


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    root = tmp_path / "runs"
    for run_id in RUN_IDS:
        (root / run_id).mkdir(parents=True)
        (root / run_id / "state.json").write_text('{"state": "COMPLETED"}')
    (root / ".arrays").mkdir()  # submitit's array folders are not runs
    (root / "multiclass-half-made").mkdir()  # no state.json: not a run
    return root


def test_complete_run_id_lists_matching_runs(runs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ctx = SimpleNamespace(params={"runs_dir": runs})
    assert complete_run_id(ctx, "multi") == RUN_IDS[:2]  # type: ignore[arg-type]
    assert complete_run_id(ctx, "") == RUN_IDS  # type: ignore[arg-type]
    assert complete_run_id(ctx, "nothing") == []  # type: ignore[arg-type]
    monkeypatch.setenv("HCLI_RUNS_DIR", str(runs))  # no --runs-dir on the line: the usual root
    assert complete_run_id(SimpleNamespace(params={}), "probe") == ["probe-cccc"]  # type: ignore[arg-type]
    monkeypatch.setenv("HCLI_RUNS_DIR", str(runs / "missing"))
    assert complete_run_id(SimpleNamespace(params={}), "") == []  # type: ignore[arg-type]


@pytest.mark.parametrize("line, expected", [
    ("hcli logs multi", RUN_IDS[:2]),
    ("hcli cancel multiclass-s", ["multiclass-swin-aaaa"]),
    ("hcli resume p", ["probe-cccc"]),
    ("hcli status multiclass-c", ["multiclass-convnext-bbbb"]),
    ("hcli logs --runs-dir RUNS pro", ["probe-cccc"]),
])
def test_shell_completion_of_run_arguments(runs: Path, line: str, expected: list[str]) -> None:
    words = line.replace("RUNS", str(runs))
    env = dict(os.environ, _HCLI_COMPLETE="complete_bash", COMP_WORDS=words,
               COMP_CWORD=str(len(words.split()) - 1))
    # Without --runs-dir on the line the root comes from $HCLI_RUNS_DIR, as for the command.
    env["HCLI_RUNS_DIR"] = str(runs) if "--runs-dir" not in words else str(runs / "elsewhere")
    done = subprocess.run([*HCLI], capture_output=True, text=True, env=env, cwd=REPO,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == expected


def test_help_offers_completion_and_version() -> None:
    out = run_cli(["--help"]).stdout
    assert "--install-completion" in out and "--show-completion" in out and "--version" in out
    # Typer detects the user's shell from the parent process (sh under CI, which it does not
    # support); its own test switch makes the shell an argument instead.
    script = run_cli(["--show-completion", "bash"],
                     env={"_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1"}).stdout
    assert "_HCLI_COMPLETE" in script


@pytest.mark.parametrize("args, expected", [
    (["-c", "quickstart"], REPO / "data" / "synth-prepared"),  # the demo's form
    (["-o", "data.root=/nonexistent/prepared"], Path("/nonexistent/prepared")),
    (["-c", "quickstart", "--data", "/elsewhere"], Path("/elsewhere")),  # --data wins
])
def test_doctor_checks_the_data_root_a_run_would_use(
    args: list[str], expected: Path, runs_dir: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from hcli.cli import app

    monkeypatch.chdir(REPO)  # relative data roots resolve against the working directory
    with pytest.raises(SystemExit) as done:
        app(args=["doctor", "--json", "--runs-dir", str(runs_dir), *args], prog_name="hcli")
    assert done.value.code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["data"]["path"] == str(expected)
