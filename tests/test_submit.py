"""Submission: idempotent per run identity, dry-run sbatch (golden file), the probe job."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.conftest import HCLI, REPO, run_cli

GOLDEN = Path(__file__).parent / "golden" / "dry_run_multiclass_swin.sbatch"


def _normalise(text: str, runs: Path) -> str:
    return text.replace(str(runs), "RUNS").replace(sys.executable, "PYTHON")


def test_dry_run_sbatch_matches_golden(runs_dir, no_slurm_env):
    # Rendered with no SLURM command on the PATH: a dry run is for the laptop too.
    done = run_cli(
        [
            "submit",
            "multiclass",
            "--backbone",
            "swin",
            "--dry-run",
            "--json",
            "--runs-dir",
            str(runs_dir),
            "-o",
            "slurm.partition=gpu",
            "-o",
            "slurm.gpus_per_node=1",
            "-o",
            "data.root=/data/artefact",
        ],
        env=no_slurm_env,
    )
    out = json.loads(done.stdout)
    assert set(out) == {"run_id", "spec", "sbatch"}
    assert out["run_id"].startswith("multiclass-swin-")
    assert out["spec"]["model"]["backbone"] == "swin"
    text = _normalise(out["sbatch"], runs_dir)
    if os.environ.get("HCLI_UPDATE_GOLDEN") == "1":  # after a deliberate change; review the diff
        GOLDEN.write_text(text)
    assert text == GOLDEN.read_text(), "sbatch changed; HCLI_UPDATE_GOLDEN=1 rewrites the golden"
    assert not runs_dir.exists() or not any(runs_dir.iterdir())  # a dry run writes nothing


def test_dry_run_human_output_names_the_run(runs_dir, no_slurm_env):
    done = run_cli(
        ["submit", "multiclass", "--dry-run", "--runs-dir", str(runs_dir)], env=no_slurm_env
    )
    assert "# run id: multiclass-convnext-" in done.stdout
    assert "#SBATCH --signal=USR2@120" in done.stdout and "#SBATCH --requeue" in done.stdout


def test_dry_run_container_and_dependency_render(runs_dir, tmp_path, no_slurm_env):
    done = run_cli(
        [
            "submit",
            "probe",
            "--dry-run",
            "--json",
            "--runs-dir",
            str(runs_dir),
            "-o",
            f"slurm.container={tmp_path / 'hcli.sif'}",
            "-o",
            "slurm.setup=[module load cuda]",
        ],
        env=no_slurm_env,
    )
    sbatch = json.loads(done.stdout)["sbatch"]
    assert (
        f"apptainer exec --nv --bind {runs_dir.resolve()} {tmp_path / 'hcli.sif'} python3" in sbatch
    )
    assert "module load cuda" in sbatch


def _submit_probe(runs_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*HCLI, "submit", "probe", "--local", "--json", "--runs-dir", str(runs_dir)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )


def _wait_state(run_dir: Path, states: set[str], timeout: float = 120) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        state = json.loads((run_dir / "state.json").read_text())
        if state["state"] in states:
            return state
        time.sleep(0.5)
    raise AssertionError(f"{run_dir.name} still {state['state']} after {timeout} s")


def test_ten_concurrent_submits_make_one_run_and_one_job(runs_dir):
    with ThreadPoolExecutor(10) as pool:
        results = list(pool.map(lambda _: _submit_probe(runs_dir), range(10)))
    assert all(r.returncode == 0 for r in results), [r.stderr for r in results]
    outcomes = [json.loads(r.stdout)[0] for r in results]
    assert len({o["run_id"] for o in outcomes}) == 1
    assert sorted(o["action"] for o in outcomes).count("submitted") == 1
    folders = [p for p in runs_dir.iterdir() if not p.name.startswith(".")]
    assert len(folders) == 1
    state = _wait_state(folders[0], {"COMPLETED", "FAILED"})
    assert state["state"] == "COMPLETED", state
    assert len(state["jobs"]) == 1 and state["jobs"][0]["job_id"].startswith("local-")
    # Completed: a further submit does nothing; --force starts attempt 2.
    again = json.loads(_submit_probe(runs_dir).stdout)[0]
    assert again["action"] == "exists" and again["state"] == "COMPLETED"


def test_probe_foreground_end_to_end(runs_dir, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    done = run_cli(
        ["submit", "probe", "--foreground", "--runs-dir", str(runs_dir), "-o", f"data.root={data}"]
    )
    run_dir = next(p for p in runs_dir.iterdir() if p.name.startswith("probe-"))
    state = json.loads((run_dir / "state.json").read_text())
    assert state["state"] == "COMPLETED"
    probe = json.loads((run_dir / "results.json").read_text())["probe"]
    # The data root of the probe's spec (-o data.root), not the default data/artefact.
    assert probe["data"] == {"path": str(data), "exists": True, "readable": True,
                             "prepared": False}
    assert "no prepared data at" in done.stdout and str(data) in done.stdout
    assert probe["runs_root"]["writable"] is True
    assert probe["cpu_count"] >= 1 and probe["torch"].startswith("2.")
    assert "hostname" in done.stdout
    assert (run_dir / "code" / "jobs" / "entry.py").is_file()  # the code snapshot
    status = json.loads(run_cli(["status", "--json", "--runs-dir", str(runs_dir)]).stdout)
    assert [(r["run_id"], r["state"], r["kind"]) for r in status] == [
        (run_dir.name, "COMPLETED", "probe")
    ]
    forced = run_cli(
        [
            "submit",
            "probe",
            "--foreground",
            "--force",
            "--runs-dir",
            str(runs_dir),
            "-o",
            f"data.root={data}",
        ]
    )
    assert "submitted" in forced.stdout
    state = json.loads((run_dir / "state.json").read_text())
    assert state["attempt"] == 2 and (run_dir / "attempts" / "1" / "results.json").is_file()


def test_status_with_no_runs(runs_dir):
    done = run_cli(["status", "--runs-dir", str(runs_dir)])
    assert "no runs" in done.stdout
    assert json.loads(run_cli(["status", "--json", "--runs-dir", str(runs_dir)]).stdout) == []


def test_import_of_cli_does_not_import_torch():
    code = "import sys, hcli.cli; print('torch' in sys.modules, 'pydantic' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert out.stdout.split() == ["False", "False"]


def test_help_is_plain_click_and_skips_rich_markdown():
    # Typer's rich help imported markdown_it: ~150 ms of every `hcli --help` (bench_cli.py).
    code = ("import sys; from hcli.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print('markdown_it' in sys.modules, 'torch' in sys.modules, file=sys.stderr)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert out.stderr.split() == ["False", "False"]
    assert out.stdout.startswith("Usage: hcli [OPTIONS] COMMAND") and "status" in out.stdout


@pytest.mark.parametrize("flags", [["--cluster", "--local"], ["--cluster", "--foreground"]])
def test_conflicting_modes(flags, runs_dir):
    done = run_cli(["submit", "probe", *flags, "--runs-dir", str(runs_dir)], check=False)
    assert done.returncode == 2 and "--cluster" in done.stderr
