"""Encoders by name through timm (`features_only=True`), with the study's loading rules.

The decoder reads channels and strides from timm's `feature_info`, so any timm model that offers
`features_only` works; the three study families are resolved by `hcli.spec.resolve_timm_name`.
Weights come either from a local file or from the Hugging Face cache, never from the network, and
a request for weights that cannot be met is an error, never a silent random init.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from hcli.errors import UserError
from hcli.spec import resolve_timm_name

__all__ = ["SHRUNKEN_ENCODER_KWARGS", "Encoder", "build_encoder", "cached_pretrained_file"]

# The decoder works at strides 4..32; levels finer than 4 (MaxViT's stride-2 stem) are dropped.
_MIN_STRIDE = 4
_MAX_LEVELS = 4
_HUB_FILENAMES = ("model.safetensors", "pytorch_model.bin")
_KNOWN_FAMILIES = ("convnext", "swin", "maxvit")

# `model.encoder_kwargs` that shrink each family to 0.4-0.9 M parameters (widths and depths from
# shared/reference/MEASURED.md): what tests, benchmarks' quick mode and CPU demos train.
SHRUNKEN_ENCODER_KWARGS: dict[str, dict[str, object]] = {
    "convnext": {"depths": (1, 1, 1, 1), "dims": (16, 32, 64, 128)},
    "swin": {"embed_dim": 24, "depths": (1, 1, 1, 1), "num_heads": (1, 1, 1, 1)},
    "maxvit": {
        "embed_dim": (16, 32, 64, 128),
        "depths": (1, 1, 1, 1),
        "stem_width": 16,
        "transformer_dim_head": 16,
    },
}


class Encoder(nn.Module):
    """A timm feature extractor returning NCHW maps at strides 4, 8, 16, 32 (finest first)."""

    def __init__(self, body: nn.Module, timm_name: str, fixed_input_size: int | None) -> None:
        super().__init__()
        self.body = body
        self.timm_name = timm_name
        info: Any = body.feature_info  # timm's FeatureInfo (a Tensor | Module to the type checker)
        strides = list(info.reduction())
        keep = [i for i, s in enumerate(strides) if s >= _MIN_STRIDE][-_MAX_LEVELS:]
        self.keep: list[int] = keep
        self.channels: list[int] = [info.channels()[i] for i in keep]
        self.strides: list[int] = [strides[i] for i in keep]
        # timm tells whether the features come out NHWC (Swin) through the wrapper's output_fmt.
        self.nhwc = str(getattr(body, "output_fmt", "NCHW")).upper().endswith("NHWC")
        # Swin is built for one input size and rejects others; None means any multiple of 32.
        self.fixed_input_size = fixed_input_size

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = self.body(x)
        out = [feats[i] for i in self.keep]
        if self.nhwc:
            out = [f.permute(0, 3, 1, 2) for f in out]
        return out

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        body: Any = self.body
        body.set_grad_checkpointing(enable)


def build_encoder(
    backbone: str,
    crop_size: int,
    encoder_kwargs: Mapping[str, Any] | None = None,
    pretrained: bool | Path | str = False,
    check: bool | None = None,
) -> Encoder:
    """Build the encoder for `crop_size` inputs; `pretrained` is False, True (HF cache) or a file.

    Any multiple of 32 is checked up front. With `check`, one dry forward at the crop size proves
    the encoder takes it (an encoder that cannot raises a `UserError` naming data.crop_size);
    by default (None) only for timm models outside the three study families, whose rules are
    known (ConvNeXt any size, Swin and MaxViT built for the crop) and whose dry run would cost
    seconds per job on a CPU.
    """
    if crop_size % 32:
        raise UserError(
            f"data.crop_size={crop_size} is not a multiple of 32, which {backbone} needs (its "
            f"output stride); use {_round32(crop_size)}"
        )
    name, size_kwargs = resolve_timm_name(backbone, crop_size)
    kwargs: dict[str, Any] = {**size_kwargs, **dict(encoder_kwargs or {})}
    kwargs["features_only"] = True
    if isinstance(pretrained, str | Path):
        body = _build_from_file(name, kwargs, Path(pretrained))
    elif pretrained:
        body = _build_from_hub_cache(name, kwargs)
    else:
        body = _create(name, kwargs)
    fixed = int(kwargs.get("img_size", crop_size)) if name.startswith("swin") else None
    encoder = Encoder(body, name, fixed)
    if check or (check is None and not name.startswith(_KNOWN_FAMILIES)):
        _dry_run(encoder, backbone, crop_size)
    return encoder


def _create(name: str, kwargs: dict[str, Any]) -> nn.Module:
    try:
        return timm.create_model(name, **kwargs)
    except RuntimeError as e:
        if "Unknown model" in str(e):
            raise UserError(
                f"model.backbone={name!r} is not a timm model; use convnext, swin, maxvit or a "
                f"name from timm.list_models()"
            ) from e
        raise
    except TypeError as e:
        raise UserError(
            f"model.encoder_kwargs do not fit {name}: {e}; remove or rename the key"
        ) from e


def cached_pretrained_file(name: str) -> tuple[str, str | None]:
    """The Hugging Face repo holding `name`'s default weights and its cached file, if cached."""
    from huggingface_hub import try_to_load_from_cache

    try:
        cfg = timm.models.get_pretrained_cfg(name)
    except RuntimeError:
        cfg = None
    if cfg is None or not cfg.hf_hub_id:
        raise UserError(
            f"model.pretrained=true but timm has no published weights for {name!r}; set "
            f"model.pretrained to a local weights file or to false"
        )
    repo = cfg.hf_hub_id
    filenames = (cfg.hf_hub_filename,) if cfg.hf_hub_filename else _HUB_FILENAMES
    for filename in filenames:
        hit = try_to_load_from_cache(repo, filename)
        if isinstance(hit, str):
            return repo, hit
    return repo, None


def _build_from_hub_cache(name: str, kwargs: dict[str, Any]) -> nn.Module:
    # Looking the file up in the cache ourselves and handing timm the path means timm never
    # reaches for the network, whatever HF_HUB_OFFLINE says; a job on a compute node has none.
    repo, path = cached_pretrained_file(name)
    if path is None:
        raise UserError(
            f"model.pretrained=true but the weights of {name} ({repo}) are not in the Hugging "
            f"Face cache; on a machine with internet run `hf download {repo}` (same HF_HOME), "
            f"or set model.pretrained to a local weights file"
        )
    source = f"the cached weights of {repo}"
    return _create_with_weights(name, kwargs, {"file": path}, source=source)


def _build_from_file(name: str, kwargs: dict[str, Any], path: Path) -> nn.Module:
    if not path.is_file():
        raise UserError(
            f"model.pretrained={str(path)!r} does not exist; give a .safetensors or .pth file, "
            f"or set model.pretrained to true (Hugging Face cache) or false"
        )
    state = _read_state_dict(path)
    body = _create(name, kwargs)
    own = body.state_dict()
    # A file saved from this very encoder (e.g. `Encoder.body.state_dict()` of another run) has
    # the feature wrapper's key names; anything else is taken as a timm model checkpoint and goes
    # through timm's own loader, whose filter remaps original-repo keys and resizes tables.
    if set(state) == set(own):
        _check_shapes(state, own, path)
        body.load_state_dict(state)
        return body
    return _create_with_weights(name, kwargs, {"state_dict": state}, source=str(path))


def _create_with_weights(
    name: str, kwargs: dict[str, Any], overlay: dict[str, Any], source: str
) -> nn.Module:
    """timm builds and loads; `overlay` is {"file": path} or {"state_dict": sd}."""
    try:
        return timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs)
    except RuntimeError as e:
        # torch lists one problem per line after a header; the first one and a count suffice.
        problems = [ln.strip() for ln in str(e).strip().splitlines()[1:] if ln.strip()]
        detail = problems[0][:200] if problems else str(e)[:200]
        more = f", and {len(problems) - 1} more" if len(problems) > 1 else ""
        raise UserError(
            f"model.pretrained: {source} does not fit {name} with model.encoder_kwargs="
            f"{_kwargs_shown(kwargs)} ({detail}{more}); use weights of the same architecture"
        ) from e


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    # timm's reader handles safetensors and torch files (weights_only=True) and unwraps the usual
    # {"state_dict": ...} / {"model": ...} / "module." nesting of training checkpoints.
    from timm.models import load_state_dict

    try:
        return load_state_dict(str(path), weights_only=True)
    except Exception as e:
        raise UserError(
            f"model.pretrained={str(path)!r} is not a readable weights file ({type(e).__name__}: "
            f"{str(e)[:120]}); give a .safetensors file or a torch state dict"
        ) from e


def _check_shapes(
    state: Mapping[str, torch.Tensor], own: Mapping[str, torch.Tensor], path: Path
) -> None:
    bad = [k for k in own if tuple(state[k].shape) != tuple(own[k].shape)]
    if bad:
        k = bad[0]
        raise UserError(
            f"model.pretrained={str(path)!r}: {len(bad)} tensors have other shapes than the "
            f"encoder (first {k}: file {tuple(state[k].shape)}, model {tuple(own[k].shape)}); "
            f"check model.backbone and model.encoder_kwargs"
        )


def _dry_run(encoder: Encoder, backbone: str, crop_size: int) -> None:
    was_training = encoder.training
    encoder.eval()
    try:
        with torch.no_grad():
            feats = encoder(torch.zeros(1, 3, crop_size, crop_size))
    except (RuntimeError, AssertionError, ValueError) as e:
        raise UserError(
            f"data.crop_size={crop_size} does not fit {backbone} ({str(e)[:120]}); use a "
            f"multiple of 32 such as {max(64, _round32(crop_size))}"
        ) from e
    finally:
        encoder.train(was_training)
    if min(f.shape[-1] for f in feats) < 1:
        raise UserError(f"data.crop_size={crop_size} is too small for {backbone}; use 64 or more")


def _kwargs_shown(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in kwargs.items() if k != "features_only"}


def _round32(n: int) -> int:
    return max(32, round(n / 32) * 32)
