"""Forward/backward time and peak memory per backbone (UPerNet + heads), CPU, random init.

Each configuration runs in its own process so its peak RSS is its own. The baseline, measured in
the same run, is the convnext_tiny encoder alone (forward/backward of its features): the ratio
column shows what the UPerNet decoder, the heads and a different encoder cost on top of it.

    .venv/bin/python benchmarks/bench_backbones.py                 # Tiny models, 256 and 512 px
    .venv/bin/python benchmarks/bench_backbones.py --quick         # shrunken encoders, 64 px

Times are the best of the timed steps (the machine is shared: the minimum is the figure least
disturbed by other processes). Peak RSS is the process's high-water mark (VmHWM), after
importing torch and building the model included; "activations" is that peak minus the resident
size just before the first step.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["main"]

ROOT = Path(__file__).resolve().parents[1]
BACKBONES = ("convnext", "swin", "maxvit")
TINY_KWARGS = {
    "convnext": {"depths": (1, 1, 1, 1), "dims": (16, 32, 64, 128)},
    "swin": {"embed_dim": 24, "depths": (1, 1, 1, 1), "num_heads": (1, 1, 1, 1)},
    "maxvit": {
        "embed_dim": (16, 32, 64, 128),
        "depths": (1, 1, 1, 1),
        "stem_width": 16,
        "transformer_dim_head": 16,
    },
}


def _status_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def run_one(what: str, size: int, batch: int, steps: int, threads: int, quick: bool) -> dict:
    """Measure one configuration in this process; `what` is a backbone or "encoder"."""
    import torch

    sys.path.insert(0, str(ROOT))
    from hcli.spec import LossSpec, ModelSpec
    from jobs.hierarchy import derive_targets, fine_to_coarse_lut
    from jobs.losses import SegLoss
    from jobs.models import build_encoder, build_segmenter

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    backbone = "convnext" if what == "encoder" else what
    kwargs = TINY_KWARGS[backbone] if quick else {}
    x = torch.randn(batch, 3, size, size)
    if what == "encoder":
        model = build_encoder(backbone, size, kwargs, check=False)

        def loss_fn() -> torch.Tensor:
            return sum(f.float().mean() for f in model(x))  # type: ignore[return-value]

    else:
        spec = ModelSpec(backbone=backbone, encoder_kwargs=kwargs, hierarchical=True)
        model = build_segmenter(spec, size, check=False)
        mask = torch.randint(0, 16, (batch, size, size))
        targets = derive_targets(mask, fine_to_coarse_lut(spec.coarse_groups))
        criterion = SegLoss(LossSpec(), hierarchical=True, n_coarse=1 + len(spec.coarse_groups))

        def loss_fn() -> torch.Tensor:
            return criterion(model(x), targets)[0]

    model.train()
    params = sum(p.numel() for p in model.parameters())
    rss_before = _status_kb("VmRSS")
    times = []
    for i in range(steps + 1):
        model.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        loss_fn().backward()
        if i:  # the first step warms up allocators and kernels
            times.append(time.perf_counter() - t0)
    peak = _status_kb("VmHWM")
    return {
        "what": what,
        "size": size,
        "batch": batch,
        "params_m": params / 1e6,
        "s_per_step": min(times),
        "peak_gb": peak / 2**20,
        "activations_gb": (peak - rss_before) / 2**20,
    }


def _spawn(what: str, size: int, batch: int, steps: int, threads: int, quick: bool) -> dict:
    cmd = [sys.executable, __file__, "--one", what, "--sizes", str(size), "--batch", str(batch),
           "--steps", str(steps), "--threads", str(threads)] + (["--quick"] if quick else [])
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5, help="timed steps (after one warm-up)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="shrunken encoders (checks the script)")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        r = run_one(args.one, args.sizes[0], args.batch, args.steps, args.threads, args.quick)
        print(json.dumps(r))
        return
    print(f"batch {args.batch}, {args.threads} threads, best of {args.steps} steps, "
          f"{'shrunken' if args.quick else 'Tiny'} encoders, random init", flush=True)
    rows = []
    for size in args.sizes:
        base = _spawn("encoder", size, args.batch, args.steps, args.threads, args.quick)
        print(f"  {size}px baseline encoder: {base['s_per_step']:.2f} s", flush=True)
        measured = []
        for b in BACKBONES:
            r = _spawn(b, size, args.batch, args.steps, args.threads, args.quick)
            measured.append(r)
            print(f"  {size}px {b}: {r['s_per_step']:.2f} s", flush=True)
        # The baseline again after the models: a burst of load from other processes during one
        # of the two runs then does not skew every ratio of this size.
        again = _spawn("encoder", size, args.batch, args.steps, args.threads, args.quick)
        print(f"  {size}px baseline encoder again: {again['s_per_step']:.2f} s", flush=True)
        base["s_per_step"] = min(base["s_per_step"], again["s_per_step"])
        rows.append((base, 1.0))
        rows += [(r, r["s_per_step"] / base["s_per_step"]) for r in measured]
    print()
    print("| model | px | batch | params (M) | fwd+bwd s/step | × baseline | peak RSS (GB) "
          "| activations (GB) |")
    print("|---|---|---|---|---|---|---|---|")
    for r, ratio in rows:
        name = "convnext_tiny encoder only (baseline)" if r["what"] == "encoder" else (
            f"UPerNet + {r['what']}")
        print(f"| {name} | {r['size']} | {r['batch']} | {r['params_m']:.1f} | "
              f"{r['s_per_step']:.2f} | {ratio:.2f} | {r['peak_gb']:.2f} | "
              f"{r['activations_gb']:.2f} |")


if __name__ == "__main__":
    main()
