"""The segmentation model: timm encoder + UPerNet decoder + fine (and hierarchical) heads."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hcli.classes import NUM_CLASSES
from hcli.spec import ModelSpec

from .encoders import Encoder, build_encoder
from .prototypes import PrototypeAttention
from .upernet import Norm, UPerHead

__all__ = ["Segmenter", "build_segmenter", "NO_DECAY_NAME_PARTS"]

# Parameters that are tables or tokens rather than weights: timm's own `no_weight_decay()` lists
# them, but the features_only wrapper renames modules, so they are matched by name part.
NO_DECAY_NAME_PARTS = ("pos_embed", "relative_position_bias_table", "rel_pos", "cls_token",
                       "attention.prototypes")


class Segmenter(nn.Module):
    """forward(x) → {"fine": (N,16,H,W)} plus, when hierarchical, "binary" (N,2,H,W) and
    "coarse" (N,1+G,H,W) (coarse 0 = Clean, 1..G the damage groups in spec order); logits at
    the input resolution. With prototype `attention`, decoder features attend to the class
    prototypes before the heads, and in training "prototype_sims" (N,K*P,h,w) feeds the
    auxiliary loss (jobs.models.prototypes)."""

    def __init__(
        self,
        encoder: Encoder,
        decoder_channels: int = 256,
        pool_scales: Sequence[int] = (1, 2, 3, 6),
        num_classes: int = NUM_CLASSES,
        n_coarse: int | None = None,
        dropout: float = 0.1,
        norm: Norm = "bn",
        attention: PrototypeAttention | None = None,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = UPerHead(encoder.channels, decoder_channels, pool_scales, norm)
        self.dropout = nn.Dropout2d(dropout)
        heads = {"fine": num_classes}
        if n_coarse is not None:
            heads |= {"binary": 2, "coarse": n_coarse}
        self.heads = nn.ModuleDict(
            {k: nn.Conv2d(decoder_channels, n, 1) for k, n in heads.items()}
        )
        self.hierarchical = n_coarse is not None
        self.attention = attention

    @property
    def fixed_input_size(self) -> int | None:
        """The only input side the encoder takes (Swin), or None for any multiple of 32."""
        return self.encoder.fixed_input_size

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        feat = self.decoder(self.encoder(x))
        extra = {}
        if self.attention is not None:
            feat, sims = self.attention(feat)
            if self.training:
                extra["prototype_sims"] = sims
        feat = self.dropout(feat)
        size = x.shape[-2:]
        return {
            k: F.interpolate(head(feat), size=size, mode="bilinear", align_corners=False)
            for k, head in self.heads.items()
        } | extra

    def prototype_attention(self, x: torch.Tensor) -> torch.Tensor:
        """Per-class attention (N,K,h,w) of the decoder features, for figures."""
        if self.attention is None:
            raise ValueError("this model has no prototype attention (model.attention=none)")
        return self.attention.class_attention(self.attention(self.decoder(self.encoder(x)))[1])

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        # The encoder holds nearly all activations; the decoder is shallow and left as it is.
        self.encoder.set_grad_checkpointing(enable)

    def param_groups(
        self, lr: float, encoder_lr_mult: float, weight_decay: float
    ) -> list[dict[str, Any]]:
        """AdamW groups: encoder at lr*encoder_lr_mult, the rest at lr; no decay on norms,
        biases and position tables. Each group carries a "name" for logging."""
        groups: dict[str, dict[str, Any]] = {}
        for pname, p in self.named_parameters():
            if not p.requires_grad:
                continue
            part = "encoder" if pname.startswith("encoder.") else "decoder"
            no_decay = p.ndim <= 1 or any(s in pname for s in NO_DECAY_NAME_PARTS)
            key = f"{part}{'_no_decay' if no_decay else ''}"
            if key not in groups:
                groups[key] = {
                    "name": key,
                    "params": [],
                    "lr": lr * (encoder_lr_mult if part == "encoder" else 1.0),
                    "weight_decay": 0.0 if no_decay else weight_decay,
                }
            groups[key]["params"].append(p)
        return list(groups.values())


def build_segmenter(
    model_spec: ModelSpec,
    crop_size: int,
    pretrained: bool | Path | None = None,
    check: bool | None = None,
) -> Segmenter:
    """The model a spec describes, for `crop_size` inputs.

    `pretrained` overrides `model_spec.pretrained` (e.g. False when a checkpoint will be loaded
    over it anyway). The decoder norm is read from `model_spec.decoder_norm` when the spec has
    that field, else BatchNorm. `check`: see `build_encoder`.
    """
    weights = model_spec.pretrained if pretrained is None else pretrained
    encoder = build_encoder(
        model_spec.backbone, crop_size, model_spec.encoder_kwargs, weights, check=check
    )
    n_coarse = 1 + len(model_spec.coarse_groups) if model_spec.hierarchical else None
    attention = None
    if getattr(model_spec, "attention", "none") == "prototypes":
        p = model_spec.prototypes
        attention = PrototypeAttention(model_spec.decoder_channels, NUM_CLASSES, p.per_class, p.dim,
                                       p.temperature)
    model = Segmenter(
        encoder,
        decoder_channels=model_spec.decoder_channels,
        pool_scales=model_spec.pool_scales,
        n_coarse=n_coarse,
        norm=getattr(model_spec, "decoder_norm", "bn"),
        attention=attention,
    )
    if model_spec.grad_checkpointing:
        model.set_grad_checkpointing(True)
    return model
