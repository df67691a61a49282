"""A run never resumes from another experiment's checkpoint: the marker's identity is checked by
`hcli resume` before anything is queued (and by the job when it loads, tests/test_checkpoint.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hcli.ckpt_identity import CheckpointIdentityError, check_run_checkpoints, checkpoint_identity
from hcli.launch import plan_runs
from hcli.runs import create_run
from tests.conftest import run_cli


def _failed_run_with_checkpoint(root: Path, *overrides: str) -> Path:
    planned = plan_runs("multiclass", overrides=["train.steps=8", *overrides])[0]
    run = create_run(root, planned.run_id, planned.spec, snapshot=False)
    run.update_state(state="FAILED", message="killed")
    marker = {"step": 4, "size": 1, "sha256": "0", "identity": checkpoint_identity(run.path)}
    (run.checkpoints / "step-00000004.pt").write_bytes(b"x")
    (run.checkpoints / "step-00000004.pt.done").write_text(json.dumps(marker))
    return run.path


def test_identity_ignores_execution_only_fields_and_sees_identity_edits(tmp_path: Path):
    run = _failed_run_with_checkpoint(tmp_path)
    before = checkpoint_identity(run)
    spec = run / "spec.yaml"
    text = spec.read_text()
    spec.write_text(text.replace("log_every_steps:", "log_every_steps: 7 #"))
    assert checkpoint_identity(run) == before  # how it runs, not what it computes
    spec.write_text(text.replace("seed: 0", "seed: 5"))
    assert checkpoint_identity(run)["spec_id"] != before["spec_id"]
    with pytest.raises(CheckpointIdentityError, match="spec_id"):
        check_run_checkpoints(run / "checkpoints", checkpoint_identity(run))


def test_resume_refuses_a_checkpoint_of_another_experiment(tmp_path: Path):
    ours = _failed_run_with_checkpoint(tmp_path, "seed=1")
    theirs = _failed_run_with_checkpoint(tmp_path, "seed=2")
    # Someone copies another run's checkpoints into this one.
    for f in (theirs / "checkpoints").iterdir():
        (ours / "checkpoints" / f.name).write_bytes(f.read_bytes())
    done = run_cli([
        "resume", ours.name, "--local", "--skip-checks", "--runs-dir", str(tmp_path)
    ], check=False)
    assert done.returncode == 2, done.stderr
    assert "another experiment" in done.stderr and theirs.name in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
    state = json.loads((ours / "state.json").read_text())
    assert state["state"] == "FAILED" and len(state.get("jobs") or []) == 0  # nothing queued
