"""Reconstruction grids a person can judge at a glance: one row per held-out window,
original | masked input | reconstruction | reconstruction pasted into the visible patches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from jobs.data import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["save_grid"]

_GAP = 4
_MASKED_GREY = 0.5  # how hidden patches show in the "masked input" column


def _to_rgb(x: torch.Tensor) -> np.ndarray:
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    rgb = (x.float().cpu() * std + mean).clamp(0, 1)
    return (rgb.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def save_grid(path: Path, images: torch.Tensor, recon: torch.Tensor, pixel_mask: torch.Tensor
              ) -> Path:
    """Write the grid for (B,3,H,W) normalised `images`, their reconstructions and the
    (B,1,H,W) pixel mask (1 = hidden) as a PNG; returns its path."""
    from PIL import Image

    rows = []
    grey = torch.tensor([(_MASKED_GREY - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD,
                                                                strict=True)]).view(3, 1, 1)
    for x, r, m in zip(images.cpu(), recon.detach().float().cpu(), pixel_mask.cpu(), strict=True):
        masked = x * (1 - m) + grey * m
        pasted = x * (1 - m) + r * m
        cells = [_to_rgb(t) for t in (x, masked, r, pasted)]
        gap = np.full((cells[0].shape[0], _GAP, 3), 255, np.uint8)
        rows.append(np.concatenate([c for cell in cells for c in (cell, gap)][:-1], axis=1))
    hgap = np.full((_GAP, rows[0].shape[1], 3), 255, np.uint8)
    grid = np.concatenate([r for row in rows for r in (row, hgap)][:-1], axis=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    Image.fromarray(grid).save(tmp)
    tmp.replace(path)
    return path
