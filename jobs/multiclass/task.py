"""The multiclass kind: UPerNet over a timm encoder, segmenting 16 damage classes.

A task on the shared engine (jobs.engine): this module says only what is particular to it: the
fold's crops as the one training feed, the segmenter and its loss, sliding-window validation by
mIoU, and the test-set evaluation that becomes results.json. Two options (docs/innovations.md):
prototype attention (model.attention) adds its auxiliary loss and is initialised from the fold's
training pixels; a curriculum (train.curriculum) sets which heads carry loss at each step.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch

from hcli.classes import CLASS_NAMES
from hcli.data.manifest import load_manifest
from hcli.data.splits import get_fold
from hcli.data.stats import class_table, class_weights, rare_classes
from jobs.curriculum import Curriculum
from jobs.data import build_eval_dataset, build_train_loader
from jobs.engine import run_task
from jobs.hierarchy import fine_to_coarse_lut
from jobs.models.prototypes import (
    init_segmenter_prototypes,
    prototype_term,
    save_attention_figures,
)
from jobs.models.segmenter import Segmenter
from jobs.multiclass.evaluate import evaluate, save_samples
from jobs.segmentation import (
    SELECTED_ON_TEST,
    build_criterion,
    build_model_and_init,
    init_transductive,
    test_results,
    to_device,
    transductive_line,
)
from jobs.task import Feed, Fetch, Task, TaskEvent, TrainState

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
        if not self.fold.val and self.env.is_main:
            print(SELECTED_ON_TEST, flush=True)  # and in results.json (selected_on_test)
        self.test_set = build_eval_dataset(spec, self.manifest, self.fold.test)
        return {"train": Feed(loader, sampler)}

    def build_model(self) -> torch.nn.Module:
        spec = self.spec
        model = build_model_and_init(spec, self.manifest, self.fold.test, self.env.run_dir.parent)
        self.criterion = build_criterion(spec, self.weights, self.env.device)
        self.model = model
        self.micro = 0  # micro-batches trained: the curriculum's clock, restored on resume
        self.curriculum = Curriculum.from_spec(spec.train)
        self._stage_applied: int | None = None
        self._proto_loss: list[torch.Tensor] = []
        if self.curriculum is not None:
            self._check_curriculum()
        return model

    def on_start(self, model: torch.nn.Module, resumed: bool) -> None:
        # Once per run: a resumed run has its prototypes in the checkpoint (whether or not a
        # damaged newer one was skipped); a run whose every checkpoint was damaged starts afresh.
        spec = self.spec
        if (not resumed and spec.model.attention == "prototypes"
                and spec.model.prototypes.init == "kmeans"):
            assert isinstance(model, Segmenter)
            self._init_prototypes(model)

    def _init_prototypes(self, model: Segmenter) -> None:
        """k-means over the fold's training pixels (the fold's training ids only)."""
        train_set = build_eval_dataset(self.spec, self.manifest, self.fold.train)
        init_segmenter_prototypes(model, train_set, self.spec.data.crop_size, self.env.device,
                                  self.env.autocast, self.spec.seed)

    def _check_curriculum(self) -> None:
        from hcli.errors import UserError

        if self.env.world_size > 1 and self.spec.train.curriculum_freeze_encoder:
            raise UserError("train.curriculum_freeze_encoder does not work with several "
                            "processes (DDP expects every gradient); leave it empty")

    def lr_scale(self) -> float:
        return self.curriculum.lr_mult if self.curriculum is not None else 1.0

    def _enter_stage(self, step: int) -> None:
        """At each optimizer step's first micro-batch: move to the step's stage and apply it."""
        cur = self.curriculum
        assert cur is not None
        t = self.spec.train
        if self.env.world_size > 1 and cur.plateau and step and step % t.val_every_steps == 0:
            from jobs.distributed import broadcast_object

            cur.load_state_dict(broadcast_object(cur.state_dict()))  # main rank validated
        cur.advance(step)
        if self._stage_applied == cur.index:
            return
        for p in self.model.encoder.parameters():
            p.requires_grad_(not cur.encoder_frozen)
        # A stage that begins at this step is an event; one re-entered on resume only sets
        # progress.json and the log.
        begins = cur.start_step == step
        why = {"schedule": ": its share of train.steps is done",
               "plateau": ": its validation figure stopped improving"}.get(cur.cause, "")
        before = f" (stage {cur.stages[cur.index - 1]} ended{why})" if cur.index else ""
        where = f"{cur.stage} {cur.index + 1}/{len(cur.stages)}"
        message = (f"curriculum stage {where} {'begins' if begins else 'resumed'}{before}; "
                   f"heads {cur.head_weights(self.spec.loss)}, lr x{cur.lr_mult}"
                   f"{', encoder frozen' if cur.encoder_frozen else ''}")
        self.emit(TaskEvent(step, "stage" if begins else None, message,
                            fields={"stage": cur.stage, "reason": cur.cause},
                            progress={"curriculum": cur.progress()}, tag=where))
        self._stage_applied = cur.index

    def provenance(self) -> dict[str, Any]:
        init = self.spec.model.init_from
        return {"train_ids": self.fold.train, "val_ids": self.fold.val or self.fold.test,
                "test_ids": self.fold.test, "init_from": [str(init)] if init else []}

    def micro_step(self, fetch: Fetch, forward: Callable[..., Any]) -> torch.Tensor:
        accum = self.spec.train.accum_steps
        if self.curriculum is not None and self.micro % accum == 0:
            self._enter_stage(self.micro // accum)
        self.micro += 1
        images, targets = to_device(fetch("train"), self.spec, self.env.device)
        with self.env.autocast():
            outputs = forward(images)
        weights = None if self.curriculum is None else self.curriculum.head_weights(self.spec.loss)
        loss, _ = self.criterion(outputs, targets, weights)
        extra = prototype_term(self.model.attention, outputs, targets)
        if extra is not None:
            self._proto_loss.append(extra.detach())
            loss = loss + self.spec.model.prototypes.loss_weight * extra
        return loss

    def train_logs(self) -> dict[str, Any]:
        logs: dict[str, Any] = {}
        if self.curriculum is not None:
            logs["stage"] = self.curriculum.index
        if self._proto_loss:
            logs["prototype_loss"] = float(torch.stack(self._proto_loss).mean())
            self._proto_loss = []
        return logs

    def state_dict(self) -> dict[str, Any]:
        if self.curriculum is None:
            return {}
        return {"micro": self.micro, "curriculum": self.curriculum.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.curriculum is not None:
            self.micro = int(state["micro"])
            self.curriculum.load_state_dict(state["curriculum"])

    def _evaluate(self, model: torch.nn.Module, dataset: Any, **kw: Any) -> dict[str, Any]:
        return evaluate(model, dataset, self.spec, self.rare, self.env.device, self.env.autocast,
                        **kw)

    def validate(self, model: torch.nn.Module) -> dict[str, Any]:
        m = self._evaluate(model, self.val_set)
        cur = self.curriculum
        if cur is not None and cur.plateaued(m):
            cur.end_stage(self.micro // self.spec.train.accum_steps)  # announced as it begins
        return {"miou": m["miou"] or 0.0,
                **{k: m[k] for k in ("binary_miou", "coarse_miou", "rare_miou", "per_class_iou")}}

    def finish(self, model: torch.nn.Module, state: TrainState) -> dict[str, Any]:
        metrics = self._evaluate(model, self.test_set, all_clean_baseline=True)
        samples = save_samples(model, self.test_set, self.spec,
                               self.env.run_dir / "figures" / "samples", self.env.device,
                               self.env.autocast, self.spec.train.overlays)
        if self.spec.model.attention == "prototypes":
            save_attention_figures(model, self.test_set, self.spec.data.crop_size,
                                   self.env.run_dir / "figures" / "prototypes", self.env.device,
                                   self.spec.train.overlays, list(CLASS_NAMES))
        seen = init_transductive(self.env.run_dir)
        on_test = not self.fold.val
        return {
            **test_results(self.spec, self.fold, metrics, samples, _TEST_KEYS),
            **seen, "transductive": seen["transductive"] or on_test, "selected_on_test": on_test,
        }

    def report(self, results: dict[str, Any]) -> None:
        loud = transductive_line(results)
        lines = [] if loud is None else [loud]
        lines += [
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
