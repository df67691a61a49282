"""The adapt kind: a trained run's weights, fine-tuned on k images of its held-out domain and
scored on the rest of that domain.

A task on the shared engine, with the multiclass kind's model, loss and evaluation
(jobs/multiclass/evaluate.py). What it adds: the source's weights (its selected `best.pt`, else
its newest complete step checkpoint), the support set drawn from the source's held-out domain
(jobs/adapt/support.py), the choice of parameters that adapt, and results that name the source,
the shots and the support ids. The held-out images outside the support set (the query set) are
scored once, at the end; they never select anything: the one validation, after the last step, is
on the support images.

The schedule comes from the `adapt` section: `adapt.steps` steps at a constant `adapt.lr`, one
batch of `train.batch_size` support crops per step, no warmup, no early stopping, 0 steps for
0 shots (the source evaluated as is). The task hands the engine that schedule through
`Task.train_spec`: a copy of the `train` section (the source's batch size, amp, clipping and
checkpoint cadence) with the schedule's fields replaced; the spec itself, spec.yaml and the run
id keep both sections as given.
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
from hcli.spec import AdaptSpec, TrainSpec
from jobs.adapt.support import draw_support, held_out_of, source_of
from jobs.data import build_eval_dataset, build_train_loader
from jobs.engine import run_task
from jobs.hierarchy import fine_to_coarse_lut
from jobs.models import build_segmenter
from jobs.models.prototypes import prototype_term, save_attention_figures
from jobs.multiclass.evaluate import evaluate, save_samples
from jobs.segmentation import build_criterion, init_transductive, to_device
from jobs.task import Env, Feed, Fetch, Task, TrainState

__all__ = ["AdaptTask", "adaptation_schedule", "adapted_parameters", "run"]

# The test figures of results.json, as the multiclass kind writes them.
_TEST_KEYS = ("miou", "binary_miou", "coarse_miou", "rare_miou", "per_class_iou", "per_class_f1",
              "confusion", "rare_classes", "baseline_all_clean_miou", "pixel_accuracy",
              "per_coarse_iou")


def adapted_parameters(model: torch.nn.Module, which: str) -> list[str]:
    """Names of the parameters that adapt: `all`, `decoder` (decoder and heads) or `heads`."""
    names = [n for n, _ in model.named_parameters()]
    if which == "all":
        return names
    if which == "decoder":
        return [n for n in names if not n.startswith("encoder.")]
    if which == "heads":
        return [n for n in names if n.startswith("heads.")]
    raise ValueError(f"adapt.params={which!r}; use all, decoder or heads")


def adaptation_schedule(train: TrainSpec, adapt: AdaptSpec) -> TrainSpec:
    """`train` with the adapt section's schedule: a copy, the spec's own section untouched.

    Unvalidated (`model_copy`): 0 steps (0 shots) and poly power 0 (a constant rate) are outside
    what a `train` section accepts from a user, and are right here.
    """
    steps = adapt.steps if adapt.shots else 0
    # One support batch per step whatever the source accumulated (a meta source accumulates
    # its tasks): ERM and meta sources adapt alike.
    return train.model_copy(update={
        "steps": steps, "lr": adapt.lr, "warmup_steps": 0, "accum_steps": 1,
        "schedule": "poly", "poly_power": 0.0,
        "val_every_steps": max(steps, 1), "early_stop_patience": None,
    })


class AdaptTask(Task):
    metric = "support_miou"
    mode = "max"

    def __init__(self, env: Env) -> None:
        super().__init__(env)
        a = self.spec.adapt
        assert a.source_run is not None  # the spec's cross-field rule
        self.source, self.source_spec = source_of(a.source_run, env.run_dir.parent)
        self.params = a.params or getattr(self.source_spec.meta, "inner_params", None) or "all"

    def train_spec(self) -> TrainSpec:
        return adaptation_schedule(self.spec.train, self.spec.adapt)

    def build_feeds(self) -> dict[str, Feed]:
        spec, env, src = self.spec, self.env, self.source_spec
        self.manifest = load_manifest(spec.data.root)
        # The source's fold (its seed drew its validation split), not one drawn with ours.
        self.fold = get_fold(self.manifest, src.data, src.seed)
        held_out = held_out_of(self.source, src, self.manifest)
        self.support = draw_support(held_out, spec.adapt.shots, spec.seed)
        chosen = set(self.support)
        self.query = [i for i in held_out if i not in chosen]
        self.rare = rare_classes(class_table(self.manifest, self.fold.train))
        self.weights = None
        if spec.loss.class_weights != "none":
            self.weights = class_weights(self.manifest, spec.loss.class_weights,
                                         clip=spec.loss.weight_clip, ids=self.fold.train)
        self.test_set = build_eval_dataset(spec, self.manifest, self.query)
        self.val_set = build_eval_dataset(spec, self.manifest, self.support)
        if not self.support:
            return {}
        lut = fine_to_coarse_lut(spec.model.coarse_groups)
        loader, sampler = build_train_loader(
            spec, self.manifest, self.support, rank=env.rank, world_size=env.world_size,
            pin_memory=env.device.type == "cuda",
            target_lut=lut if spec.model.hierarchical else None,
        )
        return {"train": Feed(loader, sampler)}

    def build_model(self) -> torch.nn.Module:
        from jobs.init_from import _source

        spec = self.spec
        # The source's weights replace every parameter: no pretrained download, no init_from.
        model = build_segmenter(spec.model, spec.data.crop_size, pretrained=False)
        path, _ = _source(self.source.run_id, self.env.run_dir.parent)
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state.get("model", state))
        self.weights_from = str(path)
        print(f"adapting {self.source.run_id} ({path.name}) on {len(self.support)} support "
              f"image(s), {len(self.query)} to score", flush=True)
        self.criterion = build_criterion(spec, self.weights, self.env.device)
        adapted = set(adapted_parameters(model, self.params))
        for name, p in model.named_parameters():
            p.requires_grad_(name in adapted)
        self.model = model
        # Frozen parts keep the source's normalisation statistics (eval mode in every step).
        self.frozen = [m for m in (model.encoder, model.decoder)
                       if not any(p.requires_grad for p in m.parameters())]
        return model

    def param_groups(self, model: torch.nn.Module) -> list[dict[str, Any]]:
        # One rate for every adapted parameter (as in the meta inner loop), no weight decay.
        groups: list[dict[str, Any]] = model.param_groups(  # type: ignore[operator]
            self.spec.adapt.lr, 1.0, 0.0)
        return groups

    def provenance(self) -> dict[str, Any]:
        return {"train_ids": self.support, "val_ids": self.support, "test_ids": self.query,
                "init_from": [self.source.run_id]}

    def micro_step(self, fetch: Fetch, forward: Callable[..., Any]) -> torch.Tensor:
        for module in self.frozen:
            module.eval()
        images, targets = to_device(fetch("train"), self.spec, self.env.device)
        with self.env.autocast():
            outputs = forward(images)
        loss, _ = self.criterion(outputs, targets)
        # A source with prototype attention adapts with its auxiliary loss too, as the meta
        # inner loop rehearsed it (the prototypes adapt with `decoder` and `all`, not `heads`).
        extra = prototype_term(getattr(self.model, "attention", None), outputs, targets)
        if extra is not None:
            loss = loss + self.spec.model.prototypes.loss_weight * extra
        return loss

    def _evaluate(self, model: torch.nn.Module, dataset: Any, **kw: Any) -> dict[str, Any]:
        return evaluate(model, dataset, self.spec, self.rare, self.env.device, self.env.autocast,
                        **kw)

    def validate(self, model: torch.nn.Module) -> dict[str, Any]:
        m = self._evaluate(model, self.val_set)
        return {"support_miou": m["miou"] or 0.0}

    def finish(self, model: torch.nn.Module, state: TrainState) -> dict[str, Any]:
        metrics = self._evaluate(model, self.test_set, all_clean_baseline=True)
        samples = save_samples(model, self.test_set, self.spec,
                               self.env.run_dir / "figures" / "samples", self.env.device,
                               self.env.autocast, self.spec.train.overlays)
        if self.spec.model.attention == "prototypes":
            save_attention_figures(model, self.test_set, self.spec.data.crop_size,
                                   self.env.run_dir / "figures" / "prototypes", self.env.device,
                                   self.spec.train.overlays, list(CLASS_NAMES))
        a, src = self.spec.adapt, self.source.results() or {}
        init = init_transductive(self.env.run_dir)  # a chain run (meta, MAE) saw the query
        return {
            "selected_on_test": False,
            "split": "held-out query (support excluded)",
            "protocol": self.spec.data.protocol,
            "fold": self.spec.data.fold,
            "held_out": self.fold.held_out,
            "fold_sizes": {**self.fold.sizes, "support": len(self.support),
                           "query": len(self.query)},
            **{k: metrics[k] for k in _TEST_KEYS},
            "confusion_normalization": "true (rows sum to 1)",
            "samples": samples,
            "class_names": list(metrics["per_class_iou"]),
            "source_run": self.source.run_id,
            "source_kind": self.source_spec.kind,
            "source_val_miou": (src.get("val") or {}).get("best_miou"),
            "source_test_miou": src.get("miou"),
            "source_transductive": bool(getattr(self.source_spec.meta, "transductive", False))
            or init["transductive"],
            **init,
            "shots": a.shots,
            "adapt_steps": self.train_spec().steps,
            "adapt_lr": a.lr,
            "params": self.params,
            "support_ids": sorted(self.support),
            "query_size": len(self.query),
            # Its only validation is on the support images (val.best_support_miou).
            "val": {"best_miou": None, "last_miou": None},
        }

    def report(self, results: dict[str, Any]) -> None:
        print(f"{results['shots']}-shot adaptation of {results['source_run']} "
              f"({results['source_kind']}, {results['params']} parameters, "
              f"{results['adapt_steps']} steps): held-out mIoU {results['miou']:.4f} on "
              f"{results['query_size']} query image(s); the source scored "
              f"{results['source_test_miou']} on the whole held-out domain and "
              f"{results['source_val_miou']} in domain (val)", flush=True)


run = functools.partial(run_task, task_cls=AdaptTask)
