"""Cluster execution end to end against the real local SLURM (slurm_templates/local).

Every test submits tiny multiclass runs with `hcli submit --cluster` (1 CPU, 2 GB each) and drives
them the way a scheduler or a user would: USR2 before the time limit, SIGKILL, `hcli cancel`,
`hcli resume`, arrays, afterok chains and a two-task gloo job. Interrupted runs must end with the
same weights and test metrics as one uninterrupted local run of the same spec (`reference`).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from tests.conftest import HCLI, REPO, run_cli, tiny_overrides
from tests.slurm_cluster import SlurmCluster, make_eligible, slurm_env, wait_for_state  # noqa: F401

pytestmark = pytest.mark.slurm

# Small jobs: the cluster has two cores and oversubscribes them; time_min leaves room for the
# 30 s warning, and nothing here runs longer than a minute.
SLURM = ("slurm.cpus_per_task=1", "slurm.mem_gb=2", "slurm.time_min=5", "slurm.signal_delay_s=30")
# Long enough (a few seconds of steps) to be interrupted mid-training; shared by every test that
# compares against the uninterrupted local run.
LONG = ("train.steps=160", "train.val_every_steps=80", "train.checkpoint_every_steps=20",
        *SLURM)
LONG_STEPS = 160


# -- helpers ---------------------------------------------------------------------------------


def _wait(condition: Callable[[], Any], timeout: float, what: str, every: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f}s waiting for {what}"
        time.sleep(every)


def _submit(runs: Path, data: Path, *extra: str, args: tuple[str, ...] = ()) -> list[dict]:
    done = run_cli(["submit", "multiclass", "--cluster", "--json", "--runs-dir", str(runs),
                    *args, *tiny_overrides(data, *extra)])
    return json.loads(done.stdout)


def _submit_one(runs: Path, data: Path, *extra: str, args: tuple[str, ...] = ()
                ) -> tuple[Path, str]:
    (out,) = _submit(runs, data, *extra, args=args)
    assert out["action"] == "submitted", out
    return Path(out["run_dir"]), out["job_id"]


def _state(run: Path) -> dict[str, Any]:
    return json.loads((run / "state.json").read_text())


def _records(run: Path) -> list[dict[str, Any]]:
    path = run / "metrics.jsonl"
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:  # a line being appended right now
            break
    return out


def _train_steps(run: Path) -> list[int]:
    return [r["step"] for r in _records(run) if r.get("split") == "train"]


def _trained_past(run: Path, step: int) -> bool:
    return any(s >= step for s in _train_steps(run))


def _trained_after_resume(run: Path, resumes: int) -> bool:
    """The run resumed `resumes` times so far and has logged a train step since the last."""
    records = _records(run)
    at = [i for i, r in enumerate(records) if r.get("event") == "resumed"]
    since = records[at[-1]:] if at else records
    return len(at) == resumes and any(r.get("split") == "train" for r in since)


def _has_checkpoint(run: Path) -> bool:
    return any((run / "checkpoints").glob("step-*.pt.done"))


def _status(runs: Path) -> dict[str, dict[str, Any]]:
    rows = json.loads(run_cli(["status", "--json", "--runs-dir", str(runs)]).stdout)
    return {r["run_id"]: r for r in rows}


def _squeue(cluster: SlurmCluster, *args: str) -> list[list[str]]:
    proc = cluster.run("squeue", "-h", *args)
    return [line.split() for line in proc.stdout.splitlines() if line.strip()]


def _sacct_rows(cluster: SlurmCluster, job: str, fmt: str, want: int, *extra: str
                ) -> list[list[str]]:
    # slurmdbd records starts and ends asynchronously: poll until every field is filled in.
    def rows() -> list[list[str]] | None:
        out = cluster.run("sacct", "-n", "-X", "-P", "-j", job, "-o", fmt, *extra).stdout
        got = [line.split("|") for line in out.splitlines() if line.strip()]
        ok = len(got) >= want and all(f and f != "Unknown" for r in got for f in r)
        return got if ok else None

    return _wait(rows, 30, f"sacct {fmt} of job {job}", every=0.5)


def _final_model(run: Path) -> dict[str, torch.Tensor]:
    path = run / "checkpoints" / f"step-{LONG_STEPS:08d}.pt"
    return torch.load(path, weights_only=True)["model"]


def _assert_same_training(run: Path, reference: Path) -> None:
    """Bitwise-equal final parameters and equal test metrics (the same spec, same identity)."""
    assert run.name == reference.name
    ours, theirs = _final_model(run), _final_model(reference)
    assert ours.keys() == theirs.keys()
    for key in ours:
        assert torch.equal(ours[key], theirs[key]), key
    a = json.loads((run / "results.json").read_text())
    b = json.loads((reference / "results.json").read_text())
    for key in ("miou", "per_class_iou", "binary_miou", "confusion", "step", "final_step"):
        assert a[key] == b[key], key


class _Reference:
    """The uninterrupted local run of LONG, trained in the background while tests proceed."""

    def __init__(self, runs: Path, data: Path) -> None:
        self.runs = runs
        self.proc = subprocess.Popen(
            [*HCLI, "submit", "multiclass", "--foreground", "--runs-dir", str(runs),
             *tiny_overrides(data, *LONG)],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={k: v for k, v in os.environ.items() if not k.startswith("SLURM_JOB")},
        )

    def run_dir(self) -> Path:
        out, err = self.proc.communicate(timeout=300)
        assert self.proc.returncode == 0, err[-3000:]
        (run,) = [p for p in self.runs.iterdir() if not p.name.startswith(".")]
        assert _state(run)["state"] == "COMPLETED"
        return run


@pytest.fixture(scope="module")
def reference(synth_data: Path, tmp_path_factory: pytest.TempPathFactory,
              slurm_env: SlurmCluster) -> Iterator[_Reference]:  # noqa: F811
    ref = _Reference(tmp_path_factory.mktemp("reference") / "runs", synth_data)
    yield ref
    if ref.proc.poll() is None:
        ref.proc.kill()
        ref.proc.communicate()


# -- tests -----------------------------------------------------------------------------------


def test_submit_once_status_matches_squeue_completes_and_logs(
    slurm_env: SlurmCluster, synth_data: Path, tmp_path: Path, reference: _Reference  # noqa: F811
) -> None:
    runs = tmp_path / "runs"
    # Two users (or a retried script) submit the same spec at once: one job.
    cmd = [*HCLI, "submit", "multiclass", "--cluster", "--json", "--runs-dir", str(runs),
           *tiny_overrides(synth_data, *LONG)]
    procs = [subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    outs = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=120)
        assert p.returncode == 0, stderr
        outs += json.loads(stdout)
    assert sorted(o["action"] for o in outs) == ["exists", "submitted"], outs
    assert outs[0]["job_id"] == outs[1]["job_id"] and outs[0]["run_dir"] == outs[1]["run_dir"]
    job, run = outs[0]["job_id"], Path(outs[0]["run_dir"])
    assert [r[0] for r in _squeue(slurm_env, "-n", run.name, "-o", "%i")] == [job]

    # During the run, `hcli status --json` and squeue agree on the state and the job id.
    _wait(lambda: _status(runs)[run.name]["state"] == "RUNNING", 120, "status RUNNING")
    assert _squeue(slurm_env, "-j", job, "-o", "%i %T") == [[job, "RUNNING"]]
    row = _status(runs)[run.name]
    assert (row["job_id"], row["scheduler_state"]) == (job, "RUNNING")

    wait_for_state(job, {"COMPLETED"}, timeout=180)
    state = _state(run)
    assert state["state"] == "COMPLETED" and state["restarts"] == 0
    assert [j["job_id"] for j in state["jobs"]] == [job]
    row = _status(runs)[run.name]
    assert (row["state"], row["step"], row["restarts"]) == ("COMPLETED", LONG_STEPS, 0)
    results = json.loads((run / "results.json").read_text())
    assert results["final_step"] == LONG_STEPS and len(results["per_class_iou"]) == 16

    out = run_cli(["logs", run.name, "--runs-dir", str(runs)]).stdout
    assert f"JobEnvironment(job_id={job}," in out and "test mIoU" in out
    err = run_cli(["logs", run.name, "--err", "--runs-dir", str(runs)]).stdout
    assert f"{LONG_STEPS}/{LONG_STEPS}" in err  # the progress bar went to stderr
    _assert_same_training(run, reference.run_dir())  # cluster and local train alike


def test_usr2_twice_requeues_twice_and_matches_uninterrupted_run(
    slurm_env: SlurmCluster, synth_data: Path, tmp_path: Path, reference: _Reference  # noqa: F811
) -> None:
    runs = tmp_path / "runs"
    run, job = _submit_one(runs, synth_data, *LONG)
    for n in (1, 2):
        # The second signal must reach the restarted attempt while it trains.
        _wait(lambda n=n: _trained_after_resume(run, n - 1), 120, f"training in attempt {n}")
        # USR2 is what SLURM sends signal_delay_s before the time limit.
        assert slurm_env.run("scancel", "-s", "USR2", job).returncode == 0
        make_eligible(job)  # skip SLURM's ~120 s hold of a requeued job
    wait_for_state(job, {"COMPLETED"}, timeout=180)

    state = _state(run)
    assert state["state"] == "COMPLETED" and state["restarts"] == 2
    assert [(r["reason"], r["job_id"]) for r in state["requeues"]] == [("SIGUSR2", job)] * 2
    first, second = (r["step"] for r in state["requeues"])
    assert 0 < first < second < LONG_STEPS
    assert [j["job_id"] for j in state["jobs"]] == [job]  # a requeued job keeps its id
    assert len(state["jobs"][0]["starts"]) == 3
    resumed = [r["checkpoint"] for r in _records(run) if r.get("event") == "resumed"]
    # Each attempt continued from the checkpoint the stop saved, not an older periodic one.
    assert resumed == [f"step-{first:08d}.pt", f"step-{second:08d}.pt"]
    # The compute of all three executions is in the results, and the curve marks both requeues.
    compute = json.loads((run / "results.json").read_text())["compute"]
    executions = compute["attempts"]
    assert len(executions) == 3 and compute["restarts"] == 2
    assert all(e["job_id"] == job and e["end"] and e["wall_s"] > 0 for e in executions)
    assert compute["wall_s"] == pytest.approx(sum(e["wall_s"] for e in executions), abs=0.5)
    assert compute["node_hours"] == pytest.approx(compute["wall_s"] / 3600, rel=0.01)
    from hcli.report.load import load_run

    assert load_run(run).requeue_steps == [first, second]
    _assert_same_training(run, reference.run_dir())


def test_sigkill_fails_and_resume_on_cluster_completes(
    slurm_env: SlurmCluster, synth_data: Path, tmp_path: Path, reference: _Reference  # noqa: F811
) -> None:
    runs = tmp_path / "runs"
    run, job = _submit_one(runs, synth_data, *LONG)
    _wait(lambda: _has_checkpoint(run) and _trained_past(run, 24), 120, "a periodic checkpoint")
    # The job's python process dies without a chance to save, as under the OOM killer.
    os.kill(_state(run)["pid"], signal.SIGKILL)
    wait_for_state(job, {"FAILED"}, timeout=60)
    assert _state(run)["state"] == "RUNNING"  # the job never knew ...
    assert _status(runs)[run.name]["state"] == "FAILED"  # ... the scheduler witness tells

    out = run_cli(["resume", run.name, "--cluster", "--runs-dir", str(runs)]).stdout
    state = _state(run)
    new_job = state["jobs"][-1]["job_id"]
    assert new_job != job and state["jobs"][-1].get("resumed") is True
    assert f"resumed as job {new_job}" in out
    wait_for_state(new_job, {"COMPLETED"}, timeout=180)
    state = _state(run)
    assert state["state"] == "COMPLETED" and state["restarts"] == 1
    assert [j["job_id"] for j in state["jobs"]] == [job, new_job]
    _assert_same_training(run, reference.run_dir())


def test_cancel_keeps_checkpoints_and_resume_continues(
    slurm_env: SlurmCluster, synth_data: Path, tmp_path: Path, reference: _Reference  # noqa: F811
) -> None:
    runs = tmp_path / "runs"
    run, job = _submit_one(runs, synth_data, *LONG)
    _wait(lambda: _has_checkpoint(run) and _trained_past(run, 24), 120, "a periodic checkpoint")
    out = run_cli(["cancel", run.name, "--runs-dir", str(runs)]).stdout
    assert f"cancelled (job {job})" in out
    assert _state(run)["state"] == "CANCELLED"
    _wait(lambda: not _squeue(slurm_env, "-j", job, "-o", "%i"), 60, "squeue to drop the job")
    state = _state(run)
    assert state["state"] == "CANCELLED" and f"hcli resume {run.name}" in state["message"]
    stopped = [r for r in _records(run) if r.get("event") == "stopped"]
    assert [r["reason"] for r in stopped] == ["SIGTERM"]  # scancel's signal: saved, then ended
    kept = sorted((run / "checkpoints").glob("step-*.pt.done"))
    assert kept and kept[-1].name == f"step-{stopped[0]['step']:08d}.pt.done"
    assert _status(runs)[run.name]["state"] == "CANCELLED"

    run_cli(["resume", run.name, "--cluster", "--runs-dir", str(runs)])
    new_job = _state(run)["jobs"][-1]["job_id"]
    assert new_job != job
    wait_for_state(new_job, {"COMPLETED"}, timeout=180)
    state = _state(run)
    assert state["state"] == "COMPLETED" and state["restarts"] == 1
    resumed = [r["checkpoint"] for r in _records(run) if r.get("event") == "resumed"]
    assert resumed == [f"step-{stopped[0]['step']:08d}.pt"]
    _assert_same_training(run, reference.run_dir())


def test_plain_scancel_saves_and_is_not_requeued(
    slurm_env: SlurmCluster, synth_data: Path, tmp_path: Path  # noqa: F811
) -> None:
    # scancel's SIGTERM looks like a preemption warning, but the user wants the job gone:
    # `scontrol requeue` would bring back a job SLURM already marked COMPLETING.
    runs = tmp_path / "runs"
    run, job = _submit_one(runs, synth_data, *LONG)
    _wait(lambda: _trained_past(run, 4), 120, "the first train lines")
    assert slurm_env.run("scancel", job).returncode == 0
    _wait(lambda: _state(run)["state"] == "CANCELLED", 60, "the job to record its stop")
    _wait(lambda: not _squeue(slurm_env, "-j", job, "-o", "%i"), 60, "squeue to drop the job")
    time.sleep(3)  # a requeue, had there been one, shows up within a second or two
    assert not _squeue(slurm_env, "-j", job, "-o", "%i")
    # -D: every record of the job, so a requeued attempt would show as a REQUEUED row.
    rows = _sacct_rows(slurm_env, job, "State", 1, "-D")
    assert [r[0].split()[0] for r in rows] == ["CANCELLED"]  # "CANCELLED by 0"
    state = _state(run)
    assert state["requeues"] == [] and "scancel" in state["message"]
    stopped = [r for r in _records(run) if r.get("event") == "stopped"]
    assert len(stopped) == 1 and (run / "checkpoints" / f"step-{stopped[0]['step']:08d}.pt.done"
                                  ).is_file()


def test_sweep_is_one_array_capped_at_two_and_not_resubmitted(
    slurm_env: SlurmCluster, synth_data: Path, tmp_path: Path  # noqa: F811
) -> None:
    runs = tmp_path / "runs"
    sweep = ("seed=0,1,2", *SLURM)
    outs = _submit(runs, synth_data, *sweep, args=("--max-parallel", "2"))
    assert [o["action"] for o in outs] == ["submitted"] * 3
    master = outs[0]["job_id"].split("_")[0]
    assert sorted(o["job_id"] for o in outs) == [f"{master}_{i}" for i in range(3)]
    dirs = {Path(o["run_dir"]) for o in outs}
    assert len(dirs) == 3 and all((d / "state.json").is_file() for d in dirs)
    assert sorted(_state(d)["jobs"][0]["job_id"] for d in dirs) == sorted(o["job_id"] for o in outs)

    wait_for_state(master, {"COMPLETED"}, timeout=240)
    for d in dirs:
        assert _state(d)["state"] == "COMPLETED" and (d / "results.json").is_file()
    seeds = sorted(yaml.safe_load((d / "spec.yaml").read_text())["seed"] for d in dirs)
    assert seeds == [0, 1, 2]

    events: list[tuple[datetime, int]] = []
    for _, start, end in _sacct_rows(slurm_env, master, "JobID,Start,End", 3):
        events += [(datetime.fromisoformat(start), 1), (datetime.fromisoformat(end), -1)]
    running, peak = 0, 0
    for _, delta in sorted(events):  # an end and a start in the same second: ends first
        running += delta
        peak = max(peak, running)
    assert peak <= 2

    again = _submit(runs, synth_data, *sweep, args=("--max-parallel", "2"))
    assert [(o["action"], o["job_id"]) for o in again] == [("exists", o["job_id"]) for o in outs]
    assert len(list((runs / ".arrays").iterdir())) == 1  # no second array was submitted


def test_after_chain_waits_for_the_first_run(
    slurm_env: SlurmCluster, synth_data: Path, tmp_path: Path  # noqa: F811
) -> None:
    runs = tmp_path / "runs"
    first, first_job = _submit_one(runs, synth_data, "train.steps=60", *SLURM)
    second, second_job = _submit_one(runs, synth_data, "seed=7", *SLURM,
                                     args=("--after", first.name))
    shown = slurm_env.run("scontrol", "show", "job", "-o", second_job).stdout
    fields = dict(f.split("=", 1) for f in shown.split() if "=" in f)
    assert fields["Dependency"].startswith(f"afterok:{first_job}"), shown
    wait_for_state(second_job, {"COMPLETED"}, timeout=240)
    assert _state(first)["state"] == _state(second)["state"] == "COMPLETED"
    ((_, first_end),) = _sacct_rows(slurm_env, first_job, "Start,End", 1)
    ((second_start, _),) = _sacct_rows(slurm_env, second_job, "Start,End", 1)
    assert datetime.fromisoformat(second_start) >= datetime.fromisoformat(first_end)


def test_two_task_gloo_run_requeues_and_completes(
    slurm_env: SlurmCluster, synth_data: Path, tmp_path: Path  # noqa: F811
) -> None:
    runs = tmp_path / "runs"
    # Two micro-batches per step: DDP's no_sync on the first, one all-reduce on the second.
    run, job = _submit_one(runs, synth_data, "slurm.tasks_per_node=2", "train.steps=60",
                           "train.val_every_steps=20", "train.checkpoint_every_steps=10",
                           "train.accum_steps=2", *SLURM)
    _wait(lambda: _trained_past(run, 4), 180, "the first train lines")
    # Both ranks get the signal; they agree on one step to stop at (all-reduce), rank 0 saves.
    assert slurm_env.run("scancel", "-s", "USR2", job).returncode == 0
    make_eligible(job)
    wait_for_state(job, {"COMPLETED"}, timeout=240)

    state = _state(run)
    assert state["state"] == "COMPLETED" and state["restarts"] == 1
    assert len(state["requeues"]) == 1
    results = json.loads((run / "results.json").read_text())
    assert results["compute"]["world_size"] == 2 and results["final_step"] == 60
    # Only rank 0 logs: one line per logged step (two writers would repeat each step).
    steps = _train_steps(run)
    assert steps == sorted(set(steps)) and steps[-1] == 60
    vals = [r["step"] for r in _records(run) if r.get("split") == "val"]
    assert vals == [20, 40, 60]  # validation on rank 0 while rank 1 waits did not deadlock
    rank0, rank1 = ((run / "logs" / f"{job}_{r}_log.out").read_text() for r in (0, 1))
    assert "global_rank=1(2)" in rank1
    assert "test mIoU" in rank0 and "test mIoU" not in rank1
    # Both ranks stopped at one step: the restarted ranks resumed from the same checkpoint.
    stop = state["requeues"][0]["step"]
    line = f"step-{stop:08d}.pt at step {stop}"
    assert line in rank0 and line in rank1


def test_usr2_to_one_array_task_requeues_only_that_task(
    slurm_env: SlurmCluster, synth_data: Path, tmp_path: Path  # noqa: F811
) -> None:
    runs = tmp_path / "runs"
    outs = _submit(runs, synth_data, "seed=0,1", *LONG)
    (task0, job0), (task1, job1) = ((Path(o["run_dir"]), o["job_id"]) for o in outs)
    _wait(lambda: _trained_past(task0, 4) and _trained_past(task1, 4), 120, "both tasks training")
    assert slurm_env.run("scancel", "-s", "USR2", job0).returncode == 0  # `ARRAY_0` only
    make_eligible(job0)
    wait_for_state(job0, {"COMPLETED"}, timeout=180)
    wait_for_state(job1, {"COMPLETED"}, timeout=180)
    interrupted, untouched = _state(task0), _state(task1)
    assert interrupted["restarts"] == 1 and len(interrupted["requeues"]) == 1
    assert interrupted["requeues"][0]["job_id"] == job0
    assert untouched["restarts"] == 0 and untouched["requeues"] == []
    assert len(untouched["jobs"][0]["starts"]) == 1  # the other task ran once, uninterrupted
