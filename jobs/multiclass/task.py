"""The multiclass kind: UPerNet over a timm encoder, segmenting 16 damage classes.

A task on the shared engine (jobs.engine): this module says only what is particular to it: the
fold's crops as the one training feed, the segmenter and its loss, sliding-window validation by
mIoU, and the test-set evaluation that becomes results.json.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch

from hcli.data.manifest import load_manifest
from hcli.data.splits import get_fold
from hcli.data.stats import class_table, class_weights, rare_classes
from jobs.data import build_eval_dataset, build_train_loader
from jobs.engine import run_task
from jobs.hierarchy import fine_to_coarse_lut
from jobs.losses import SegLoss
from jobs.models import build_segmenter
from jobs.multiclass.evaluate import evaluate, save_samples
from jobs.task import Feed, Fetch, Task, TrainState

__all__ = ["MulticlassTask", "run"]

_TEST_KEYS = (
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


class MulticlassTask(Task):
    metric = "miou"
    mode = "max"

    def build_feeds(self) -> dict[str, Feed]:
        spec, env = self.spec, self.env
        self.manifest = load_manifest(spec.data.root)
        self.fold = get_fold(self.manifest, spec.data, spec.seed)
        train_ids = self.fold.train
        self.rare = rare_classes(class_table(self.manifest, train_ids))
        self.weights = None
        if spec.loss.class_weights != "none":
            self.weights = class_weights(self.manifest, spec.loss.class_weights,
                                         clip=spec.loss.weight_clip, ids=train_ids)
        # Hierarchical targets are derived in the loader's workers, off the training step.
        lut = fine_to_coarse_lut(spec.model.coarse_groups)
        loader, sampler = build_train_loader(
            spec, self.manifest, train_ids, rank=env.rank, world_size=env.world_size,
            pin_memory=env.device.type == "cuda",
            target_lut=lut if spec.model.hierarchical else None,
        )
        self.val_set = build_eval_dataset(spec, self.manifest, self.fold.val or self.fold.test)
        self.test_set = build_eval_dataset(spec, self.manifest, self.fold.test)
        return {"train": Feed(loader, sampler)}

    def build_model(self) -> torch.nn.Module:
        spec = self.spec
        model = build_segmenter(spec.model, spec.data.crop_size)
        if spec.model.init_from:
            from jobs.init_from import load_init_weights

            source = load_init_weights(model, spec, self.manifest, self.fold.test,
                                       self.env.run_dir.parent)
            print(f"encoder initialised from {source}", flush=True)
        n_coarse = 1 + len(spec.model.coarse_groups) if spec.model.hierarchical else None
        self.criterion = SegLoss(spec.loss, self.weights, spec.model.hierarchical,
                                 n_coarse).to(self.env.device)
        return model

    def provenance(self) -> dict[str, Any]:
        init = self.spec.model.init_from
        return {"train_ids": self.fold.train, "val_ids": self.fold.val or self.fold.test,
                "test_ids": self.fold.test, "init_from": [str(init)] if init else []}

    def micro_step(self, fetch: Fetch, forward: Callable[..., Any]) -> torch.Tensor:
        batch = fetch("train")
        device = self.env.device
        images = batch["image"].to(device, non_blocking=True)
        if self.spec.train.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        # uint8 labels (the loss widens them on the device, an eighth of the transfer).
        if self.spec.model.hierarchical:
            targets = {k: v.to(device, non_blocking=True) for k, v in batch["targets"].items()}
        else:
            targets = batch["mask"].to(device, non_blocking=True)
        with self.env.autocast():
            outputs = forward(images)
        loss, _ = self.criterion(outputs, targets)
        return loss

    def _evaluate(self, model: torch.nn.Module, dataset: Any, **kw: Any) -> dict[str, Any]:
        return evaluate(model, dataset, self.spec, self.rare, self.env.device, self.env.autocast,
                        **kw)

    def validate(self, model: torch.nn.Module) -> dict[str, Any]:
        m = self._evaluate(model, self.val_set)
        return {"miou": m["miou"] or 0.0,
                **{k: m[k] for k in ("binary_miou", "coarse_miou", "rare_miou", "per_class_iou")}}

    def finish(self, model: torch.nn.Module, state: TrainState) -> dict[str, Any]:
        metrics = self._evaluate(model, self.test_set, all_clean_baseline=True)
        samples = save_samples(model, self.test_set, self.spec,
                               self.env.run_dir / "figures" / "samples", self.env.device,
                               self.env.autocast, self.spec.train.overlays)
        return {
            "split": "test",
            "protocol": self.spec.data.protocol,
            "fold": self.spec.data.fold,
            "held_out": self.fold.held_out,
            "fold_sizes": self.fold.sizes,
            **{k: metrics[k] for k in _TEST_KEYS},
            "confusion_normalization": "true (rows sum to 1)",
            "samples": samples,
            "class_names": list(metrics["per_class_iou"]),
        }

    def report(self, results: dict[str, Any]) -> None:
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


run = functools.partial(run_task, task_cls=MulticlassTask)
