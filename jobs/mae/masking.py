"""SimMIM-style masks and the masked-pixel loss.

A mask is drawn on a grid of `patch_size`-pixel squares: exactly `round(ratio * patches)` of
them are masked, chosen by a permutation seeded from the sample's draw key, so a batch's masks
are a pure function of (seed, epoch, position, index) and resume exactly whatever the RNG state.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "draw_mask",
    "batch_masks",
    "pixel_mask",
    "masked_loss",
    "patch_normalise",
    "patch_mean_fill",
    "neighbour_mean_fill",
]

# Salt in the mask seeds, so masks never share a stream with the crop's augmentation seeds.
_MASK_SALT = 0x5A17


def draw_mask(grid: tuple[int, int], ratio: float, rng: np.random.Generator) -> np.ndarray:
    """(gh, gw) bool: exactly round(ratio * gh * gw) patches True (at least one, not all)."""
    gh, gw = grid
    n = gh * gw
    k = min(n - 1, max(1, round(ratio * n))) if n > 1 else 1
    flat = np.zeros(n, dtype=bool)
    flat[rng.permutation(n)[:k]] = True
    return flat.reshape(gh, gw)


def batch_masks(keys: Sequence[Sequence[int]], seed: int, size: tuple[int, int], patch: int,
                ratio: float) -> torch.Tensor:
    """(B, H/patch, W/patch) bool masks, one per sample, seeded by its key (ints)."""
    grid = (size[0] // patch, size[1] // patch)
    masks = [
        draw_mask(grid, ratio, np.random.default_rng([_MASK_SALT, seed, *map(int, key)]))
        for key in keys
    ]
    return torch.from_numpy(np.stack(masks))


def pixel_mask(mask: torch.Tensor, patch: int) -> torch.Tensor:
    """(B, gh, gw) patch mask -> (B, 1, gh*patch, gw*patch) float, 1 where masked."""
    m = mask.to(torch.float32)[:, None]
    return m.repeat_interleave(patch, dim=2).repeat_interleave(patch, dim=3)


def patch_normalise(x: torch.Tensor, patch: int, eps: float = 1e-6) -> torch.Tensor:
    """Each patch of each channel to zero mean and unit variance (MAE's normalised target)."""
    mean = F.avg_pool2d(x, patch)
    var = F.avg_pool2d(x * x, patch) - mean * mean
    up = lambda t: F.interpolate(t, scale_factor=patch, mode="nearest")  # noqa: E731
    return (x - up(mean)) / up(var.clamp_min(0) + eps).sqrt()


def patch_mean_fill(x: torch.Tensor, patch: int) -> torch.Tensor:
    """Every pixel replaced by its patch's mean colour: the 'mean colour per patch' baseline."""
    return F.interpolate(F.avg_pool2d(x, patch), scale_factor=patch, mode="nearest")


def neighbour_mean_fill(x: torch.Tensor, mask: torch.Tensor, patch: int) -> torch.Tensor:
    """Every hidden patch filled with the mean colour of its visible neighbours (the 3×3 patches
    around it; the image's visible mean where none is visible): a per-patch prediction that
    uses the visible pixels and no learning. `mask` (B, gh, gw) True where hidden."""
    means = F.avg_pool2d(x, patch)  # (B, C, gh, gw)
    vis = (~mask.to(means.device)).to(means.dtype)[:, None]
    near_sum = F.avg_pool2d(means * vis, 3, stride=1, padding=1, count_include_pad=True)
    near_n = F.avg_pool2d(vis, 3, stride=1, padding=1, count_include_pad=True)
    whole = (means * vis).sum((2, 3), keepdim=True) / vis.sum((2, 3), keepdim=True).clamp_min(1)
    fill = torch.where(near_n > 0, near_sum / near_n.clamp_min(1e-12), whole)
    return F.interpolate(fill, scale_factor=patch, mode="nearest")


def masked_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
                kind: str = "l1") -> torch.Tensor:
    """Mean L1 (or squared) error over the masked pixels only; `mask` (B,1,H,W) is 1 where
    masked. Visible pixels contribute nothing, whatever the prediction there."""
    err = (pred - target).abs() if kind == "l1" else (pred - target).pow(2)
    masked = mask.expand_as(err)
    return (err * masked).sum() / masked.sum().clamp_min(1.0)
