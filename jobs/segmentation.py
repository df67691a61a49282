"""What the segmentation kinds (multiclass, meta, adapt) share: the segmenter with its loss built
from a spec, a batch moved to the device, and the criterion's class weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from hcli.data.manifest import Manifest
from hcli.spec import Spec
from jobs.losses import SegLoss
from jobs.models import build_segmenter
from jobs.models.segmenter import Segmenter

__all__ = ["SELECTED_ON_TEST", "build_criterion", "build_model_and_init", "init_transductive",
           "test_results",
           "to_device", "transductive_line"]


def build_criterion(spec: Spec, weights: Any, device: torch.device) -> SegLoss:
    """The loss of spec.loss over the fine head (and the coarse and binary heads when
    hierarchical), with the fold's class weights."""
    n_coarse = 1 + len(spec.model.coarse_groups) if spec.model.hierarchical else None
    return SegLoss(spec.loss, weights, spec.model.hierarchical, n_coarse).to(device)


def build_model_and_init(spec: Spec, manifest: Manifest, test_ids: list[str],
                         runs_root: Path) -> Segmenter:
    """The segmenter, its encoder initialised from `model.init_from` when the spec says so (the
    leakage guard refuses a source that saw `test_ids`)."""
    model = build_segmenter(spec.model, spec.data.crop_size)
    if spec.model.init_from:
        from jobs.init_from import load_init_weights

        source = load_init_weights(model, spec, manifest, test_ids, runs_root)
        print(f"encoder initialised from {source}", flush=True)
    return model


def to_device(batch: dict[str, Any], spec: Spec, device: torch.device) -> tuple[torch.Tensor, Any]:
    """(images, targets) of a training batch on `device`: images channels_last when asked for,
    targets the fine mask or, for hierarchical heads, the loader's derived dict of masks. Labels
    stay uint8 (the loss widens them on the device, an eighth of the transfer)."""
    images = batch["image"].to(device, non_blocking=True)
    if spec.train.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    targets: Any
    if spec.model.hierarchical:
        targets = {k: v.to(device, non_blocking=True) for k, v in batch["targets"].items()}
    else:
        targets = batch["mask"].to(device, non_blocking=True)
    return images, targets


def test_results(spec: Spec, fold: Any, metrics: dict[str, Any], samples: Any,
                 keys: tuple[str, ...]) -> dict[str, Any]:
    """The part of results.json every segmentation kind writes for its test evaluation."""
    return {
        "split": "test",
        "protocol": spec.data.protocol,
        "fold": spec.data.fold,
        "held_out": fold.held_out,
        "fold_sizes": fold.sizes,
        **{k: metrics[k] for k in keys},
        "confusion_normalization": "true (rows sum to 1)",
        "samples": samples,
        "class_names": list(metrics["per_class_iou"]),
    }


def init_transductive(run_dir: Path) -> dict[str, Any]:
    """results.json's `transductive` and `init_transductive`: whether a run of the
    model.init_from chain saw this run's test images (an MAE run with mae.images=all, under
    model.init_allow_test_overlap), naming it; read from the run's provenance.json."""
    from hcli.runs import Run
    from jobs.provenance import init_saw_test

    via = init_saw_test(Run(run_dir))
    return {"transductive": via is not None, "init_transductive": via}


SELECTED_ON_TEST = ("TRANSDUCTIVE: the fold has no validation images (data.val_fraction=0), so "
                    "checkpoints are selected on its test images; the score is not a held-out "
                    "score")


def transductive_line(results: dict[str, Any]) -> str | None:
    """The log's loud line for a score whose test images were seen before it: by an init_from
    source, or by checkpoint selection (no validation images)."""
    if results.get("selected_on_test"):
        return SELECTED_ON_TEST
    via = results.get("init_transductive")
    if via is None:
        return None
    return (f"TRANSDUCTIVE: run {via} of the model.init_from chain trained on this run's test "
            "images (model.init_allow_test_overlap); the score is not a held-out score")
