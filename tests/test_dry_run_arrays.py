"""A sweep's dry run shows the arrays that will really be submitted (golden files, no SLURM)."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from hcli.cli import main
from hcli.launch import _submit
from hcli.launch._slurm import render_sbatch
from hcli.runs import create_run
from hcli.spec import load_spec
from tests.conftest import run_cli

GOLDEN = Path(__file__).parent / "golden"
SWEEP = ["submit", "multiclass", "--backbone", "convnext,swin,maxvit", "-o", "seed=0,1,2",
         "--max-parallel", "2", "--dry-run", "-o", "data.root=/data/artefact"]


def _normalise(text: str, runs: Path) -> str:
    return text.replace(str(runs), "RUNS").replace(sys.executable, "PYTHON")


def _check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("HCLI_UPDATE_GOLDEN") == "1":  # after a deliberate change; review the diff
        path.write_text(text)
    assert text == path.read_text(), f"{name} changed; HCLI_UPDATE_GOLDEN=1 rewrites the golden"


def _in_process(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """The CLI in this process, where a test can monkeypatch what SLURM would answer."""
    with pytest.raises(SystemExit) as exit_:
        main(args)
    out = capsys.readouterr()
    assert exit_.value.code in (0, None), out.err
    return out.out


def test_sweep_of_nine_capped_at_two_is_one_array(runs_dir: Path, no_slurm_env: dict) -> None:
    done = run_cli([*SWEEP, "--runs-dir", str(runs_dir)], env=no_slurm_env)
    text = _normalise(done.stdout, runs_dir)
    assert "#SBATCH --array=0-8%2" in text and "SLURM's default" in text
    _check_golden("dry_run_sweep_9_max2.txt", text)

    out = json.loads(run_cli([*SWEEP, "--json", "--runs-dir", str(runs_dir)],
                             env=no_slurm_env).stdout)
    (array,) = out["arrays"]
    assert array["array"] == "0-8%2" and array["job_name"] == "hcli-array-9"
    assert list(array["tasks"].values()) == [r["run_id"] for r in out["runs"]]
    assert [r["task"] for r in out["runs"]] == list(range(9))
    assert all(r["sbatch"] == array["sbatch"] for r in out["runs"])
    assert _normalise(array["sbatch"], runs_dir) in text  # the script the text shows
    assert out["max_array_size"]["value"] == 1001  # no scontrol here: SLURM's default, said so
    assert "no scontrol answered" in out["max_array_size"]["from"]
    assert not runs_dir.exists()  # a dry run writes nothing


def test_sweep_larger_than_max_array_size_splits_in_two(
    runs_dir: Path, no_slurm_path: str, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(_submit, "max_array_size", lambda default=0: 5)
    text = _normalise(_in_process([*SWEEP, "--runs-dir", str(runs_dir)], capsys), runs_dir)
    assert text.count("#SBATCH --array=") == 2
    assert "#SBATCH --array=0-4%2" in text and "#SBATCH --array=0-3%2" in text
    _check_golden("dry_run_sweep_split_in_two.txt", text)

    out = json.loads(_in_process([*SWEEP, "--json", "--runs-dir", str(runs_dir)], capsys))
    assert [len(a["tasks"]) for a in out["arrays"]] == [5, 4]
    assert out["max_array_size"] == {"value": 5, "from": "scontrol"}
    # Every run is in exactly one array, in the sweep's order.
    members = [rid for a in out["arrays"] for rid in a["tasks"].values()]
    assert members == [r["run_id"] for r in out["runs"]]
    assert [r["task"] for r in out["runs"]] == [0, 1, 2, 3, 4, 0, 1, 2, 3]


def test_existing_members_are_shown_skipped_and_left_out_of_the_array(
    runs_dir: Path, no_slurm_path: str, capsys: pytest.CaptureFixture[str]
) -> None:
    first = json.loads(_in_process([*SWEEP, "--json", "--runs-dir", str(runs_dir)], capsys))
    done, failed, died = first["runs"][0], first["runs"][4], first["runs"][8]
    for entry, state in ((done, "COMPLETED"), (failed, "FAILED"), (died, "RUNNING")):
        run = create_run(runs_dir, entry["run_id"], load_spec(config=None, overrides=[]))
        run.add_job("local-999999999", "local")  # no such process: its job is gone
        run.update_state(state=state)
    out = json.loads(_in_process([*SWEEP, "--json", "--runs-dir", str(runs_dir)], capsys))
    (array,) = out["arrays"]
    assert array["array"] == "0-5%2" and done["run_id"] not in array["tasks"].values()
    assert set(out["skipped"]) == {done["run_id"], failed["run_id"], died["run_id"]}
    assert "COMPLETED" in out["skipped"][done["run_id"]]
    assert "hcli resume" in out["skipped"][failed["run_id"]]
    assert "is gone" in out["skipped"][died["run_id"]]
    text = _in_process([*SWEEP, "--runs-dir", str(runs_dir)], capsys)
    assert "6 to submit in 1 sbatch submission(s), 3 skipped" in text
    assert f"# {done['run_id']}: already COMPLETED" in text


def test_real_submission_uses_the_dry_run_plan(
    runs_dir: Path, no_slurm_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What `_launch_slurm` hands submitit renders to the very scripts the dry run printed."""
    monkeypatch.setattr(_submit, "max_array_size", lambda default=0: 5)
    planned = [_submit.PlannedRun(f"probe-{i}", load_spec(kind="probe")) for i in range(7)]
    shown = {o.run_id: o.sbatch for o in _submit.submit_runs(
        planned, runs_dir, mode="slurm", dry_run=True, max_parallel=2)}
    executors: list[FakeExecutor] = []

    class FakeExecutor:
        def __init__(self, spec: Any, folder: Path, **kw: Any) -> None:
            self.spec, self.folder, self.kw, self.targets = spec, folder, kw, []
            executors.append(self)

        def batch(self) -> Any:
            return contextlib.nullcontext()

        def submit(self, target: Any) -> Any:
            self.targets.append(Path(target.run_dir).name)
            paths = SimpleNamespace(stdout=self.folder / "o", stderr=self.folder / "e")
            return SimpleNamespace(job_id=f"9_{len(self.targets) - 1}", paths=paths)

    monkeypatch.setattr(_submit, "make_executor", FakeExecutor)
    runs = [create_run(runs_dir, p.run_id, p.spec) for p in planned]
    _submit._launch_slurm(planned, runs, runs_dir, None, 2)
    assert [len(e.targets) for e in executors] == [5, 2]
    for ex in executors:
        script = render_sbatch(ex.spec, ex.folder, array_size=len(ex.targets), **ex.kw)
        assert all(shown[run_id] == script for run_id in ex.targets)
