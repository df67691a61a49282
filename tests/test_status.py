"""`hcli status` derives states from run folders; the scheduler is only a second witness."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from hcli.status import status_rows


def _run(root: Path, name: str, state: str, job_id: str, heartbeat_age_s: float | None,
         **extra) -> None:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "state.json").write_text(json.dumps({
        "run_id": name, "kind": "multiclass", "backbone": "swin", "state": state,
        "restarts": 1, "jobs": [{"job_id": job_id}], **extra}))
    if heartbeat_age_s is not None:
        beat = datetime.now(UTC) - timedelta(seconds=heartbeat_age_s)
        (folder / "progress.json").write_text(json.dumps({
            "step": 50, "total_steps": 200, "heartbeat": beat.isoformat(), "eta_s": 30,
            "latest": {"val_miou": 0.25}}))


def test_states_are_derived_from_folders_and_liveness(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")  # no scheduler to ask
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    try:
        _run(tmp_path, "a-running-local", "RUNNING", f"local-{alive.pid}", 5)
        _run(tmp_path, "b-dead-local", "RUNNING", f"local-{dead.pid}", 5)
        _run(tmp_path, "c-silent-slurm", "RUNNING", "1234", 3600)
        _run(tmp_path, "d-fresh-slurm", "RUNNING", "1235", 5)
        _run(tmp_path, "e-done", "COMPLETED", "1236", 9999)
        rows = {r["run_id"]: r for r in status_rows(tmp_path)}
    finally:
        alive.kill()
    assert rows["a-running-local"]["state"] == "RUNNING"
    assert rows["b-dead-local"]["state"] == "FAILED"
    assert rows["c-silent-slurm"]["state"] == "STALE"  # heartbeat old, nobody says it lives
    assert rows["d-fresh-slurm"]["state"] == "RUNNING"
    assert rows["e-done"]["state"] == "COMPLETED"
    a = rows["a-running-local"]
    assert (a["step"], a["total_steps"], a["progress"], a["latest_metric"], a["restarts"]) == (
        50, 200, 0.25, 0.25, 1)
    assert status_rows(tmp_path, state="stale")[0]["run_id"] == "c-silent-slurm"


def test_one_scheduler_query_whatever_the_number_of_runs(tmp_path, monkeypatch):
    calls = tmp_path / "calls"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("squeue", "sacct", "sbatch"):
        script = bin_dir / tool
        script.write_text(f"#!/bin/sh\necho {tool} >> {calls}\n")
        script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    for i in range(40):
        _run(tmp_path / "runs", f"r{i:02d}", "RUNNING", str(100 + i), 5)
    rows = status_rows(tmp_path / "runs")
    assert len(rows) == 40
    assert calls.read_text().split() == ["squeue", "sacct"]
