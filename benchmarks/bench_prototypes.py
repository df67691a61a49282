"""What prototype attention and the curriculum cost per training step (CPU, Tiny convnext).

Three setups of the same hierarchical UPerNet, each a full training step (forward, loss,
backward, AdamW step):
  plain       model.attention=none, no curriculum (the baseline)
  prototypes  model.attention=prototypes (defaults: 4 per class, dim 64) + its auxiliary loss
  curriculum  no attention, the loss of a curriculum stage (binary: explicit head weights)

    .venv/bin/python benchmarks/bench_prototypes.py                # 512 px, batch 2, Tiny
    .venv/bin/python benchmarks/bench_prototypes.py --quick        # shrunken encoder, 64 px

Time: the three live in one process and take their steps in turns (plain, prototypes,
curriculum, plain, ...), since other processes share the cores and a burst would otherwise land
on one setup's block; each ratio is the median of the per-round ratios to plain. Memory: each
setup runs two steps in a process of its own; its peak RSS (VmHWM) minus the resident size
before the first step is what its training step holds (activations, gradients, AdamW state).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

__all__ = ["main"]

ROOT = Path(__file__).resolve().parents[1]
SETUPS = ("plain", "prototypes", "curriculum")


def _status_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def _step_fn(setup: str, size: int, batch: int, quick: bool) -> Callable[[], None]:
    import torch

    sys.path.insert(0, str(ROOT))
    from hcli.spec import LossSpec, ModelSpec
    from jobs.curriculum import stage_head_weights
    from jobs.hierarchy import derive_targets, fine_to_coarse_lut
    from jobs.losses import SegLoss
    from jobs.models import build_segmenter
    from jobs.models.encoders import SHRUNKEN_ENCODER_KWARGS
    from jobs.models.prototypes import prototype_loss

    torch.manual_seed(0)
    kwargs = SHRUNKEN_ENCODER_KWARGS["convnext"] if quick else {}
    spec = ModelSpec(backbone="convnext", encoder_kwargs=kwargs, hierarchical=True,
                     attention="prototypes" if setup == "prototypes" else "none")
    model = build_segmenter(spec, size).train()
    loss_spec = LossSpec()
    criterion = SegLoss(loss_spec, hierarchical=True, n_coarse=1 + len(spec.coarse_groups))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(batch, 3, size, size)
    targets = derive_targets(torch.randint(0, 16, (batch, size, size)),
                             fine_to_coarse_lut(spec.coarse_groups))
    weights = stage_head_weights("binary", loss_spec) if setup == "curriculum" else None

    def step() -> None:
        out = model(x)
        loss = criterion(out, targets, weights)[0]
        if "prototype_sims" in out:
            assert model.attention is not None
            loss = loss + spec.prototypes.loss_weight * prototype_loss(
                model.attention, out["prototype_sims"], targets["fine"])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def _memory(setup: str, size: int, batch: int, quick: bool) -> int:
    """Peak RSS of two training steps over the resident size before them, in MB."""
    code = (f"import sys; sys.path.insert(0, {str(ROOT / 'benchmarks')!r}); "
            f"import bench_prototypes as b; s = b._step_fn({setup!r}, {size}, {batch}, {quick}); "
            "before = b._status_kb('VmRSS'); s(); s(); "
            "print((b._status_kb('VmHWM') - before) // 1024)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict[str, object]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="shrunken encoder at 64 px")
    ap.add_argument("--size", type=int, default=None)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-memory", action="store_true", help="time only")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    size = args.size or (64 if args.quick else 512)
    steps = {s: _step_fn(s, size, args.batch, args.quick) for s in SETUPS}
    for fn in steps.values():  # warm-up: allocator, AdamW state
        fn()
    times: dict[str, list[float]] = {s: [] for s in SETUPS}
    for i in range(args.rounds):
        for s, fn in steps.items():
            t0 = time.perf_counter()
            fn()
            times[s].append(time.perf_counter() - t0)
        print(f"round {i + 1}: " + ", ".join(f"{s} {v[-1]:.2f} s" for s, v in times.items()),
              file=sys.stderr, flush=True)
    ratio = {s: statistics.median(t / p for t, p in zip(times[s], times["plain"], strict=True))
             for s in SETUPS}
    memory = {} if args.no_memory else {s: _memory(s, size, args.batch, args.quick)
                                        for s in SETUPS}
    result: dict[str, object] = {
        "size": size, "batch": args.batch, "rounds": args.rounds, "threads": args.threads,
        "encoder": "shrunken convnext" if args.quick else "convnext_tiny",
        "median_step_s": {s: round(statistics.median(v), 3) for s, v in times.items()},
        "ratio_to_plain": {s: round(r, 3) for s, r in ratio.items()},
        "step_memory_mb": memory,
    }
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
