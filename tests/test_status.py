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


def _fake_tools(tmp_path: Path, monkeypatch, squeue: str, sacct: str, squeue_rc: int = 0,
                squeue_err: str = "") -> tuple[Path, Path]:
    """squeue/sacct/sbatch stand-ins on the PATH that log their calls and print fixed answers;
    returns (the call log, a runs root)."""
    bin_dir, calls = tmp_path / "bin", tmp_path / "calls"
    bin_dir.mkdir(exist_ok=True)
    answers = {"squeue": (squeue, squeue_rc, squeue_err), "sacct": (sacct, 0, ""),
               "sbatch": ("", 0, "")}
    for tool, (out, rc, err) in answers.items():
        script = bin_dir / tool
        script.write_text(f"#!/bin/sh\necho {tool} >> {calls}\nprintf '{out}'\n"
                          f"printf '{err}' >&2\nexit {rc}\n")
        script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return calls, tmp_path / "runs"


def test_squeue_witnesses_liveness_and_sacct_is_asked_once_per_ended_job(tmp_path, monkeypatch):
    calls, root = _fake_tools(tmp_path, monkeypatch, squeue="200|RUNNING\\n201|PENDING\\n",
                sacct="202|OUT_OF_MEMORY\\n203|CANCELLED by 0\\n")
    for i, state in enumerate(("RUNNING", "PENDING", "RUNNING", "REQUEUED", "RUNNING")):
        _run(root, f"r{i}", state, str(200 + i), 5)
    first = {r["run_id"]: r for r in status_rows(root)}
    assert [first[f"r{i}"]["state"] for i in range(5)] == [
        "RUNNING", "PENDING", "FAILED", "CANCELLED", "FAILED"]
    # r4's job: squeue no longer lists it and sacct does not know it: ended all the same.
    assert [first[f"r{i}"]["scheduler_state"] for i in (2, 3, 4)] == [
        "OUT_OF_MEMORY", "CANCELLED", "GONE"]
    assert calls.read_text().split() == ["squeue", "sacct"]
    cached = json.loads((root / ".cache" / "scheduler.json").read_text())
    assert {j: e["state"] for j, e in cached.items()} == {
        "202": "OUT_OF_MEMORY", "203": "CANCELLED", "204": "GONE"}

    calls.unlink()
    again = {r["run_id"]: r for r in status_rows(root)}
    assert calls.read_text().split() == ["squeue"]  # how they ended is remembered
    assert {k: r["state"] for k, r in again.items()} == {k: r["state"] for k, r in first.items()}

    # A run that moved on (resumed: a new job id) drops out of the cache at the next sacct call.
    _run(root, "r5", "RUNNING", "205", 5)
    st = json.loads((root / "r2" / "state.json").read_text())
    st["state"] = "COMPLETED"
    (root / "r2" / "state.json").write_text(json.dumps(st))
    status_rows(root)
    assert set(json.loads((root / ".cache" / "scheduler.json").read_text())) == {
        "203", "204", "205"}


def test_a_failing_squeue_proves_nothing_gone(tmp_path, monkeypatch):
    calls, root = _fake_tools(tmp_path, monkeypatch, squeue="", sacct="301|RUNNING\\n", squeue_rc=1,
                squeue_err="slurm_load_jobs error: Unable to contact slurm controller")
    _run(root, "a", "RUNNING", "300", 5)
    _run(root, "b", "RUNNING", "301", 5)
    rows = {r["run_id"]: r for r in status_rows(root)}
    assert (rows["a"]["state"], rows["a"]["scheduler_state"]) == ("RUNNING", None)
    assert (rows["b"]["state"], rows["b"]["scheduler_state"]) == ("RUNNING", "RUNNING")
    assert not (root / ".cache").exists()  # nothing learnt, nothing remembered


def test_one_unknown_job_id_is_an_answer_not_an_error(tmp_path, monkeypatch):
    # squeue -j with a single unknown id exits 1 with this message (Slurm 22.05).
    calls, root = _fake_tools(tmp_path, monkeypatch, squeue="", sacct="", squeue_rc=1,
                squeue_err="slurm_load_jobs error: Invalid job id specified")
    _run(root, "a", "RUNNING", "400", 5)
    assert status_rows(root)[0]["state"] == "FAILED"


def test_status_says_why_a_run_failed(tmp_path):
    from hcli.runs import create_run
    from hcli.spec import load_spec
    from tests.conftest import run_cli

    root = tmp_path / "runs"
    spec = load_spec(None, kind="multiclass")
    why = ("DataError: /data/artefact/manifest.json not found; prepare the data first: "
           "hcli data prepare --source DIR --out /data/artefact")
    failed = create_run(root, "multiclass-convnext-failed00", spec, snapshot=False)
    failed.add_job("1234", "slurm")
    failed.update_state(state="FAILED", message=why + "\n  (second line of the message)")
    done = create_run(root, "multiclass-convnext-done0000", spec, snapshot=False)
    done.update_state(state="COMPLETED", message="not a reason: completed runs show none")
    env = {"PATH": "/nonexistent"}

    piped = run_cli(["status", "--runs-dir", str(root)], env=env).stdout.splitlines()
    assert piped[1].split()[-1] == "reason"
    row = next(line for line in piped if line.startswith(failed.run_id))
    # Not a terminal and no COLUMNS: the whole reason, on the run's one line.
    assert row.endswith(why + " (second line of the message)")
    assert "not a reason" not in "\n".join(piped)

    narrow = run_cli(["status", "--runs-dir", str(root)], env={**env, "COLUMNS": "150"})
    row = next(line for line in narrow.stdout.splitlines() if line.startswith(failed.run_id))
    assert len(row) == 150 and row.endswith("…") and "DataError: /data" in row
    # Narrower than the table itself: the reason keeps a readable start, the line wraps.
    narrower = run_cli(["status", "--runs-dir", str(root)], env={**env, "COLUMNS": "60"})
    row = next(line for line in narrower.stdout.splitlines() if line.startswith(failed.run_id))
    assert row.endswith("  DataError: /data/artefa…")  # 24 characters at least

    rows = json.loads(run_cli(["status", "--json", "--runs-dir", str(root)], env=env).stdout)
    by_id = {r["run_id"]: r for r in rows}
    assert by_id[failed.run_id]["reason"] == why + " (second line of the message)"
    assert by_id[failed.run_id]["message"].startswith(why)  # as the job wrote it
    assert by_id[done.run_id]["reason"] is None


def test_a_run_that_died_unrecorded_gets_a_reason(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    _run(tmp_path, "gone", "RUNNING", f"local-{dead.pid}", 5)
    _run(tmp_path, "silent", "RUNNING", "1234", 3600)
    rows = {r["run_id"]: r for r in status_rows(tmp_path)}
    assert rows["gone"]["state"] == "FAILED" and rows["gone"]["message"] is None
    assert f"job local-{dead.pid} is gone" in rows["gone"]["reason"]
    assert "hcli logs gone --err" in rows["gone"]["reason"]
    assert rows["silent"]["state"] == "STALE"
    assert "no heartbeat for 60 min" in rows["silent"]["reason"]


def test_status_shows_a_curriculum_runs_stage(tmp_path, monkeypatch):
    """What the job writes (Curriculum.progress through the contract) is what status prints."""
    from hcli import contract_keys
    from hcli.cli._status_view import format_table
    from hcli.contract import CurriculumProgress, Progress, dump
    from hcli.spec import load_spec
    from jobs.curriculum import Curriculum

    assert list(contract_keys.CURRICULUM_KEYS) == list(CurriculumProgress.model_fields)
    monkeypatch.setenv("PATH", "/nonexistent")
    spec = load_spec(None, overrides=["model.hierarchical=true", "train.steps=9",
                                      "train.warmup_steps=1",
                                      "train.curriculum=[binary,coarse,fine]"])
    cur = Curriculum.from_spec(spec.train)
    assert cur is not None
    cur.advance(4)
    for name, state in (("cur-running", "RUNNING"), ("cur-done", "COMPLETED"),
                        ("plain", "RUNNING")):
        _run(tmp_path, name, state, "foreground", 5)
        if name != "plain":
            path = tmp_path / name / "progress.json"
            progress = Progress.model_validate({**json.loads(path.read_text()),
                                                "curriculum": cur.progress()})
            path.write_text(json.dumps(dump(progress)))
    rows = {r["run_id"]: r for r in status_rows(tmp_path)}
    assert rows["cur-running"]["stage"] == "coarse 2/3" and rows["plain"]["stage"] is None
    table = format_table(list(rows.values()), tmp_path, color=False).splitlines()
    line = {row.split()[0]: row for row in table[2:]}
    assert "50/200 (25%) coarse 2/3" in line["cur-running"]
    assert "coarse" not in line["cur-done"] and "coarse" not in line["plain"]
