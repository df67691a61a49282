"""One measurement of `hcli bench`, in a process of its own: a job kind's real training step (or
sliding-window inference), timed the way a run pays for it.

    python -m jobs.bench RUN_DIR --kind multiclass --steps 10 --warmup 2 --launched T

RUN_DIR is a throwaway run folder holding the spec (hcli.bench makes it). The engine is built
exactly as the job builds it (`jobs.engine.Engine` with the kind's task: its loaders over the HDF5
shards, its model, optimizer, autocast, grad scaler), then `Engine.train_step` runs: fetch, the
task's micro-steps, backward, clipping, the optimizer step. Validation, checkpoints and logging
are left out: bench_loop.py measures them at under 5 % of a step. `infer` times the evaluation
path of validation and test (`jobs.multiclass.evaluate.evaluate`, one image at a time).

A process per measurement, because two of its figures are per process: the startup cost (from
`--launched`, the parent's clock just before it started this process: imports, model build, data
open, the first steps' allocations) and the peak resident memory (VmHWM).

Progress goes to the original stdout as JSON lines (`{"done": k, "total": n}`, then
`{"result": {...}}`); anything the task prints goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import IO, Any, cast

__all__ = ["main", "measure", "peak_memory_mb"]


def peak_memory_mb(device: Any) -> float:
    """CUDA's peak allocation on a GPU; else this process's peak resident set (VmHWM: not
    ru_maxrss, which survives exec and may report the parent's peak)."""
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _task_class(kind: str) -> Any:
    from hcli.kinds import get_kind, load_attr

    # `infer` measures the multiclass model; every training kind's workload is a partial of
    # run_task whose task_cls is the task.
    workload = load_attr(get_kind("multiclass" if kind == "infer" else kind).workload or "")
    return workload.keywords["task_cls"]


def measure(run_dir: Path, kind: str, steps: int, warmup: int, launched: float,
            report: Any = None) -> dict[str, Any]:
    """Time `warmup + steps` steps (images, for infer); figures of the last `steps`."""
    from hcli.runs import Run
    from jobs.engine import Engine
    from jobs.runtime import JobContext
    from jobs.signals import StopFlag

    report = report or (lambda done, total: None)
    run = Run(run_dir)
    spec = run.spec()
    total = warmup + steps
    # The schedule must not run past its end (poly decay of a negative remainder).
    spec.train.steps = max(spec.train.steps, total + 1)
    engine = Engine(JobContext(run=run, spec=spec, job_id="bench", stop=StopFlag()),
                    _task_class(kind))
    device, times = engine.device, []
    try:
        if kind == "infer":
            from jobs.multiclass.evaluate import evaluate

            task: Any = engine.task
            dataset = task.test_set if len(task.test_set) else task.val_set
            n_images = len(dataset)
            if not n_images:
                raise RuntimeError("the fold has no test or validation image to infer on")
            engine.model.eval()

            class _One:  # one image of the dataset, cycling: evaluate() runs over a dataset
                def __init__(self, i: int) -> None:
                    self.i = i

                def __len__(self) -> int:
                    return 1

                def __getitem__(self, _: int) -> Any:
                    return dataset[self.i % n_images]

            t_first = time.perf_counter()
            for i in range(total):
                t0 = time.perf_counter()
                evaluate(engine.model, cast(Any, _One(i)), spec, task.rare, device,
                         engine.env.autocast)
                _sync(device)
                times.append(time.perf_counter() - t0)
                report(i + 1, total)
            per_sample = 1
        else:
            engine.task.on_start(engine.model, resumed=False)
            engine.model.train()
            t_first = time.perf_counter()
            for i in range(total):
                t0 = time.perf_counter()
                engine.train_step()
                engine.state.step += 1
                _sync(device)
                times.append(time.perf_counter() - t0)
                report(i + 1, total)
            per_sample = spec.train.batch_size * spec.train.accum_steps
    finally:
        engine.close()
    measured = times[warmup:]
    step_s = sum(measured) / len(measured)
    # time.time() at the first step's start, against the parent's clock at launch: both are
    # wall clocks of this host.
    to_first = time.time() - (time.perf_counter() - t_first) - launched
    # The fixed cost a run pays once: everything before the first step, plus what the warm-up
    # steps took beyond the steady rate (first allocations, loader workers starting).
    startup_s = max(to_first, to_first + sum(times[:warmup]) - warmup * step_s)
    return {
        "kind": kind,
        "batch_size": per_sample,
        "step_s": step_s,
        "samples_per_s": per_sample / step_s,
        "startup_s": startup_s,
        "peak_mem_mb": peak_memory_mb(device),
        "steps_measured": len(measured),
        "device": str(device),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m jobs.bench")
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--kind", required=True, choices=["multiclass", "mae", "meta", "infer"])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--launched", type=float, default=None)
    args = parser.parse_args(argv)
    launched = args.launched if args.launched is not None else time.time()
    # The protocol keeps stdout to itself; what the task prints goes to stderr.
    out: IO[str] = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())

    def report(done: int, total: int) -> None:
        out.write(json.dumps({"done": done, "total": total}) + "\n")

    result = measure(args.run_dir, args.kind, args.steps, args.warmup, launched, report)
    out.write(json.dumps({"result": result}) + "\n")
    out.close()


if __name__ == "__main__":
    main()
