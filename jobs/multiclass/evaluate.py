"""Evaluation of a segmenter on whole images: sliding windows, metrics, overlays."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hcli.spec import Spec
from jobs.data import IMAGENET_MEAN, IMAGENET_STD, EvalDataset
from jobs.metrics import SegMetrics, overlay, sliding_window_predict

__all__ = ["evaluate", "save_samples"]


def _window(spec: Spec) -> tuple[int, int]:
    window = spec.data.eval_window or spec.data.crop_size
    return window, max(32, (window * 2) // 3)


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    dataset: EvalDataset,
    spec: Spec,
    rare: Sequence[str],
    device: torch.device,
    autocast: Any,
    *,
    all_clean_baseline: bool = False,
    max_images: int | None = None,
) -> dict[str, Any]:
    """Metrics of `model` over `dataset` (and, optionally, of predicting Clean everywhere)."""
    was_training = model.training
    model.eval()
    metrics = SegMetrics(coarse_groups=spec.model.coarse_groups, rare_classes=rare)
    baseline = SegMetrics(coarse_groups=spec.model.coarse_groups, rare_classes=rare)
    window, stride = _window(spec)
    n = len(dataset) if max_images is None else min(max_images, len(dataset))
    for i in range(n):
        item = dataset[i]
        image = item["image"].unsqueeze(0).to(device)
        with autocast():
            logits = sliding_window_predict(model, image, window, stride)
        metrics.update(logits.argmax(1).cpu(), item["mask"].unsqueeze(0))
        if all_clean_baseline:
            baseline.update(torch.zeros_like(item["mask"]).unsqueeze(0), item["mask"].unsqueeze(0))
    model.train(was_training)
    out = metrics.compute()
    if all_clean_baseline:
        out["baseline_all_clean_miou"] = baseline.compute()["miou"]
    return out


def _to_uint8(image: torch.Tensor) -> np.ndarray:
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    rgb = (image * std + mean).clamp(0, 1) * 255
    return rgb.round().byte().permute(1, 2, 0).numpy()


@torch.no_grad()
def save_samples(
    model: torch.nn.Module,
    dataset: EvalDataset,
    spec: Spec,
    out_dir: Path,
    device: torch.device,
    autocast: Any,
    count: int,
) -> list[str]:
    """figures/samples/<id>_{image,truth,pred}.png for the first `count` images (for collect)."""
    from PIL import Image

    model.eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    window, stride = _window(spec)
    written = []
    for i in range(min(count, len(dataset))):
        item = dataset[i]
        with autocast():
            logits = sliding_window_predict(
                model, item["image"].unsqueeze(0).to(device), window, stride
            )
        rgb = _to_uint8(item["image"])
        pred = logits.argmax(1)[0].cpu()
        Image.fromarray(rgb).save(out_dir / f"{item['id']}_image.png")
        Image.fromarray(overlay(rgb, item["mask"], alpha=1.0)).save(
            out_dir / f"{item['id']}_truth.png"
        )
        Image.fromarray(overlay(rgb, pred, alpha=1.0)).save(out_dir / f"{item['id']}_pred.png")
        written.append(item["id"])
    return written
