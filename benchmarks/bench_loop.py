"""Loop efficiency: steps/s of the multiclass job's real loop vs a bare forward/backward/step.

Candidate: `jobs.engine.Engine.train()` with the multiclass task, the loop the job runs, on a
real run folder from prepared HDF5 data (synthesized and prepared in a temporary folder by
`hcli data synth` and `hcli data prepare`): the DataLoader, hierarchical targets, logging to
metrics.jsonl, TensorBoard and progress.json, tqdm, the stop-flag check and a checkpoint every
`--ckpt-every` steps, written in the background. Validation is off during the timed window.

Baseline, in the same process and run: a bare loop over the same batches held in memory
(drawn from the same loader beforehand): forward, the same loss, backward, the same gradient
clipping, optimizer and scheduler step, on a copy of the same model with its own optimizer.

Both are timed from the end of step `--warmup` to the end of the last step (process start,
model build, the first steps' allocations, and the job's final validation and test evaluation
are outside the window). Each repetition builds a fresh run and alternates which side goes first,
so load from other processes hits both. Goal: full / bare >= 0.95.

    .venv/bin/python benchmarks/bench_loop.py [--steps 200] [--reps 3] [--workers 0,1]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import itertools
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._util import REPO, hcli_command  # noqa: E402

__all__ = ["prepare_data", "build_trainer", "draw_batches", "BareLoop", "time_interleaved",
           "main"]

GOAL = 0.95
# tests/conftest.py's TINY model, at crop 128; validation out of the timed window.
TINY = [
    "model.backbone=convnext",
    "model.encoder_kwargs={depths: [1, 1, 1, 1], dims: [16, 32, 64, 128]}",
    "model.decoder_channels=16",
    "data.crop_size=128",
    "data.k=3",
    "train.batch_size=2",
    "train.warmup_steps=10",
    "train.log_every_steps=10",
    "train.device=cpu",
    "train.overlays=1",
]


def prepare_data(base: Path, n: int = 24, size: int = 256) -> Path:
    """Synthetic ARTeFACT-format images prepared to HDF5 shards, as a user would."""
    raw, prepared = base / "raw", base / "prepared"
    for args in (["data", "synth", "--out", str(raw), "--n", str(n), "--seed", "1",
                  "--size", str(size)],
                 ["data", "prepare", "--source", str(raw), "--out", str(prepared)]):
        subprocess.run([*hcli_command(), *args], check=True, cwd=REPO,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return prepared


def build_trainer(runs: Path, overrides: list[str], config: str | None = None) -> Any:
    """The multiclass task's `Engine` on a fresh run folder, built as the job builds it."""
    from hcli.launch import plan_runs
    from hcli.runs import create_run
    from jobs.engine import Engine
    from jobs.multiclass.task import MulticlassTask
    from jobs.runtime import JobContext
    from jobs.signals import StopFlag

    planned = plan_runs("multiclass", config=config, overrides=overrides)[0]
    run = create_run(runs, planned.run_id, planned.spec, snapshot=False)
    ctx = JobContext(run=run, spec=run.spec(), job_id="bench", stop=StopFlag())
    return Engine(ctx, MulticlassTask)


def draw_batches(trainer: Any, n: int) -> tuple[list[tuple[Any, Any]], float]:
    """`n` batches from a separate iterator over the trainer's own loader, on the device with
    targets derived; and the time per batch (what the loop pays for data with 0 workers)."""
    import torch

    spec, it = trainer.spec, iter(trainer.feeds["train"].loader)
    out, t0 = [], time.perf_counter()
    for _ in range(n):
        batch = next(it)
        images = batch["image"].to(trainer.device)
        if spec.train.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        if spec.model.hierarchical:  # derived in the loader's workers (jobs.data.collate_crops)
            targets = {k: v.to(trainer.device) for k, v in batch["targets"].items()}
        else:
            targets = batch["mask"].to(trainer.device)
        out.append((images, targets))
    return out, (time.perf_counter() - t0) / n


class BareLoop:
    """Forward, loss, backward, clip, optimizer and scheduler step over in-memory batches, on a
    copy of the trainer's model with its own optimizer and scheduler (same builders)."""

    def __init__(self, trainer: Any, batches: list[tuple[Any, Any]]) -> None:
        from jobs.optim import build_optimizer, build_scheduler

        self.train_spec = trainer.spec.train
        self.model = copy.deepcopy(trainer.model)
        self.model.train()
        self.optimizer = build_optimizer(self.model, self.train_spec)
        self.scheduler = build_scheduler(self.optimizer, self.train_spec)
        self.criterion = trainer.task.criterion
        self.batches = batches
        self.done = 0
        self.seconds = 0.0
        self.cpu_seconds = 0.0
        self.timed_steps = 0

    def run(self, n: int, timed: bool = True) -> None:
        import torch

        clip = self.train_spec.clip_grad
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(n):
            images, targets = self.batches[self.done % len(self.batches)]
            loss, _ = self.criterion(self.model(images), targets)
            loss.backward()
            if clip:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.scheduler.step()
            self.done += 1
        if timed:
            self.seconds += time.perf_counter() - t0
            self.cpu_seconds += time.process_time() - c0
            self.timed_steps += n


def time_interleaved(trainer: Any, bare: BareLoop, warmup: int, block: int,
                     log: Path) -> dict[str, Any]:
    """Run the job's loop and, every `block` steps after `warmup`, `block` bare steps.

    The clock reads after every optimizer step of the job (its `after_step` hook); the
    bare block runs right there and its time is cut out of the job's interval, so the job's
    bookkeeping after that step (logging, checkpoint) still counts as the job's.
    """
    intervals: list[tuple[int, float]] = []  # (step the interval ends with, seconds)
    cpu: list[float] = []  # this process's CPU time (all its threads, not loader workers)
    last: list[float] = []
    def stamped(step: int) -> None:
        now, now_cpu = time.perf_counter(), time.process_time()
        if last and step > warmup + 1:
            intervals.append((step, now - last[0]))
            cpu.append(now_cpu - last[1])
        # Mid-block, so a switch between the loops never lands on a log or checkpoint step.
        if step > warmup and step % block == block // 2:
            bare.run(block)
        last[:] = [time.perf_counter(), time.process_time()]

    bare.run(warmup, timed=False)
    trainer.after_step.append(stamped)
    with open(log, "a") as fh, contextlib.redirect_stdout(fh), contextlib.redirect_stderr(fh):
        try:
            trainer.train()
        finally:
            trainer.close()
    t = trainer.spec.train

    def after(every: int, at: int = 0) -> list[float]:
        # The interval ending with step s holds step s's work and the bookkeeping after s-1.
        return [d for s, d in intervals if (s - 1) % every == at]

    special = {s for s, _ in intervals if (s - 1) % t.log_every_steps == 0
               or (s - 1) % t.checkpoint_every_steps == 0 or (s - 1) % block == block // 2}
    plain = [d for s, d in intervals if s not in special]
    log_iv, ckpt_iv = after(t.log_every_steps), after(t.checkpoint_every_steps)
    return {"steps": len(intervals), "seconds": sum(d for _, d in intervals),
            "cpu_seconds": sum(cpu),
            "median_plain": statistics.median(plain), "log_intervals": log_iv,
            "ckpt_intervals": ckpt_iv, "switch_intervals": after(block, block // 2),
            "ckpt_blocked_s": trainer.ckpt.last_blocked_s}


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f} ms"


class _MemoryLoader:
    """Diagnosis only: the loader's own batches, drawn once and replayed, so the job's loop runs
    without loading data and the remaining gap is the loop's own bookkeeping."""

    num_workers, pin_memory = 0, False  # what the job's loop asks a loader

    def __init__(self, loader: Any, n: int) -> None:
        it = iter(loader)
        self.batches = [next(it) for _ in range(n)]

    def __iter__(self) -> Any:
        return itertools.cycle(self.batches)


def one_setting(data: Path, base: Path, workers: int, args: argparse.Namespace,
                from_memory: bool = False) -> list[str]:
    model = [] if args.config else TINY  # a config brings its own model, crop and batch
    overrides = [*model, f"data.root={data}", f"data.num_workers={workers}",
                 "train.warmup_steps=10",
                 f"train.steps={args.steps}", f"train.val_every_steps={10 * args.steps}",
                 f"train.checkpoint_every_steps={args.ckpt_every}",
                 f"train.threads={args.threads}"]
    ratios: list[float] = []
    cpu_ratios: list[float] = []
    lines: list[str] = []
    for rep in range(args.reps):
        name = f"runs-{'memory' if from_memory else workers}-{rep}"
        trainer = build_trainer(base / name, [*overrides, f"seed={rep}"], args.config)
        batches, load_s = draw_batches(trainer, args.block * 4)
        if from_memory:
            from jobs.task import Feed

            feed = trainer.feeds["train"]
            trainer.feeds["train"] = Feed(_MemoryLoader(feed.loader, args.block * 4), feed.sampler)
        bare = BareLoop(trainer, batches)
        full = time_interleaved(trainer, bare, args.warmup, args.block, base / "job.log")
        full_rate = full["steps"] / full["seconds"]
        bare_rate = bare.timed_steps / bare.seconds
        ratios.append(full_rate / bare_rate)
        # CPU time of this process per step, each side: what the wall ratio would be on an idle
        # machine with a core free for the loader worker (contention inflates wall time only).
        cpu_ratios.append((bare.cpu_seconds / bare.timed_steps)
                          / (full["cpu_seconds"] / full["steps"]))
        plain = full["median_plain"]
        # Medians against medians: a mean would pick up every burst of load from other processes.
        log_extra = (statistics.median(full["log_intervals"]) - plain
                     if full["log_intervals"] else 0)
        ckpt_extra = (statistics.median(full["ckpt_intervals"]) - plain
                      if full["ckpt_intervals"] else 0)
        switch_extra = statistics.median(full["switch_intervals"]) - plain
        lines.append(
            f"  rep {rep}: full {full_rate:.2f} steps/s ({_ms(full['seconds'] / full['steps'])}"
            f"/step over {full['steps']}), bare {bare_rate:.2f} steps/s "
            f"({_ms(bare.seconds / bare.timed_steps)}/step over {bare.timed_steps}), "
            f"ratio {ratios[-1]:.3f}; CPU per step full {_ms(full['cpu_seconds'] / full['steps'])}"
            f", bare {_ms(bare.cpu_seconds / bare.timed_steps)}, ratio {cpu_ratios[-1]:.3f}")
        lines.append(
            f"      loader alone {_ms(load_s)}/batch; full's median plain step {_ms(plain)}; "
            f"extra at log steps {_ms(log_extra)} (x{len(full['log_intervals'])}), at "
            f"checkpoint steps {_ms(ckpt_extra)} (x{len(full['ckpt_intervals'])}, loop blocked "
            f"{_ms(full['ckpt_blocked_s'] or 0)}), after a switch from the bare loop "
            f"{_ms(switch_extra)}")
        del trainer, batches, bare
    verdict = "ok" if statistics.median(ratios) >= GOAL else "MISSED"
    what = "job loop with its batches replayed from memory (diagnosis)" if from_memory else \
        f"data.num_workers={workers}"
    head = (f"\n{what}: ratio full/bare median {statistics.median(ratios):.3f}"
            f" (min {min(ratios):.3f}, max {max(ratios):.3f}, n={len(ratios)}); "
            f"goal >= {GOAL}: {verdict}\n  by CPU time of this process per step (an idle "
            f"machine's wall ratio): median {statistics.median(cpu_ratios):.3f} "
            f"(min {min(cpu_ratios):.3f}, max {max(cpu_ratios):.3f})")
    return [head, *lines]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--block", type=int, default=10,
                    help="steps per alternation between the job's loop and the bare loop")
    ap.add_argument("--workers", default="0,1",
                    help="data.num_workers settings to measure, comma-separated")
    ap.add_argument("--ckpt-every", type=int, default=100,
                    help="train.checkpoint_every_steps (configs/quickstart.yaml: 100)")
    ap.add_argument("--threads", type=int, default=1, help="train.threads (torch CPU threads)")
    ap.add_argument("--config", default=None,
                    help="time this config's model and batch (e.g. quickstart) instead of the "
                    "tests' tiny model at batch 2")
    ap.add_argument("--diagnose", action="store_true",
                    help="also time the job's loop with its batches replayed from memory")
    args = ap.parse_args()
    import torch

    what = f"config {args.config}" if args.config else "tiny convnext UPerNet, crop 128, batch 2"
    print(f"{what}, {args.steps} steps (timed after step "
          f"{args.warmup}), checkpoint every {args.ckpt_every}, log every 10, torch "
          f"{torch.__version__}, {args.threads} thread(s), {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory(prefix="bench-loop-") as tmp:
        base = Path(tmp)
        data = prepare_data(base)
        lines: list[str] = []
        for workers in (int(w) for w in args.workers.split(",")):
            lines += one_setting(data, base, workers, args)
            print("\n".join(lines[-(args.reps * 2 + 1):]), flush=True)
        if args.diagnose:
            lines += one_setting(data, base, 0, args, from_memory=True)
            print("\n".join(lines[-(args.reps * 2 + 1):]), flush=True)


if __name__ == "__main__":
    main()
