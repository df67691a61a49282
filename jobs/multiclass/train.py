"""The multiclass training loop: linear, resumable, and honest about what it measured.

Resume is exact on CPU: the state (model, optimizer, scheduler, scaler, step, sampler position of
the last *consumed* batch, RNG states, early-stopping counters) is saved at step boundaries and
the data pipeline is a pure function of (seed, epoch, position), so a run killed at any moment and
resumed ends with the same parameters as one that never stopped (tests/test_resume.py).
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from hcli.data.manifest import load_manifest
from hcli.data.splits import get_fold
from hcli.data.stats import class_table, class_weights, rare_classes
from hcli.fsutil import atomic_write_bytes, atomic_write_json
from hcli.spec import Spec
from jobs.checkpoint import CheckpointManager, capture_rng_state, restore_rng_state
from jobs.data import build_eval_dataset, build_train_loader, resume_state
from jobs.data.prefetch import ThreadPrefetcher
from jobs.hierarchy import fine_to_coarse_lut
from jobs.losses import SegLoss
from jobs.models import build_segmenter
from jobs.multiclass.evaluate import evaluate, save_samples
from jobs.optim import build_optimizer, build_scheduler
from jobs.progress import ProgressWriter
from jobs.runtime import JobContext, Outcome

__all__ = ["run", "seed_everything", "pick_device"]


def seed_everything(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def pick_device(spec: Spec) -> torch.device:
    if spec.train.device == "cuda" or (spec.train.device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            from hcli.errors import UserError

            raise UserError('train.device="cuda" but no GPU is visible; use train.device=auto')
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def _autocast(spec: Spec, device: torch.device) -> Any:
    if spec.train.amp == "off":
        return contextlib.nullcontext
    dtype = torch.bfloat16 if spec.train.amp == "bf16" else torch.float16
    return lambda: torch.autocast(device.type, dtype=dtype)


def _save_best(path: Path, model: torch.nn.Module, step: int, miou: float) -> None:
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "step": step, "val_miou": miou}, buf)
    atomic_write_bytes(path, buf.getvalue())


class _Trainer:
    """The pieces of one run, built once; `train()` is the loop."""

    def __init__(self, ctx: JobContext) -> None:
        from jobs.distributed import init_distributed

        self.ctx, self.spec = ctx, ctx.spec
        spec = self.spec
        self.dist = init_distributed()
        if spec.train.threads:
            torch.set_num_threads(spec.train.threads)
        seed_everything(spec.seed)
        self.device = pick_device(spec)
        self.autocast = _autocast(spec, self.device)
        self.run_dir = ctx.run.path

        manifest = load_manifest(spec.data.root)
        self.fold = get_fold(manifest, spec.data, spec.seed)
        train_ids = self.fold.train
        self.rare = rare_classes(class_table(manifest, train_ids))
        weights = None
        if spec.loss.class_weights != "none":
            weights = class_weights(
                manifest, spec.loss.class_weights, clip=spec.loss.weight_clip, ids=train_ids
            )
        # Hierarchical targets are derived in the loader's workers, off the training step.
        self.lut = fine_to_coarse_lut(spec.model.coarse_groups)
        self.loader, self.sampler = build_train_loader(
            spec,
            manifest,
            train_ids,
            rank=self.dist.rank,
            world_size=self.dist.world_size,
            pin_memory=self.device.type == "cuda",
            target_lut=self.lut if spec.model.hierarchical else None,
        )
        self.val_set = build_eval_dataset(spec, manifest, self.fold.val or self.fold.test)
        self.test_set = build_eval_dataset(spec, manifest, self.fold.test)

        model = build_segmenter(spec.model, spec.data.crop_size)
        if spec.model.init_from:
            from jobs.init_from import load_init_weights

            source = load_init_weights(model, spec, manifest, self.fold.test, ctx.run.path.parent)
            print(f"encoder initialised from {source}", flush=True)
        model = model.to(self.device)
        if spec.train.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        n_coarse = 1 + len(spec.model.coarse_groups) if spec.model.hierarchical else None
        self.criterion = SegLoss(spec.loss, weights, spec.model.hierarchical, n_coarse).to(
            self.device
        )
        self.optimizer = build_optimizer(model, spec.train)
        self.scheduler = build_scheduler(self.optimizer, spec.train)
        self.scaler = torch.amp.GradScaler(
            "cuda", enabled=spec.train.amp == "fp16" and self.device.type == "cuda"
        )
        self.forward = model
        if self.dist.world_size > 1:
            self.forward = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        if spec.train.compile:
            self.forward = torch.compile(self.forward)
        self.ckpt = CheckpointManager(
            ctx.run.checkpoints, keep=spec.train.keep_checkpoints, rank=self.dist.rank
        )
        self.progress = ProgressWriter(self.run_dir, spec.train.steps, enabled=ctx.is_main)
        # Training state beyond the modules (saved and restored with them).
        self.step = 0
        self.sampler_state: dict[str, int] | None = None
        self.best = {"miou": -math.inf, "step": None}
        self.bad_validations = 0
        self._batches: Iterator[dict[str, Any]] | None = None

    # -- state ---------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "step": self.step,
            "sampler": self.sampler_state,
            "rng": capture_rng_state(),
            "best": dict(self.best),
            "bad_validations": self.bad_validations,
            "run_id": self.ctx.run.run_id,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])
        self.sampler_state = state["sampler"]
        self.best = dict(state["best"])
        self.bad_validations = int(state["bad_validations"])
        if self.sampler_state is not None:
            self.sampler.load_state_dict(self.sampler_state)
        restore_rng_state(state["rng"])

    def resume(self) -> bool:
        found = self.ckpt.load_latest(map_location=self.device)
        if found is None:
            return False
        state, path = found
        self.load_state_dict(state)
        self.progress.event(self.step, "resumed", checkpoint=path.name)
        # Every rank says it: each rank's log shows which checkpoint it continued from.
        print(f"rank {self.dist.rank}: resumed from {path} at step {self.step}", flush=True)
        return True

    def save(self, blocking: bool) -> None:
        self.ckpt.save(self.state_dict(), self.step, blocking=blocking)
        if blocking:
            self.ckpt.wait()

    # -- the loop ------------------------------------------------------------------------------

    def _micro_step(self, batch: dict[str, Any], scale: float) -> torch.Tensor:
        images = batch["image"].to(self.device, non_blocking=True)
        if self.spec.train.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        # uint8 labels (the loss widens them on the device, an eighth of the transfer).
        if self.spec.model.hierarchical:
            targets = {k: v.to(self.device, non_blocking=True) for k, v in batch["targets"].items()}
        else:
            targets = batch["mask"].to(self.device, non_blocking=True)
        with self.autocast():
            outputs = self.forward(images)
        loss, _ = self.criterion(outputs, targets)
        self.scaler.scale(loss * scale).backward()
        return loss.detach()

    def _optimizer_step(self) -> float | None:
        grad_norm = None
        if self.spec.train.clip_grad:
            self.scaler.unscale_(self.optimizer)
            grad_norm = float(
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.spec.train.clip_grad)
            )
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        return grad_norm

    def _stop_requested(self) -> bool:
        from jobs.distributed import any_rank

        return bool(any_rank(self.ctx.stop.requested))

    def validate(self) -> bool:
        """Validation mIoU; returns True when early stopping says stop."""
        t = self.spec.train
        metrics = {}
        if self.ctx.is_main:
            self.progress.note(phase="validate")
            metrics = evaluate(
                self.model, self.val_set, self.spec, self.rare, self.device, self.autocast
            )
            miou = metrics["miou"] or 0.0
            improved = miou > self.best["miou"] + t.early_stop_min_delta
            if improved:
                self.best = {"miou": miou, "step": self.step}
                _save_best(self.run_dir / "checkpoints" / "best.pt", self.model, self.step, miou)
                self.bad_validations = 0
            else:
                self.bad_validations += 1
            self.progress.log(
                self.step,
                "val",
                miou=miou,
                binary_miou=metrics["binary_miou"],
                coarse_miou=metrics["coarse_miou"],
                rare_miou=metrics["rare_miou"],
                per_class_iou=metrics["per_class_iou"],
            )
            self.progress.update(self.step, val_miou=miou)
            self.progress.note(best_val_miou=self.best["miou"], best_step=self.best["step"])
        from jobs.distributed import broadcast_object

        self.bad_validations = broadcast_object(self.bad_validations)
        return t.early_stop_patience is not None and self.bad_validations >= t.early_stop_patience

    def _iterate_loader(self) -> Iterator[dict[str, Any]]:
        # With workers and no pin-memory thread (CPU), receiving a batch would otherwise be the
        # training thread's work (jobs/data/prefetch.py). Without workers the loading itself
        # would move into the thread and contend for the GIL: left in line.
        if self.loader.num_workers and not self.loader.pin_memory:
            return ThreadPrefetcher(self.loader)
        return iter(self.loader)

    def close(self) -> None:
        if isinstance(self._batches, ThreadPrefetcher):
            self._batches.close()
        self.ckpt.close()

    def train(self) -> Outcome:
        t = self.spec.train
        # After resume: a loader iterator with workers starts drawing from the sampler at once,
        # so the sampler must already stand at the saved position.
        self.resume()
        batches = self._batches = self._iterate_loader()
        self.model.train()
        last_ckpt_time = time.monotonic()
        bar = tqdm(
            total=t.steps,
            initial=self.step,
            desc=self.ctx.run.run_id,
            mininterval=5,
            disable=not self.ctx.is_main,
            dynamic_ncols=True,
        )
        stopped_early = False
        t_log, n_log = time.perf_counter(), 0
        while self.step < t.steps:
            losses = []
            for _ in range(t.accum_steps):
                batch = next(batches)
                losses.append(self._micro_step(batch, 1.0 / t.accum_steps))
                self.sampler_state = resume_state(batch)
            grad_norm = self._optimizer_step()
            self.step += 1
            n_log += 1
            bar.update(1)
            if self.step % t.log_every_steps == 0 or self.step == t.steps:
                loss = float(torch.stack(losses).mean())
                elapsed = time.perf_counter() - t_log
                rate = (
                    n_log * t.batch_size * t.accum_steps * self.dist.world_size / max(elapsed, 1e-9)
                )
                lr = self.optimizer.param_groups[-1]["lr"]
                self.progress.log(
                    self.step,
                    "train",
                    loss=loss,
                    lr=lr,
                    grad_norm=grad_norm,
                    samples_per_s=round(rate, 2),
                    epoch=self.sampler_state["epoch"],
                )
                self.progress.update(self.step, epoch=self.sampler_state["epoch"], loss=loss)
                bar.set_postfix(loss=f"{loss:.3f}", refresh=False)
                t_log, n_log = time.perf_counter(), 0
            if self.step % t.val_every_steps == 0 or self.step == t.steps:
                stopped_early = self.validate()
            due = (
                self.step % t.checkpoint_every_steps == 0
                or time.monotonic() - last_ckpt_time > 60 * t.checkpoint_every_min
            )
            if self._stop_requested():
                self.save(blocking=True)
                bar.close()
                self.progress.event(self.step, "stopped", reason=self.ctx.stop.reason)
                self.progress.close(phase="stopped")
                return Outcome("stopped", self.step, self.ctx.stop.reason)
            if due or stopped_early:
                self.save(blocking=False)
                last_ckpt_time = time.monotonic()
            if stopped_early:
                self.progress.event(self.step, "early_stop", best_step=self.best["step"])
                break
        bar.close()
        self.ckpt.wait()
        if self.ctx.is_main:
            self.finish(stopped_early)
        self.progress.close()
        return Outcome("completed", self.step)

    # -- the end -------------------------------------------------------------------------------

    def finish(self, stopped_early: bool) -> None:
        self.progress.note(phase="test")
        which = "last"
        best_path = self.run_dir / "checkpoints" / "best.pt"
        if best_path.is_file():
            best = torch.load(best_path, map_location=self.device, weights_only=True)
            self.model.load_state_dict(best["model"])
            which = "best"
        metrics = evaluate(
            self.model,
            self.test_set,
            self.spec,
            self.rare,
            self.device,
            self.autocast,
            all_clean_baseline=True,
        )
        samples = save_samples(
            self.model,
            self.test_set,
            self.spec,
            self.run_dir / "figures" / "samples",
            self.device,
            self.autocast,
            self.spec.train.overlays,
        )
        state = self.ctx.run.state()
        wall = time.time() - self.ctx.started
        results = {
            "run_id": self.ctx.run.run_id,
            "kind": self.spec.kind,
            "backbone": self.spec.backbone_short,
            "checkpoint": which,
            "step": self.best["step"] if which == "best" else self.step,
            "final_step": self.step,
            "early_stopped": stopped_early,
            "split": "test",
            "protocol": self.spec.data.protocol,
            "fold": self.spec.data.fold,
            "held_out": self.fold.held_out,
            "fold_sizes": self.fold.sizes,
            **{
                k: metrics[k]
                for k in (
                    "miou",
                    "binary_miou",
                    "coarse_miou",
                    "rare_miou",
                    "per_class_iou",
                    "per_class_f1",
                    "confusion",
                    "rare_classes",
                    "baseline_all_clean_miou",
                    "pixel_accuracy",
                    "per_coarse_iou",
                )
            },
            "confusion_normalization": "true (rows sum to 1)",
            "val": {"best_miou": self.best["miou"], "best_step": self.best["step"]},
            "compute": {
                "wall_s": round(wall, 1),
                "restarts": state.get("restarts", 0),
                "device": str(self.device),
                "world_size": self.dist.world_size,
            },
            "samples": samples,
            "class_names": list(metrics["per_class_iou"]),
        }
        atomic_write_json(self.run_dir / "results.json", results)
        _print_report(results)


def _print_report(results: dict[str, Any]) -> None:
    lines = [
        f"test mIoU {results['miou']:.4f} ({results['checkpoint']} checkpoint, step "
        f"{results['step']}); predicting Clean everywhere: "
        f"{results['baseline_all_clean_miou']:.4f}",
        f"binary mIoU {results['binary_miou']}; rare-class mIoU {results['rare_miou']}",
    ]
    for name, iou in results["per_class_iou"].items():
        f1 = results["per_class_f1"][name]
        lines.append(
            f"  {name:<14} IoU {'   -  ' if iou is None else f'{iou:.4f}'}  "
            f"F1 {'   -  ' if f1 is None else f'{f1:.4f}'}"
        )
    print("\n".join(lines), flush=True)


def run(ctx: JobContext) -> Outcome:
    trainer = _Trainer(ctx)
    try:
        return trainer.train()
    finally:
        trainer.close()
