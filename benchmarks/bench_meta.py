"""Cost of one first-order meta step (k inner steps + the query) against k + 1 ERM steps.

Goal: a first-order MAML step with k inner steps costs at most 1.15 × (k + 1) ERM steps of the
same model and batch. The floor is exactly k + 1 forward/backward passes (k on the support batch,
one on the query); what is measured on top is the meta machinery: `functional_call`, the copies
of the BatchNorm buffers, the straight-through parameters and the inner SGD updates.

    .venv/bin/python benchmarks/bench_meta.py            # convnext_tiny + UPerNet, 128 px, k=5
    .venv/bin/python benchmarks/bench_meta.py --quick    # shrunken convnext, 64 px

Both sides live in one process and take turns (k + 1 ERM steps, one meta step, ...), because
other processes share the cores: each figure is a median over rounds and the ratio is the median
of the per-round ratios. An ERM step is what the engine does for multiclass: forward, loss,
backward, AdamW step; a meta step is the engine's step of the meta kind with one task (one
micro-step: support + query), then the same AdamW step.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from hcli.spec import Spec
from jobs.losses import SegLoss
from jobs.meta.maml import MetaLearner
from jobs.models import build_segmenter

__all__ = ["main"]


def _spec(quick: bool, crop: int) -> Spec:
    model: dict = {"backbone": "convnext", "decoder_channels": 64 if quick else 256}
    if quick:
        model["encoder_kwargs"] = {"depths": [1, 1, 1, 1], "dims": [16, 32, 64, 128]}
    return Spec.model_validate({"model": model, "data": {"crop_size": crop}})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="shrunken convnext at 64 px")
    ap.add_argument("--k", type=int, default=5, help="inner steps")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--crop", type=int, default=None)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--inner-params", default="all", choices=("all", "decoder", "heads"))
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    crop = args.crop or (64 if args.quick else 128)
    spec = _spec(args.quick, crop)
    torch.manual_seed(0)
    model = build_segmenter(spec.model, crop).train()
    criterion = SegLoss(spec.loss, None, False, None)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    k = args.k
    learner = MetaLearner(model, lambda out, tgt: criterion(out, tgt)[0], inner_steps=k,
                          inner_lr=1e-3, inner_params=args.inner_params)
    g = torch.Generator().manual_seed(0)

    def batch() -> tuple[torch.Tensor, torch.Tensor]:
        return (torch.randn(args.batch, 3, crop, crop, generator=g),
                torch.randint(0, 16, (args.batch, crop, crop), generator=g))

    support, query = batch(), batch()

    def erm_step() -> None:
        loss, _ = criterion(model(support[0]), support[1])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def meta_step() -> None:
        learner.task_loss(support, query).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(2):  # warm-up: allocator, first-call costs
        erm_step()
        meta_step()
    erm, meta, ratios = [], [], []
    for _ in range(args.rounds):
        t0 = time.perf_counter()
        for _ in range(k + 1):
            erm_step()
        t1 = time.perf_counter()
        meta_step()
        t2 = time.perf_counter()
        erm.append((t1 - t0) / (k + 1))
        meta.append(t2 - t1)
        ratios.append((t2 - t1) / (t1 - t0))
    erm_ms, meta_ms = statistics.median(erm) * 1e3, statistics.median(meta) * 1e3
    ratio = statistics.median(ratios)
    name = "convnext (shrunken)" if args.quick else "convnext_tiny"
    print(f"{name} + UPerNet, {crop} px, batch {args.batch}, k={k}, inner_params="
          f"{args.inner_params}, {args.threads} threads, {args.rounds} rounds")
    print(f"  ERM step (fwd+bwd+AdamW):        median {erm_ms:8.1f} ms "
          f"(min {min(erm) * 1e3:.1f}, max {max(erm) * 1e3:.1f})")
    print(f"  (k+1) ERM steps:                 median {erm_ms * (k + 1):8.1f} ms")
    print(f"  first-order meta step (k inner): median {meta_ms:8.1f} ms "
          f"(min {min(meta) * 1e3:.1f}, max {max(meta) * 1e3:.1f})")
    print(f"  meta / ((k+1) ERM): {ratio:.3f} (per-round median; IQR "
          f"{_iqr(ratios)}); goal <= 1.15: {'met' if ratio <= 1.15 else 'NOT met'}")


def _iqr(values: list[float]) -> str:
    if len(values) < 4:
        return f"{min(values):.3f}-{max(values):.3f}"
    q = statistics.quantiles(values, n=4)
    return f"{q[0]:.3f}-{q[2]:.3f}"


if __name__ == "__main__":
    main()
