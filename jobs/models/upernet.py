"""UPerNet decoder (Xiao et al. 2018), laid out like mmsegmentation's `UPerHead`.

A pyramid pooling module (PPM) over the coarsest level, an FPN (lateral 1x1, top-down sum, 3x3
smoothing) over the others, then every level upsampled to the finest and fused by a 3x3 conv.
Written here because timm has no decoders and mmseg/smp are not dependencies; about 80 lines.

Normalisation: `norm="bn"` (mmseg's default, ConvBNReLU) or `norm="gn"` (GroupNorm, independent
of the batch size). The PPM's scale-1 branch pools to a single pixel, where BatchNorm would see one
value per channel at batch size 1 and refuse to train; that branch therefore has no norm (a conv
with bias + ReLU), as in segmentation_models_pytorch's PSP block, so batch size 1 trains with BN
too (its batch statistics are then poor: prefer batch >= 2 or `norm="gn"`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ConvNormReLU", "PPM", "UPerHead"]

Norm = Literal["bn", "gn"]


def _norm(kind: Norm, channels: int) -> nn.Module:
    if kind == "gn":
        groups = next(g for g in (32, 16, 8, 4, 2, 1) if channels % g == 0)
        return nn.GroupNorm(groups, channels)
    return nn.BatchNorm2d(channels)


class ConvNormReLU(nn.Sequential):
    def __init__(
        self, cin: int, cout: int, kernel: int = 1, norm: Norm | None = "bn"
    ) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=norm is None)
        ]
        if norm is not None:
            layers.append(_norm(norm, cout))
        layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class PPM(nn.Module):
    """Pyramid pooling: average-pool to each scale, 1x1 conv, upsample back, concatenate."""

    def __init__(self, cin: int, channels: int, scales: Sequence[int], norm: Norm) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Sequential(
                nn.AdaptiveAvgPool2d(s), ConvNormReLU(cin, channels, 1, None if s == 1 else norm)
            )
            for s in scales
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        size = x.shape[-2:]
        return [
            F.interpolate(b(x), size=size, mode="bilinear", align_corners=False)
            for b in self.branches
        ]


class UPerHead(nn.Module):
    """Features (finest first) → one fused map of `channels` at the finest level's stride."""

    def __init__(
        self,
        in_channels: Sequence[int],
        channels: int = 256,
        pool_scales: Sequence[int] = (1, 2, 3, 6),
        norm: Norm = "bn",
    ) -> None:
        super().__init__()
        *finer, last = in_channels
        self.ppm = PPM(last, channels, pool_scales, norm)
        self.bottleneck = ConvNormReLU(last + len(pool_scales) * channels, channels, 3, norm)
        self.lateral = nn.ModuleList(ConvNormReLU(c, channels, 1, norm) for c in finer)
        self.smooth = nn.ModuleList(ConvNormReLU(channels, channels, 3, norm) for _ in finer)
        self.fuse = ConvNormReLU(len(in_channels) * channels, channels, 3, norm)
        self.out_channels = channels

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        *finer, last = feats
        laterals = [conv(f) for conv, f in zip(self.lateral, finer, strict=True)]
        laterals.append(self.bottleneck(torch.cat([last, *self.ppm(last)], dim=1)))
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + F.interpolate(
                laterals[i], size=laterals[i - 1].shape[-2:], mode="bilinear", align_corners=False
            )
        outs = [conv(t) for conv, t in zip(self.smooth, laterals[:-1], strict=True)]
        outs.append(laterals[-1])
        size = outs[0].shape[-2:]
        outs = [outs[0]] + [
            F.interpolate(t, size=size, mode="bilinear", align_corners=False) for t in outs[1:]
        ]
        return self.fuse(torch.cat(outs, dim=1))
