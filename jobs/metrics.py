"""Evaluation: confusion-matrix metrics, sliding-window inference, prediction overlays.

Definitions (label 255 is ignored everywhere; rows of a confusion matrix are truth, columns
prediction; TP/FP/FN per class from the accumulated matrix over the whole evaluation set):
- IoU_c = TP / (TP + FP + FN), F1_c = 2 TP / (2 TP + FP + FN); both None (JSON null) for a class
  absent from both truth and prediction, 0 for a class predicted but never true (or vice versa).
- mIoU = mean IoU over the classes whose IoU is defined (not None), Clean included.
- Coarse and binary (Clean vs damage) mIoU: the fine matrix is summed into coarse/binary blocks,
  i.e. they score the *fine* head's predictions mapped to groups. This is exact (the coarse label
  is a function of the fine one) and makes hierarchical and flat models comparable.
- Rare mIoU: mean IoU over the given rare classes (under 1 % of training pixels) that have a
  defined IoU; None if none has.
- confusion: row-normalised (each truth row sums to 1; a class absent from the truth has a row of
  zeros); `confusion_counts` keeps the raw pixel counts.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torchmetrics.classification import MulticlassConfusionMatrix

from hcli.classes import (
    BACKGROUND_COLOUR,
    CLASS_NAMES,
    DEFAULT_COARSE_GROUPS,
    IGNORE_INDEX,
    NUM_CLASSES,
    palette,
)
from hcli.errors import UserError
from jobs.hierarchy import coarse_names, fine_to_coarse_lut

__all__ = ["SegMetrics", "iou_f1_from_confusion", "sliding_window_predict", "overlay"]


def iou_f1_from_confusion(
    confusion: torch.Tensor,
) -> tuple[list[float | None], list[float | None]]:
    """Per-class IoU and F1 from a (C, C) count matrix (None where a class is nowhere)."""
    cm = confusion.double()
    tp = cm.diag()
    fp = cm.sum(0) - tp
    fn = cm.sum(1) - tp
    iou: list[float | None] = []
    f1: list[float | None] = []
    for t, p, n in zip(tp.tolist(), fp.tolist(), fn.tolist(), strict=True):
        union = t + p + n
        iou.append(t / union if union else None)
        f1.append(2 * t / (2 * t + p + n) if union else None)
    return iou, f1


def _mean(values: Sequence[float | None]) -> float | None:
    defined = [v for v in values if v is not None]
    return sum(defined) / len(defined) if defined else None


def _merge(confusion: torch.Tensor, lut: torch.Tensor, n: int) -> torch.Tensor:
    """Sum a fine (C, C) matrix into (n, n) blocks given fine id → group id."""
    onehot = torch.nn.functional.one_hot(lut, n).to(confusion.dtype)
    return onehot.T @ confusion @ onehot


class SegMetrics:
    """Accumulates a fine confusion matrix (torchmetrics) and derives every reported metric.

    update(preds, target): preds are logits (N,C,H,W) or labels (N,H,W); target (N,H,W) with 255
    ignored. compute() returns plain JSON-able values (see the module docstring).
    """

    def __init__(
        self,
        num_classes: int = NUM_CLASSES,
        ignore_index: int = IGNORE_INDEX,
        coarse_groups: Mapping[str, Sequence[str]] | None = None,
        rare_classes: Sequence[str | int] = (),
        class_names: Sequence[str] = CLASS_NAMES,
    ) -> None:
        self.num_classes = num_classes
        self.class_names = list(class_names)[:num_classes]
        groups = DEFAULT_COARSE_GROUPS if coarse_groups is None else coarse_groups
        self.coarse_names = coarse_names(groups)
        self._coarse_lut = fine_to_coarse_lut(groups)[:num_classes]
        self._binary_lut = (self._coarse_lut > 0).long()
        self.rare_ids = sorted({self._class_id(c) for c in rare_classes})
        # Evaluation runs on rank 0 alone while the other ranks wait in a collective, so
        # torchmetrics must not all-gather on compute() (it would deadlock under DDP).
        self.confmat = MulticlassConfusionMatrix(num_classes, ignore_index=ignore_index,
                                                 sync_on_compute=False)

    def _class_id(self, c: str | int) -> int:
        if isinstance(c, int):
            return c
        if c not in self.class_names:
            raise UserError(f"rare class {c!r} is not a class; use one of {self.class_names}")
        return self.class_names.index(c)

    def to(self, device: torch.device | str) -> SegMetrics:
        self.confmat = self.confmat.to(device)
        return self

    def reset(self) -> None:
        self.confmat.reset()

    @torch.no_grad()
    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        if preds.ndim == target.ndim + 1:
            preds = preds.argmax(1)
        self.confmat.update(preds, target.long())

    def compute(self) -> dict[str, Any]:
        if self.confmat.update_count == 0:  # torchmetrics warns on compute() before update()
            counts = torch.zeros(self.num_classes, self.num_classes, dtype=torch.long)
        else:
            counts = self.confmat.compute().long().cpu()
        iou, f1 = iou_f1_from_confusion(counts)
        coarse = _merge(counts, self._coarse_lut, len(self.coarse_names))
        coarse_iou, _ = iou_f1_from_confusion(coarse)
        binary_iou, _ = iou_f1_from_confusion(_merge(counts, self._binary_lut, 2))
        rows = counts.double().sum(1, keepdim=True)
        normalised = torch.where(rows > 0, counts.double() / rows.clamp_min(1), 0.0)
        total = int(counts.sum())
        return {
            "miou": _mean(iou),
            "per_class_iou": dict(zip(self.class_names, iou, strict=True)),
            "per_class_f1": dict(zip(self.class_names, f1, strict=True)),
            "binary_miou": _mean(binary_iou),
            "binary_iou": dict(zip(("Clean", "Damage"), binary_iou, strict=True)),
            "coarse_miou": _mean(coarse_iou),
            "per_coarse_iou": dict(zip(self.coarse_names, coarse_iou, strict=True)),
            "rare_classes": [self.class_names[i] for i in self.rare_ids],
            "rare_miou": _mean([iou[i] for i in self.rare_ids]),
            "pixel_accuracy": int(counts.diag().sum()) / total if total else None,
            "confusion": normalised.tolist(),
            "confusion_counts": counts.tolist(),
        }


@torch.no_grad()
def sliding_window_predict(
    model: Callable[[torch.Tensor], Any],
    image: torch.Tensor,
    window: int,
    stride: int,
    num_classes: int = NUM_CLASSES,
    head: str = "fine",
    batch_size: int = 4,
) -> torch.Tensor:
    """Logits (1, num_classes, H, W) for a whole image (1, 3, H, W), float32.

    Windows of `window` px every `stride` px, the last row/column flush with the image edge, their
    logits averaged where they overlap (mmseg's `slide_inference`); an image smaller than the
    window is zero-padded at the bottom/right (zero = the mean colour after normalisation) and the
    padding cropped off. Written here because MONAI's equivalent is not a dependency.
    """
    if image.ndim != 4 or image.shape[0] != 1:
        raise ValueError(f"image must be (1, 3, H, W), got {tuple(image.shape)}")
    if not 0 < stride <= window:
        raise ValueError(f"stride={stride} must be in 1..window ({window}) to cover the image")
    fixed = getattr(model, "fixed_input_size", None)
    if fixed is not None and fixed != window:
        raise UserError(
            f"data.eval_window={window} but this encoder only takes {fixed} px inputs; set "
            f"data.eval_window to {fixed} (the crop size) or leave it unset"
        )
    _, _, h, w = image.shape
    padded = torch.nn.functional.pad(image, (0, max(window - w, 0), 0, max(window - h, 0)))
    ph, pw = padded.shape[-2:]
    ys = _starts(ph, window, stride)
    xs = _starts(pw, window, stride)
    boxes = [(y, x) for y in ys for x in xs]
    logits = padded.new_zeros((1, num_classes, ph, pw), dtype=torch.float32)
    count = padded.new_zeros((1, 1, ph, pw), dtype=torch.float32)
    for i in range(0, len(boxes), batch_size):
        chunk = boxes[i : i + batch_size]
        crops = torch.cat([padded[..., y : y + window, x : x + window] for y, x in chunk])
        out = model(crops)
        out = out[head] if isinstance(out, Mapping) else out
        for (y, x), o in zip(chunk, out.float(), strict=True):
            logits[0, :, y : y + window, x : x + window] += o
            count[0, :, y : y + window, x : x + window] += 1
    return (logits / count)[..., :h, :w]


def _starts(size: int, window: int, stride: int) -> list[int]:
    n = max(math.ceil((size - window) / stride), 0) + 1
    return [min(i * stride, size - window) for i in range(n)]


def _colour_lut() -> np.ndarray:
    bg = tuple(int(BACKGROUND_COLOUR[i : i + 2], 16) for i in (1, 3, 5))
    lut = np.tile(np.array(bg, dtype=np.uint8), (256, 1))
    lut[: len(palette())] = np.array(palette(), dtype=np.uint8)
    return lut


def overlay(
    image: np.ndarray | torch.Tensor, mask: np.ndarray | torch.Tensor, alpha: float = 0.5
) -> np.ndarray:
    """An RGB uint8 (H, W, 3) blend of `image` (H, W, 3 uint8) and `mask` (H, W ids) coloured
    in the ARTeFACT palette; 255 (and any unknown id) gets the Background colour."""
    img = image.cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    ids = mask.cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"image must be (H, W, 3) uint8, got {img.shape} {img.dtype}")
    if ids.shape != img.shape[:2]:
        raise ValueError(f"mask shape {ids.shape} differs from image {img.shape[:2]}")
    ids = ids.astype(np.int64)
    colours = _colour_lut()[np.where((ids < 0) | (ids > 255), 255, ids)]
    blend = (1 - alpha) * img.astype(np.float32) + alpha * colours.astype(np.float32)
    return np.clip(np.rint(blend), 0, 255).astype(np.uint8)
