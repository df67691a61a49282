"""The masked-image model: the segmenter's encoder, a mask token after its stem, a light decoder.

SimMIM (Xie et al. 2022) replaces the embeddings of masked patches by one learnable token right
after the patch embedding and regresses the raw pixels from the last feature map with a linear
head and a pixel shuffle. The same recipe serves every timm encoder whose features_only wrapper
keeps its stem as a module of its own (`stem*`: ConvNeXt's 4×4 conv + norm, MaxViT's stride-2
convs; `patch_embed`: Swin, NHWC): a forward hook on the stem's last module blends the token in
where the mask, upsampled to the stem's grid, says so. The token lives beside the encoder, not
in it, so the encoder's state dict has exactly the segmenter's encoder keys.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hcli.errors import UserError
from jobs.models.encoders import Encoder

__all__ = ["MaeModel", "StemInfo", "find_stem"]

_STEM_PREFIXES = ("stem", "patch_embed")
_MAX_STEM_STRIDE = 4


@dataclass(frozen=True)
class StemInfo:
    module: nn.Module  # the stem's last module: its output gets the mask token
    name: str
    stride: int
    channels: int
    nhwc: bool


def find_stem(encoder: Encoder, crop_size: int, backbone: str) -> StemInfo:
    """The stem of a features_only timm encoder, its stride, width and layout (one dry run)."""
    children = list(encoder.body.named_children())
    stem = [(n, m) for n, m in children[: _stem_length(children)]]
    if not stem:
        names = ", ".join(n for n, _ in children[:4])
        raise UserError(
            f"model.backbone={backbone} cannot be pretrained by kind=mae: its timm model has no "
            f"`stem` or `patch_embed` module first (it starts with {names}), where the mask "
            "token goes; use convnext, swin, maxvit or another timm model with such a stem"
        )
    x = torch.zeros(1, 3, crop_size, crop_size)
    with torch.no_grad():
        was = encoder.training
        encoder.eval()
        for _, m in stem:
            x = m(x)
        encoder.train(was)
    if x.ndim != 4:
        raise UserError(f"model.backbone={backbone}: its stem gives a {x.ndim}-d tensor, not a "
                        "2-d grid of embeddings; kind=mae needs a spatial stem")
    last = stem[-1][1]
    fmt = str(getattr(last, "output_fmt", "")).upper()
    nhwc = fmt.endswith("NHWC") or (x.shape[1] == x.shape[2] and x.shape[3] != x.shape[2])
    grid = x.shape[1] if nhwc else x.shape[2]
    stride = crop_size // grid
    if stride > _MAX_STEM_STRIDE or stride * grid != crop_size:
        raise UserError(
            f"model.backbone={backbone}: its stem has stride {crop_size / grid:g}; kind=mae "
            f"needs a stem of stride {_MAX_STEM_STRIDE} or less to place 32-px masks"
        )
    return StemInfo(last, stem[-1][0], stride, int(x.shape[3] if nhwc else x.shape[1]), nhwc)


def _stem_length(children: list[tuple[str, nn.Module]]) -> int:
    n = 0
    while n < len(children) and children[n][0].startswith(_STEM_PREFIXES):
        n += 1
    return n


class MaeModel(nn.Module):
    """forward(images, mask) -> reconstructed images (same shape as `images`).

    `mask` is (B, H/patch, W/patch) bool, True where the patch is hidden from the encoder.
    """

    def __init__(self, encoder: Encoder, crop_size: int, patch_size: int, backbone: str,
                 decoder: str = "linear", decoder_width: int = 256) -> None:
        super().__init__()
        self.encoder = encoder
        stem = find_stem(encoder, crop_size, backbone)
        if patch_size % stem.stride:
            raise UserError(
                f"mae.patch_size={patch_size} is not a multiple of {backbone}'s stem stride "
                f"{stem.stride}; use a multiple of {stem.stride} such as 32"
            )
        self.patch_size, self.stem_stride, self.stem_nhwc = patch_size, stem.stride, stem.nhwc
        self.stem_name = stem.name
        # SimMIM: zeros, then a small truncated normal.
        self.mask_token = nn.Parameter(torch.zeros(stem.channels))
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        self._mask: torch.Tensor | None = None
        stem.module.register_forward_hook(self._inject)
        channels, stride = encoder.channels[-1], encoder.strides[-1]
        out = stride * stride * 3
        if decoder == "linear":
            self.decoder: nn.Module = nn.Conv2d(channels, out, 1)
        else:
            self.decoder = nn.Sequential(
                nn.Conv2d(channels, decoder_width, 3, padding=1), nn.GELU(),
                nn.Conv2d(decoder_width, decoder_width, 3, padding=1), nn.GELU(),
                nn.Conv2d(decoder_width, out, 1),
            )
        self.out_stride = stride

    def _inject(self, _module: nn.Module, _inputs: Any, out: torch.Tensor) -> torch.Tensor:
        mask = self._mask
        if mask is None:
            return out
        scale = self.patch_size // self.stem_stride
        w = mask.to(out.dtype).repeat_interleave(scale, 1).repeat_interleave(scale, 2)
        if self.stem_nhwc:
            w = w[..., None]
            token = self.mask_token.to(out.dtype)
        else:
            w = w[:, None]
            token = self.mask_token.to(out.dtype)[:, None, None]
        return out * (1 - w) + token * w

    def forward(self, images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        self._mask = mask
        try:
            feats = self.encoder(images)
        finally:
            self._mask = None
        return F.pixel_shuffle(self.decoder(feats[-1]), self.out_stride)

    def param_groups(self, lr: float, weight_decay: float) -> list[dict[str, Any]]:
        """AdamW groups at one learning rate (the encoder is what is trained here); no decay on
        norms, biases, position tables and the mask token."""
        from jobs.models.segmenter import NO_DECAY_NAME_PARTS

        decay: list[nn.Parameter] = []
        no_decay: list[nn.Parameter] = []
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            skip = p.ndim <= 1 or name == "mask_token" or any(
                s in name for s in NO_DECAY_NAME_PARTS)
            (no_decay if skip else decay).append(p)
        return [{"name": "decay", "params": decay, "lr": lr, "weight_decay": weight_decay},
                {"name": "no_decay", "params": no_decay, "lr": lr, "weight_decay": 0.0}]

    def encoder_state_dict(self) -> dict[str, torch.Tensor]:
        """The encoder's tensors under the segmenter's key names (`encoder.…`)."""
        return {f"encoder.{k}": v.detach().clone() for k, v in self.encoder.state_dict().items()}
