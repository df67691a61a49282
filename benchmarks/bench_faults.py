"""Fault injection on the local SLURM: interrupted runs must finish with nothing damaged or changed.

N short multiclass trainings (the tiny spec of tests/conftest.py, 160 steps, a checkpoint every
20) are submitted with `hcli submit --cluster` and interrupted at random steps, two faults per
run, cycling through:

- USR2    `scancel -s USR2 JOB`, SLURM's warning before the time limit: the job saves at the
          next step boundary and requeues itself;
- TERM    `scancel -s TERM JOB`, as a preemption warning: the same, without a time-out counted;
- KILL    SIGKILL of the job step's python process (as the OOM killer would): the job FAILS and
          `hcli resume RUN --cluster` submits a new job from the newest complete checkpoint;
- KILL-W  the same, fired the moment a checkpoint's temp file appears, i.e. during its write.

A requeued job is made eligible at once (SLURM otherwise holds it ~120 s). Reported per fault:
steps lost (the last train step logged before the fault minus the step the next attempt resumed
from; stop signals save first, so they lose none); after every fault and at the end, every
checkpoint on disk is checked with `CheckpointManager.verify`; at the end, the final weights and
test metrics are compared bitwise with one uninterrupted local run of the same spec (the
baseline, whose wall time the interrupted runs' is also set against).
Goal: all runs complete, no damaged checkpoint, equal weights, losses within the
checkpoint interval (KILL-W: the interrupted write's interval too).

    .venv/bin/python benchmarks/bench_faults.py [--n 4] [--faults 2] [--seed 0] [--keep DIR]

Measured 2026-11-24 on the 2-core VM (seeds 0 and 1, 8 faults each): 4/4 runs completed, 4/4
with bitwise-equal weights and metrics, 0 damaged checkpoints; steps lost USR2/TERM 0, KILL 3-14
(interval 20), KILL-W 20 (the cut write's interval; 4/4 kills landed inside a write); ~22 s per
interrupted cluster run against 8 s for the uninterrupted local run (ratio 2.9). Without a
local SLURM (none installed, or it cannot start) the script prints SKIPPED and exits 0.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from jobs.checkpoint import CheckpointManager  # noqa: E402
from tests.conftest import TINY  # noqa: E402
from tests.slurm_cluster import (  # noqa: E402
    DEFAULT_STATE_DIR,
    _find_or_start,
    make_eligible,
    wait_for_state,
)

STEPS, EVERY, LOG_EVERY = 160, 20, 1
SPEC = (*TINY, f"train.steps={STEPS}", f"train.checkpoint_every_steps={EVERY}",
        f"train.log_every_steps={LOG_EVERY}", "train.val_every_steps=80",
        "slurm.cpus_per_task=1", "slurm.mem_gb=2", "slurm.time_min=5", "slurm.signal_delay_s=30")
KINDS = ("USR2", "TERM", "KILL", "KILL-W")


def hcli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, "-m", "hcli", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=600, check=False)
    if check and done.returncode:
        raise RuntimeError(f"hcli {' '.join(args)} exited {done.returncode}: {done.stderr}")
    return done


def overrides(data: Path) -> list[str]:
    out: list[str] = []
    for item in (*SPEC, f"data.root={data}"):
        out += ["-o", item]
    return out


def records(run: Path) -> list[dict[str, Any]]:
    out = []
    path = run / "metrics.jsonl"
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            out.append(json.loads(line))
        except ValueError:  # being appended
            break
    return out


def attempt_records(run: Path) -> tuple[int, list[dict[str, Any]]]:
    """(resumes so far, the records of the current attempt)."""
    recs = records(run)
    at = [i for i, r in enumerate(recs) if r.get("event") == "resumed"]
    return len(at), recs[at[-1]:] if at else recs


def last_train_step(run: Path) -> int:
    """The newest step the current attempt logged (an earlier attempt's lines beyond the step it
    resumed from belong to an abandoned timeline and would count as lost steps)."""
    _, recs = attempt_records(run)
    return max([r["step"] for r in recs if r.get("split") == "train"], default=0)


def damaged(run: Path) -> list[str]:
    """Checkpoints on disk that their marker does not vouch for (temp files are not counted:
    an interrupted write leaves one, and the next save removes it)."""
    bad = []
    for path in sorted((run / "checkpoints").glob("step-*.pt")):
        reason = CheckpointManager.verify(path)
        if reason:
            bad.append(f"{path.name}: {reason}")
    return bad


def wait(cond: Any, timeout: float, what: str, every: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := cond()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} after {timeout:.0f}s")
        time.sleep(every)
    return value


@dataclass
class Fault:
    kind: str
    at_step: int = 0  # last train step logged before the fault
    resumed_from: int = 0
    in_write: bool | None = None  # KILL-W: the temp file was still there after the kill
    damaged: list[str] = field(default_factory=list)

    @property
    def lost(self) -> int:
        return max(0, self.at_step - self.resumed_from)


@dataclass
class Result:
    run: Path
    faults: list[Fault]
    completed: bool = False
    equal: bool = False
    damaged_end: list[str] = field(default_factory=list)
    restarts: int = 0
    wall_s: float = 0.0
    error: str | None = None


def train_until(run: Path, resumes: int, step: int) -> None:
    def there() -> bool:
        n, recs = attempt_records(run)
        trained = any(r.get("split") == "train" and r["step"] >= step for r in recs)
        return n == resumes and trained and any((run / "checkpoints").glob("step-*.pt.done"))

    wait(there, 240, f"{run.name}: step {step} of attempt {resumes + 1}", every=0.02)


def kill_during_write(run: Path, pid: int, timeout: float = 60) -> bool:
    """SIGKILL `pid` as soon as a checkpoint temp file exists; True when the write was cut."""
    ckpt = run / "checkpoints"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        # A bare listdir loop (no sleep): a tiny model's write lasts a few milliseconds.
        tmps = [n for n in os.listdir(ckpt) if n.endswith(".tmp")]
        if tmps:
            os.kill(pid, signal.SIGKILL)
            return (ckpt / tmps[0]).exists()
    os.kill(pid, signal.SIGKILL)
    return False


def inject(run: Path, job: str, fault: Fault, runs: Path, rng: random.Random) -> str:
    """Fire one fault at a random step of the current attempt; return the job now running it."""
    resumes, recs = attempt_records(run)
    start = recs[0]["step"] if resumes else 0
    # Past the first periodic checkpoint, so that every fault has one to resume from.
    lo = max(start + 3, EVERY + 2)
    target = rng.randint(lo, max(lo, min(start + 45, STEPS - 30)))
    train_until(run, resumes, target)
    state = json.loads((run / "state.json").read_text())
    if fault.kind in ("USR2", "TERM"):
        subprocess.run(["scancel", "-s", fault.kind, job], check=True)
        make_eligible(job)  # returns once the stopped attempt has ended (job PENDING)
    else:
        if fault.kind == "KILL":
            os.kill(state["pid"], signal.SIGKILL)
        else:
            fault.in_write = kill_during_write(run, state["pid"])
        wait_for_state(job, {"FAILED"}, timeout=60)
    fault.at_step = last_train_step(run)
    fault.damaged = damaged(run)
    if fault.kind.startswith("KILL"):
        hcli("resume", run.name, "--cluster", "--runs-dir", str(runs))
        job = json.loads((run / "state.json").read_text())["jobs"][-1]["job_id"]

    def resumed() -> int | None:
        n, recs = attempt_records(run)
        return recs[0]["step"] if n == resumes + 1 else None

    fault.resumed_from = wait(lambda: resumed(), 240, f"{run.name}: resume {resumes + 1}")
    return job


def final_model(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoints" / f"step-{STEPS:08d}.pt", weights_only=True)["model"]


def same_training(run: Path, ref: Path) -> bool:
    ours, theirs = final_model(run), final_model(ref)
    if ours.keys() != theirs.keys() or not all(torch.equal(ours[k], theirs[k]) for k in ours):
        return False
    a, b = (json.loads((r / "results.json").read_text()) for r in (run, ref))
    return all(a[k] == b[k] for k in ("miou", "per_class_iou", "confusion"))


def one_run(i: int, base: Path, data: Path, ref: Path, kinds: list[str],
            rng: random.Random) -> Result:
    runs = base / f"run{i}"
    t0 = time.perf_counter()
    (out,) = json.loads(hcli("submit", "multiclass", "--cluster", "--json", "--runs-dir",
                             str(runs), *overrides(data)).stdout)
    run, job = Path(out["run_dir"]), out["job_id"]
    result = Result(run, [Fault(k) for k in kinds])
    try:
        for fault in result.faults:
            job = inject(run, job, fault, runs, rng)
        wait_for_state(job, {"COMPLETED"}, timeout=300)
        state = json.loads((run / "state.json").read_text())
        result.completed = state["state"] == "COMPLETED"
        result.restarts = state.get("restarts", 0)
        result.wall_s = time.perf_counter() - t0
        result.damaged_end = damaged(run)
        result.damaged_end += [f"{p.name}: temp file left behind"
                               for p in (run / "checkpoints").glob(".step-*.tmp")]
        result.equal = result.completed and same_training(run, ref)
    except (AssertionError, TimeoutError, RuntimeError, OSError, KeyError) as exc:
        result.error = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
    return result


def cluster_env() -> str | None:
    """Export the local cluster's environment (starting it if needed); None, or why not."""
    env, why = _find_or_start(Path(os.environ.get("HCLI_SLURM_STATE", str(DEFAULT_STATE_DIR))))
    if env is None:
        return why
    os.environ.update(env)
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=4, help="number of interrupted runs")
    ap.add_argument("--faults", type=int, default=2, help="faults per run")
    ap.add_argument("--seed", type=int, default=0, help="seed of the fault moments")
    ap.add_argument("--keep", type=Path, default=None, help="keep the runs in this folder")
    args = ap.parse_args()

    why = cluster_env()
    if why:
        print(f"bench_faults: SKIPPED, no local SLURM: {why}")
        return
    base = args.keep or Path(tempfile.mkdtemp(prefix="bench-faults-"))
    base.mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.seed)
    try:
        hcli("data", "synth", "--out", str(base / "raw"), "--n", "36", "--seed", "1",
             "--size", "96")
        hcli("data", "prepare", "--source", str(base / "raw"), "--out", str(base / "data"))
        data = base / "data"
        t0 = time.perf_counter()
        hcli("submit", "multiclass", "--foreground", "--runs-dir", str(base / "reference"),
             *overrides(data))
        baseline_s = time.perf_counter() - t0
        (ref,) = [p for p in (base / "reference").iterdir() if not p.name.startswith(".")]

        # Every kind equally often, in a random order across runs (so faults meet in any pair).
        plan = [KINDS[j % len(KINDS)] for j in range(args.n * args.faults)]
        rng.shuffle(plan)
        results = []
        for i in range(args.n):
            kinds = plan[i * args.faults:(i + 1) * args.faults]
            results.append(one_run(i, base, data, ref, kinds, rng))
            report_run(i, results[-1])
        summary(results, baseline_s)
    finally:
        if args.keep is None:
            shutil.rmtree(base, ignore_errors=True)


def report_run(i: int, r: Result) -> None:
    faults = ", ".join(
        f"{f.kind}@{f.at_step}->{f.resumed_from} lost {f.lost}"
        + (f" (in write: {'yes' if f.in_write else 'no'})" if f.in_write is not None else "")
        + (f" DAMAGED {f.damaged}" if f.damaged else "")
        for f in r.faults)
    status = "COMPLETED" if r.completed else f"NOT COMPLETED ({r.error})"
    print(f"run {i}: {status}, restarts {r.restarts}, {r.wall_s:.0f} s, equal weights "
          f"{'yes' if r.equal else 'NO'}; {faults}", flush=True)


def summary(results: list[Result], baseline_s: float) -> None:
    faults = [f for r in results for f in r.faults]
    n_damaged = sum(len(f.damaged) for f in faults) + sum(len(r.damaged_end) for r in results)
    completed = sum(r.completed for r in results)
    equal = sum(r.equal for r in results)
    print(f"\nruns completed: {completed}/{len(results)}; equal final weights and test metrics "
          f"to the uninterrupted run: {equal}/{len(results)}; damaged checkpoints found: "
          f"{n_damaged}")
    for kind in KINDS:
        lost = [f.lost for f in faults if f.kind == kind]
        if lost:
            bound = 2 * EVERY if kind == "KILL-W" else EVERY
            print(f"  {kind:<6} x{len(lost)}: steps lost {lost} (max {max(lost)}; bound {bound},"
                  f" max/bound {max(lost) / bound:.2f})")
    hits = [f.in_write for f in faults if f.in_write is not None]
    if hits:
        print(f"  KILL-W landed during a checkpoint write: {sum(hits)}/{len(hits)}")
    done = [r.wall_s for r in results if r.completed]
    if done:
        mean = sum(done) / len(done)
        print(f"wall time per interrupted cluster run {mean:.0f} s vs uninterrupted local run "
              f"{baseline_s:.0f} s (ratio {mean / baseline_s:.1f}; includes queueing, restarts "
              f"and {len(faults) // len(results)} fault(s) each)")
    ok = (completed == equal == len(results) and n_damaged == 0
          and all(f.lost <= (2 * EVERY if f.kind == "KILL-W" else EVERY) for f in faults))
    print("GOAL MET" if ok else "GOAL NOT MET")


if __name__ == "__main__":
    main()
