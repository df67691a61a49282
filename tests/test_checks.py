"""Checks before queueing: each failed check is one line, exit 2, and leaves nothing queued."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from hcli.data.manifest import load_manifest
from hcli.errors import UserError
from hcli.launch import _checks
from hcli.launch._checks import preflight
from hcli.runs import create_run
from hcli.spec import load_spec, resolve_paths
from tests.conftest import run_cli, tiny_overrides


def _nothing_queued(runs: Path, sbatch_log: Path | None = None) -> None:
    folders = [p for p in runs.iterdir() if not p.name.startswith(".")] if runs.exists() else []
    assert folders == [], f"a failed check left run folders behind: {folders}"
    leftovers = list(runs.glob(".tmp-*")) if runs.exists() else []
    assert leftovers == []
    if sbatch_log is not None:
        assert not sbatch_log.exists(), "sbatch was called although a check failed"


def _submit(runs: Path, data: Path, *extra: str, args: tuple[str, ...] = ("--local",),
            env: dict[str, str] | None = None):
    return run_cli(["submit", "multiclass", *args, "--runs-dir", str(runs),
                    *tiny_overrides(data, *extra)], check=False, env=env)


def _one_line_error(done, *needles: str) -> None:
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.fixture
def fake_sbatch(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """An sbatch on the PATH that only records being called: `--cluster` works without SLURM."""
    bin_dir, log = tmp_path / "bin", tmp_path / "sbatch.log"
    bin_dir.mkdir()
    script = bin_dir / "sbatch"
    script.write_text(f"#!/bin/sh\necho called >> {log}\nexit 1\n")
    script.chmod(0o755)
    return {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}, log


def test_missing_manifest(tmp_path):
    runs = tmp_path / "runs"
    done = _submit(runs, tmp_path / "no-data")
    _one_line_error(done, str(tmp_path / "no-data" / "manifest.json"), "hcli data prepare")
    _nothing_queued(runs)


def test_unreadable_manifest(tmp_path):
    data = tmp_path / "broken"
    data.mkdir()
    (data / "manifest.json").write_text("{not json")
    done = _submit(tmp_path / "runs", data)
    _one_line_error(done, "manifest.json is not a valid manifest", "re-run hcli data prepare")
    _nothing_queued(tmp_path / "runs")


def test_empty_fold(tmp_path, synth_data):
    # One material only: leaving it out (lomo fold 0) leaves nothing to train on.
    manifest = load_manifest(synth_data)
    material = manifest.samples[0].material
    one = manifest.model_copy(
        update={"samples": [s for s in manifest.samples if s.material == material]})
    data = tmp_path / "one-material"
    data.mkdir()
    (data / "manifest.json").write_text(one.model_dump_json())
    done = _submit(tmp_path / "runs", data, "data.protocol=lomo", "data.fold=0")
    _one_line_error(done, "data.fold=0", "no train", "train 0", "data.protocol")
    _nothing_queued(tmp_path / "runs")


def test_missing_init_run(tmp_path, synth_data):
    done = _submit(tmp_path / "runs", synth_data, "model.init_from=multiclass-nosuchrun")
    _one_line_error(done, "model.init_from=multiclass-nosuchrun", "no run")
    _nothing_queued(tmp_path / "runs")


def test_missing_container(tmp_path, synth_data, fake_sbatch):
    env, log = fake_sbatch
    image = tmp_path / "hcli.sif"
    done = _submit(tmp_path / "runs", synth_data, f"slurm.container={image}",
                   args=("--cluster",), env=env)
    _one_line_error(done, f"slurm.container={image} does not exist", "apptainer build")
    _nothing_queued(tmp_path / "runs", log)


def test_weights_missing_when_pretrained(tmp_path, synth_data):
    empty = tmp_path / "hf"
    env = {"HF_HOME": str(empty), "HF_HUB_CACHE": str(empty / "hub"), "HF_HUB_OFFLINE": "1"}
    done = _submit(tmp_path / "runs", synth_data, "model.pretrained=true", env=env)
    _one_line_error(done, "model.pretrained=true", "not in the Hugging Face cache", "hf download")
    _nothing_queued(tmp_path / "runs")
    missing_file = tmp_path / "weights.safetensors"
    done = _submit(tmp_path / "runs", synth_data, f"model.pretrained={missing_file}")
    _one_line_error(done, f"model.pretrained={str(missing_file)!r} does not exist")
    _nothing_queued(tmp_path / "runs")


def test_a_bad_run_in_a_sweep_queues_none_of_it(tmp_path, synth_data):
    runs = tmp_path / "runs"
    done = run_cli(["submit", "multiclass", "--local", "--runs-dir", str(runs),
                    *tiny_overrides(synth_data), "-o", f"data.root={synth_data},{tmp_path}"],
                   check=False)
    _one_line_error(done, "multiclass-convnext-", "manifest.json not found")
    _nothing_queued(runs)


def test_dry_run_warns_and_exits_0(tmp_path):
    runs = tmp_path / "runs"
    done = run_cli(["submit", "multiclass", "--dry-run", "--json", "--runs-dir", str(runs),
                    "-o", f"data.root={tmp_path / 'no-data'}"])
    assert "warning:" in done.stderr and "manifest.json not found" in done.stderr
    assert json.loads(done.stdout)["run_id"].startswith("multiclass-convnext-")
    _nothing_queued(runs)


def test_skip_checks_queues_and_keeps_the_run_id(tmp_path):
    runs, missing = tmp_path / "runs", tmp_path / "no-data"
    planned = json.loads(run_cli(["submit", "multiclass", "--dry-run", "--json", "--runs-dir",
                                  str(runs), "-o", f"data.root={missing}"]).stdout)
    done = run_cli(["submit", "multiclass", "--local", "--skip-checks", "--json", "--runs-dir",
                    str(runs), "-o", f"data.root={missing}"])
    (out,) = json.loads(done.stdout)
    assert out["action"] == "submitted" and out["job_id"]
    assert out["run_id"] == planned["run_id"]  # execution-only: the identity is unchanged
    assert "skip_checks: true" in (Path(out["run_dir"]) / "spec.yaml").read_text()


def test_resume_checks_before_queueing(tmp_path):
    runs = tmp_path / "runs"
    spec = resolve_paths(load_spec(None, kind="multiclass",
                                   overrides=[f"data.root={tmp_path / 'gone'}"]))
    run = create_run(runs, "multiclass-convnext-00000000", spec, snapshot=False)
    run.update_state(state="FAILED", message="ValueError: boom")
    done = run_cli(["resume", run.run_id, "--local", "--runs-dir", str(runs)], check=False)
    _one_line_error(done, "manifest.json not found")
    state = run.state()
    assert state["state"] == "FAILED" and state["jobs"] == []  # nothing queued, nothing changed


def _spec(tmp_path: Path, data: Path, *overrides: str):
    return resolve_paths(load_spec(None, kind="multiclass",
                                   overrides=[f"data.root={data}", "data.k=3", *overrides]))


def test_skip_checks_moves_the_checks_to_the_node(tmp_path):
    spec = _spec(tmp_path, tmp_path / "no-data", "slurm.skip_checks=true")
    preflight(spec, tmp_path / "runs")  # skipped on the submitting machine
    with pytest.raises(UserError, match="manifest.json not found"):
        preflight(spec, tmp_path / "runs", on_node=True)


def test_init_from_a_queued_run_waits_for_its_checkpoint(tmp_path, synth_data):
    runs = tmp_path / "runs"
    source = create_run(runs, "multiclass-convnext-11111111", _spec(tmp_path, synth_data),
                        snapshot=False)
    spec = _spec(tmp_path, synth_data, f"model.init_from={source.run_id}")
    preflight(spec, runs)  # PENDING: a chain (--after) gets its checkpoint before this starts
    with pytest.raises(UserError, match="has no checkpoint yet"):
        preflight(spec, runs, on_node=True)
    source.update_state(state="FAILED")
    with pytest.raises(UserError, match="has no checkpoint yet"):
        preflight(spec, runs)
    (source.checkpoints / "step-000004.pt").write_bytes(b"x")
    (source.checkpoints / "step-000004.pt.done").write_text("")
    preflight(spec, runs, on_node=True)


def test_cached_weights_of_any_tag_pass(tmp_path, synth_data, monkeypatch):
    snapshot = tmp_path / "hub" / "models--timm--convnext_tiny.fb_in1k" / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    monkeypatch.setattr(_checks, "_hub_cache", lambda: tmp_path / "hub")
    spec = _spec(tmp_path, synth_data, "model.pretrained=true")
    with pytest.raises(UserError, match="not in the Hugging Face cache"):
        preflight(spec, tmp_path / "runs")  # a snapshot without weights files is no hit
    (snapshot / "model.safetensors").write_bytes(b"x")
    preflight(spec, tmp_path / "runs")


def test_probe_needs_no_data(tmp_path):
    spec = resolve_paths(load_spec(None, kind="probe",
                                   overrides=[f"data.root={tmp_path / 'no-data'}"]))
    preflight(spec, tmp_path / "runs")


def test_init_from_a_run_that_trained_on_the_test_images(tmp_path, synth_data):
    runs = tmp_path / "runs"
    source = create_run(runs, "multiclass-convnext-22222222", _spec(tmp_path, synth_data),
                        snapshot=False)
    (source.checkpoints / "best.pt").write_bytes(b"x")
    source.update_state(state="COMPLETED")
    # Fold 1's test images are in fold 0's training set.
    leaking = _spec(tmp_path, synth_data, "data.fold=1", f"model.init_from={source.run_id}")
    with pytest.raises(UserError, match="test images"):
        preflight(leaking, runs)
    preflight(_spec(tmp_path, synth_data, "data.fold=1", "model.init_allow_test_overlap=true",
                    f"model.init_from={source.run_id}"), runs)
    preflight(_spec(tmp_path, synth_data, f"model.init_from={source.run_id}"), runs)


def test_skipped_checks_run_in_the_job_and_fail_with_the_same_message(tmp_path: Path):
    runs = tmp_path / "runs"
    missing = tmp_path / "nowhere"
    args = ["submit", "multiclass", "--runs-dir", str(runs), "-o", f"data.root={missing}"]
    refused = run_cli([*args, "--foreground"], check=False)
    assert refused.returncode == 2 and not runs.exists()  # checked before queueing
    failed = run_cli([*args, "--foreground", "--skip-checks"], check=False)
    assert failed.returncode == 2, failed.stderr
    (run,) = [p for p in runs.iterdir() if not p.name.startswith(".")]
    state = json.loads((run / "state.json").read_text())
    assert state["state"] == "FAILED"
    assert state["message"] == refused.stderr.strip().removeprefix("error: ")
