"""Forward/backward time and peak memory per backbone (UPerNet + heads), CPU, random init.

The baseline, measured in the same run, is the convnext_tiny encoder alone (forward/backward of
its features): the ratio column shows what the UPerNet decoder, the heads and another encoder cost
on top of it.

    .venv/bin/python benchmarks/bench_backbones.py                 # Tiny models, 256 and 512 px
    .venv/bin/python benchmarks/bench_backbones.py --quick         # shrunken encoders, 64 px

Time: all models of one size live in one process and take their steps in turns (baseline,
convnext, swin, maxvit, baseline, ...), because other processes share the two cores and their
bursts would otherwise land on one model's block of steps; each model's figure is its median
step, each ratio the median of the per-round ratios. Memory: each model runs one step in a
process of its own, so its peak RSS (VmHWM, torch and the model included) is its own;
"activations" is that peak minus the resident size just before the step.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

__all__ = ["main"]

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("encoder", "convnext", "swin", "maxvit")  # "encoder": the baseline


def _status_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def _step_fn(what: str, size: int, batch: int, quick: bool) -> tuple[Callable[[], None], int]:
    """A closure running one forward/backward of `what`, and the model's parameter count."""
    import torch

    sys.path.insert(0, str(ROOT))
    from hcli.spec import LossSpec, ModelSpec
    from jobs.hierarchy import derive_targets, fine_to_coarse_lut
    from jobs.losses import SegLoss
    from jobs.models import build_encoder, build_segmenter

    torch.manual_seed(0)
    backbone = "convnext" if what == "encoder" else what
    from jobs.models.encoders import SHRUNKEN_ENCODER_KWARGS

    kwargs = SHRUNKEN_ENCODER_KWARGS[backbone] if quick else {}
    x = torch.randn(batch, 3, size, size)
    if what == "encoder":
        model = build_encoder(backbone, size, kwargs)
        # Dense random upstream gradients, like a decoder's (a plain mean would send expanded,
        # stride-0 gradients down the encoder).
        grads = [torch.randn_like(f) for f in model(x)]

        def loss() -> torch.Tensor:
            return sum((f * g).mean() for f, g in zip(model(x), grads, strict=True))  # type: ignore[return-value]

    else:
        spec = ModelSpec(backbone=backbone, encoder_kwargs=kwargs, hierarchical=True)
        model = build_segmenter(spec, size)
        targets = derive_targets(
            torch.randint(0, 16, (batch, size, size)), fine_to_coarse_lut(spec.coarse_groups)
        )
        criterion = SegLoss(LossSpec(), hierarchical=True, n_coarse=1 + len(spec.coarse_groups))

        def loss() -> torch.Tensor:
            return criterion(model(x), targets)[0]

    model.train()

    def step() -> None:
        model.zero_grad(set_to_none=True)
        loss().backward()

    return step, sum(p.numel() for p in model.parameters())


def measure_memory(what: str, size: int, batch: int, threads: int, quick: bool) -> dict:
    import torch

    torch.set_num_threads(threads)
    step, params = _step_fn(what, size, batch, quick)
    before = _status_kb("VmRSS")
    step()
    peak = _status_kb("VmHWM")
    return {"params_m": params / 1e6, "peak_gb": peak / 2**20,
            "activations_gb": (peak - before) / 2**20}


def measure_time(size: int, batch: int, rounds: int, threads: int, quick: bool) -> dict:
    import torch

    torch.set_num_threads(threads)
    steps = {w: _step_fn(w, size, batch, quick)[0] for w in MODELS}
    for step in steps.values():  # warm-up: allocators, kernels
        step()
    times: dict[str, list[float]] = {w: [] for w in MODELS}
    for _ in range(rounds):
        for w, step in steps.items():
            t0 = time.perf_counter()
            step()
            times[w].append(time.perf_counter() - t0)
    return {
        w: {
            "s_per_step": statistics.median(ts),
            "ratio": statistics.median(t / b for t, b in zip(ts, times["encoder"], strict=True)),
        }
        for w, ts in times.items()
    }


def _child(args: list[str]) -> dict:
    cmd = [sys.executable, __file__, *args]
    env = dict(os.environ)
    if "--time" in args:
        # Keep freed memory in the process: otherwise glibc hands the big activation buffers back
        # to the OS after each step and the next model pays page faults for them (measured: the
        # 512 px baseline went from 1.5 s to 6 s when it ran right after MaxViT).
        env |= {"MALLOC_MMAP_THRESHOLD_": str(2**32), "MALLOC_TRIM_THRESHOLD_": str(2**36)}
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3, help="timed rounds (after one warm-up)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="shrunken encoders (checks the script)")
    ap.add_argument("--memory", help=argparse.SUPPRESS)
    ap.add_argument("--time", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    common = ["--batch", str(args.batch), "--threads", str(args.threads)]
    common += ["--quick"] if args.quick else []
    if args.memory:
        print(json.dumps(measure_memory(args.memory, args.sizes[0], args.batch, args.threads,
                                        args.quick)))
        return
    if args.time:
        print(json.dumps(measure_time(args.sizes[0], args.batch, args.rounds, args.threads,
                                      args.quick)))
        return
    print(f"batch {args.batch}, {args.threads} threads, median of {args.rounds} interleaved "
          f"rounds, {'shrunken' if args.quick else 'Tiny'} encoders, random init", flush=True)
    lines = []
    for size in args.sizes:
        timing = _child(["--time", "--sizes", str(size), "--rounds", str(args.rounds), *common])
        for w in MODELS:
            mem = _child(["--memory", w, "--sizes", str(size), *common])
            t = timing[w]
            name = "convnext_tiny encoder only (baseline)" if w == "encoder" else f"UPerNet + {w}"
            lines.append(f"| {name} | {size} | {args.batch} | {mem['params_m']:.1f} | "
                         f"{t['s_per_step']:.2f} | {t['ratio']:.2f} | {mem['peak_gb']:.2f} | "
                         f"{mem['activations_gb']:.2f} |")
            print(f"  {size}px {name}: {t['s_per_step']:.2f} s, x{t['ratio']:.2f}", flush=True)
    print()
    print("| model | px | batch | params (M) | fwd+bwd s/step | × baseline | peak RSS (GB) "
          "| activations (GB) |")
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
