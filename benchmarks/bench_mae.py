"""MAE pretraining efficiency: steps/s of the job's loop vs a bare step, and peak memory.

Candidate: `jobs.engine.Engine.train()` with the mae task (`jobs.mae.task.MaeTask`) on a real run
folder from prepared HDF5 data: the loader, the per-crop masks drawn from the draw keys, logging,
progress, checkpoints. Baseline, in the same process and run: a bare loop over the same batches
and masks held in memory: forward of the same encoder + decoder (a copy with the same weights),
the same masked loss, backward, clipping, optimizer and scheduler step. The two are interleaved
block by block (benchmarks/bench_loop.py's `time_interleaved`) so other load hits both.
Goal: job / bare >= 0.9.

Peak memory: one child process per (backbone, crop) runs a few bare steps of the Tiny encoder
and reports its peak RSS (VmHWM), which includes the interpreter and torch (~0.3 GB).

    .venv/bin/python benchmarks/bench_mae.py [--steps 30] [--tiny-steps 10] [--skip-memory]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.bench_loop import prepare_data, time_interleaved  # noqa: E402

GOAL = 0.9
FAMILIES = ("convnext", "swin", "maxvit")
_COMMON = ["data.num_workers=0", "data.k=3", "train.batch_size=2", "train.device=cpu",
           "train.threads=1", "train.log_every_steps=10", "train.checkpoint_every_steps=1000",
           "model.pretrained=false"]


def _shrunken(family: str) -> str:
    from jobs.models.encoders import SHRUNKEN_ENCODER_KWARGS

    return f"model.encoder_kwargs={json.dumps(SHRUNKEN_ENCODER_KWARGS[family])}"


def build_engine(runs: Path, overrides: list[str]) -> Any:
    from hcli.launch import plan_runs
    from hcli.runs import create_run
    from jobs.engine import Engine
    from jobs.mae.task import MaeTask
    from jobs.runtime import JobContext
    from jobs.signals import StopFlag

    planned = plan_runs("mae", config=None, overrides=overrides)[0]
    run = create_run(runs, planned.run_id, planned.spec, snapshot=False)
    ctx = JobContext(run=run, spec=run.spec(), job_id="bench", stop=StopFlag())
    return Engine(ctx, MaeTask)


def _fresh_model(spec: Any, state: dict[str, Any] | None = None) -> Any:
    from jobs.mae.model import MaeModel
    from jobs.models import build_encoder

    encoder = build_encoder(spec.model.backbone, spec.data.crop_size, spec.model.encoder_kwargs)
    model = MaeModel(encoder, spec.data.crop_size, spec.mae.patch_size, spec.model.backbone,
                     decoder=spec.mae.decoder)
    if state is not None:
        model.load_state_dict(state)
    return model.train()


class BareMae:
    """Forward, masked loss, backward, clip, optimizer and scheduler step over in-memory batches,
    on a copy of the job's model (same weights, same builders)."""

    def __init__(self, engine: Any, n_batches: int) -> None:
        from jobs.mae.masking import pixel_mask
        from jobs.optim import build_optimizer, build_scheduler

        spec = engine.spec
        self.spec, self.task = spec, engine.task
        self.model = _fresh_model(spec, engine.model.state_dict())
        groups = self.model.param_groups(spec.train.lr, spec.train.weight_decay)
        self.optimizer = build_optimizer(self.model, spec.train, groups=groups)
        self.scheduler = build_scheduler(self.optimizer, spec.train)
        it = iter(engine.feeds["train"].loader)
        self.batches = []
        for _ in range(n_batches):
            b = next(it)
            keys = list(zip(b["epoch"], b["position"], b["index"], strict=True))
            mask = self.task._masks(keys, tuple(b["image"].shape[-2:]))
            self.batches.append((b["image"], mask, pixel_mask(mask, spec.mae.patch_size)))
        self.done, self.seconds, self.cpu_seconds, self.timed_steps = 0, 0.0, 0.0, 0

    def run(self, n: int, timed: bool = True) -> None:
        import time

        import torch

        from jobs.mae.masking import masked_loss

        clip, mae = self.spec.train.clip_grad, self.spec.mae
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(n):
            images, mask, pmask = self.batches[self.done % len(self.batches)]
            loss = masked_loss(self.model(images, mask), images, pmask, mae.loss)
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


def one(data: Path, base: Path, family: str, size: str, crop: int, steps: int) -> dict[str, Any]:
    overrides = [*_COMMON, f"model.backbone={family}", f"data.root={data}",
                 f"data.crop_size={crop}", f"train.steps={steps}", "train.warmup_steps=2",
                 f"train.val_every_steps={steps}"]
    if size == "shrunken":
        overrides.append(_shrunken(family))
    engine = build_engine(base / f"runs-{family}-{size}", overrides)
    warmup, block = 2, 2
    bare = BareMae(engine, 4)
    timing = time_interleaved(engine, bare, warmup, block, base / "job.log")
    job = timing["steps"] / timing["seconds"]
    ref = bare.timed_steps / bare.seconds
    return {"backbone": family, "size": size, "crop": crop, "job_steps_per_s": job,
            "bare_steps_per_s": ref, "ratio": job / ref,
            "cpu_ratio": (bare.cpu_seconds / bare.timed_steps)
            / (timing["cpu_seconds"] / timing["steps"])}


def _memory_child(family: str, crop: int, steps: int) -> None:
    """Runs in its own process: a few bare steps of the Tiny encoder, then its peak RSS."""
    import torch

    from hcli.spec import Spec
    from jobs.mae.masking import batch_masks, masked_loss, pixel_mask

    torch.set_num_threads(1)
    spec = Spec.model_validate({"kind": "mae", "model": {"backbone": family, "pretrained": False},
                                "data": {"crop_size": crop}})
    model = _fresh_model(spec)
    opt = torch.optim.AdamW(model.parameters(), 1e-4)
    x = torch.randn(2, 3, crop, crop)
    mask = batch_masks([(0, 0, 0), (0, 0, 1)], 0, (crop, crop), 32, 0.6)
    for _ in range(steps):
        masked_loss(model(x, mask), x, pixel_mask(mask, 32)).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    # VmHWM, not ru_maxrss: the latter survives exec and would report the forking parent's peak.
    hwm = next(line for line in Path("/proc/self/status").read_text().splitlines()
               if line.startswith("VmHWM:"))
    print(json.dumps({"peak_rss_mb": int(hwm.split()[1]) / 1024}))


def peak_memory(family: str, crop: int, steps: int = 2) -> float:
    done = subprocess.run([sys.executable, __file__, "--memory-child", family, str(crop),
                           str(steps)], capture_output=True, text=True, check=True)
    return float(json.loads(done.stdout.strip().splitlines()[-1])["peak_rss_mb"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30, help="job steps, shrunken encoders")
    ap.add_argument("--tiny-steps", type=int, default=10, help="job steps, Tiny encoders")
    ap.add_argument("--families", default=",".join(FAMILIES))
    ap.add_argument("--skip-tiny", action="store_true")
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--memory-only", action="store_true")
    ap.add_argument("--memory-child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory_child:
        family, crop, steps = args.memory_child
        _memory_child(family, int(crop), int(steps))
        return
    families = args.families.split(",")
    rows = []
    sizes = [("shrunken", args.steps)] + ([] if args.skip_tiny else [("tiny", args.tiny_steps)])
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        data = prepare_data(base, n=12, size=320) if not args.memory_only else base
        for size, steps in sizes if not args.memory_only else []:
            for family in families:
                r = one(data, base, family, size, 256, steps)
                rows.append(r)
                print(f"{family:9s} {size:8s} 256 px: job {r['job_steps_per_s']:.2f} steps/s, "
                      f"bare {r['bare_steps_per_s']:.2f} steps/s, ratio {r['ratio']:.3f} "
                      f"(cpu-time ratio {r['cpu_ratio']:.3f}; goal >= {GOAL})", flush=True)
    if not args.skip_memory:
        for family in families:
            mem = {crop: peak_memory(family, crop) for crop in (256, 512)}
            print(f"{family:9s} Tiny peak RSS (batch 2, bare steps): 256 px {mem[256]:.0f} MB, "
                  f"512 px {mem[512]:.0f} MB", flush=True)


if __name__ == "__main__":
    main()
