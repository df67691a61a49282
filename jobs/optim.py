"""Optimizer and learning-rate schedule of the segmentation jobs."""

from __future__ import annotations

import math
from typing import Any

import torch

from hcli.spec import TrainSpec

__all__ = ["build_optimizer", "build_scheduler", "lr_factor"]


def lr_factor(step: int, train: TrainSpec) -> float:
    """Linear warmup to 1, then poly (power `poly_power`) or cosine decay to 0 at `steps`."""
    warmup = train.warmup
    if warmup and step < warmup:
        return (step + 1) / warmup
    span = max(1, train.steps - warmup)
    progress = min(1.0, (step - warmup) / span)
    if train.schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * progress))
    return (1 - progress) ** train.poly_power


def build_optimizer(
    model: torch.nn.Module, train: TrainSpec, groups: list[dict[str, Any]] | None = None
) -> torch.optim.Optimizer:
    """AdamW over `groups`, by default the segmenter's (encoder at a lower learning rate)."""
    if groups is None:
        groups = model.param_groups(train.lr, train.encoder_lr_mult, train.weight_decay)  # type: ignore[operator]
    return torch.optim.AdamW(groups, lr=train.lr, weight_decay=train.weight_decay)


def build_scheduler(
    optimizer: torch.optim.Optimizer, train: TrainSpec
) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, train))
