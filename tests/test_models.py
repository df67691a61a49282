"""Encoders (shrunken Tiny models), UPerNet, heads, loading weights, crop-size checks."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import safetensors.torch
import timm
import torch

from hcli.classes import DEFAULT_COARSE_GROUPS
from hcli.errors import UserError
from hcli.spec import ModelSpec, resolve_timm_name
from jobs.models import build_encoder, build_segmenter
from jobs.models.encoders import SHRUNKEN_ENCODER_KWARGS

TINY = SHRUNKEN_ENCODER_KWARGS
BACKBONES = list(TINY)
N_COARSE = 1 + len(DEFAULT_COARSE_GROUPS)


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    # Other suites run beside these on 2 cores; one thread keeps the tiny models predictable.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _spec(backbone: str, **kw: object) -> ModelSpec:
    return ModelSpec(backbone=backbone, encoder_kwargs=TINY[backbone], decoder_channels=32, **kw)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_forward_at_two_crop_sizes(backbone: str) -> None:
    for crop in (64, 128):
        model = build_segmenter(_spec(backbone, hierarchical=True), crop)
        assert model.encoder.strides == [4, 8, 16, 32]
        out = model(torch.randn(2, 3, crop, crop))
        assert set(out) == {"fine", "binary", "coarse"}
        assert out["fine"].shape == (2, 16, crop, crop)
        assert out["binary"].shape == (2, 2, crop, crop)
        assert out["coarse"].shape == (2, N_COARSE, crop, crop)
        sum(o.mean() for o in out.values()).backward()
        grads = [p.grad for p in model.encoder.parameters() if p.requires_grad]
        assert any(g is not None and g.abs().sum() > 0 for g in grads)
    flat = build_segmenter(_spec(backbone), 64)
    assert set(flat(torch.randn(2, 3, 64, 64))) == {"fine"}


@pytest.mark.parametrize("backbone", BACKBONES)
def test_bad_crop_size_rejected(backbone: str) -> None:
    with pytest.raises(UserError, match=r"data\.crop_size=100 .*use 96"):
        build_segmenter(_spec(backbone), 100)


def test_unknown_backbone_and_bad_kwargs_are_user_errors() -> None:
    with pytest.raises(UserError, match="model.backbone='no_such_net' is not a timm model"):
        build_encoder("no_such_net", 64)
    with pytest.raises(UserError, match="model.encoder_kwargs do not fit convnext_tiny"):
        build_encoder("convnext", 64, {"bogus": 1})


def test_swin_takes_only_its_crop_size() -> None:
    model = build_segmenter(_spec("swin"), 64).eval()
    assert model.fixed_input_size == 64
    assert build_segmenter(_spec("convnext"), 64).fixed_input_size is None
    with pytest.raises(AssertionError, match="doesn't match"):
        model(torch.zeros(1, 3, 128, 128))


def test_only_other_timm_models_get_a_dry_run(monkeypatch: pytest.MonkeyPatch) -> None:
    import jobs.models.encoders as encoders

    calls: list[str] = []
    real = encoders._dry_run
    monkeypatch.setattr(encoders, "_dry_run", lambda e, b, c: calls.append(b) or real(e, b, c))
    enc = build_encoder("resnet18", 64, {"layers": (1, 1, 1, 1)})
    assert enc.strides == [4, 8, 16, 32] and enc.channels == [64, 128, 256, 512]
    build_encoder("convnext", 64, TINY["convnext"])
    assert calls == ["resnet18"]


def test_dry_run_failure_is_a_user_error(monkeypatch: pytest.MonkeyPatch) -> None:
    # A crop that passes the multiple-of-32 rule but that the encoder still refuses.
    def refuse(self: torch.nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
        raise AssertionError("height (3) must be divisible by window (2)")

    monkeypatch.setattr("jobs.models.encoders.Encoder.forward", refuse)
    with pytest.raises(UserError, match=r"data\.crop_size=96 does not fit maxvit"):
        build_encoder("maxvit", 96, TINY["maxvit"], check=True)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_grad_checkpointing_and_channels_last(backbone: str) -> None:
    torch.manual_seed(0)
    model = build_segmenter(_spec(backbone, hierarchical=True), 64).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)["fine"]
    model.set_grad_checkpointing(True)
    out = model(x)["fine"]
    assert torch.allclose(out, ref, atol=1e-5)
    out.mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    model = model.to(memory_format=torch.channels_last)
    with torch.no_grad():
        cl = model(x.to(memory_format=torch.channels_last))["fine"]
    assert torch.allclose(cl, ref, atol=1e-4)
    checkpointed = build_segmenter(_spec(backbone, grad_checkpointing=True), 64)
    assert checkpointed.encoder.body.grad_checkpointing


def test_param_groups_cover_every_parameter_once() -> None:
    model = build_segmenter(_spec("swin", hierarchical=True), 64)
    groups = model.param_groups(lr=1e-3, encoder_lr_mult=0.1, weight_decay=0.05)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    names = {id(p): n for n, p in model.named_parameters()}
    for g in groups:
        encoder = g["name"].startswith("encoder")
        assert g["lr"] == pytest.approx(1e-4 if encoder else 1e-3)
        for p in g["params"]:
            assert names[id(p)].startswith("encoder.") == encoder
            no_decay = p.ndim <= 1 or "relative_position_bias_table" in names[id(p)]
            assert g["weight_decay"] == (0.0 if no_decay else 0.05)
    opt = torch.optim.AdamW(groups)
    model(torch.randn(2, 3, 64, 64))["fine"].mean().backward()
    opt.step()


def _timm_model(backbone: str, crop: int) -> torch.nn.Module:
    name, extra = resolve_timm_name(backbone, crop)
    return timm.create_model(name, **extra, **TINY[backbone])


@pytest.mark.parametrize("backbone", BACKBONES)
def test_pretrained_from_local_timm_checkpoint(backbone: str, tmp_path: Path) -> None:
    torch.manual_seed(1)
    # Built at 224 like the published weights; timm's filter resizes MaxViT's tables for 64.
    full = _timm_model(backbone, 224)
    path = tmp_path / "w.safetensors"
    safetensors.torch.save_file(full.state_dict(), str(path))
    enc = build_encoder(backbone, 64, TINY[backbone], path)
    ref = full.state_dict()
    own = enc.body.state_dict()
    first = next(k for k in ref if k.endswith("weight"))
    flat = first.replace(".", "_", 1) if backbone == "convnext" else first  # stem.0 → stem_0
    assert torch.equal(own[flat], ref[first])
    assert any(k.startswith("head") for k in ref)  # the classifier was dropped, not an error


def test_pretrained_from_encoder_state_dict_and_errors(tmp_path: Path) -> None:
    torch.manual_seed(2)
    src = build_encoder("convnext", 64, TINY["convnext"])
    torch.save({"state_dict": src.body.state_dict()}, tmp_path / "enc.pth")
    enc = build_encoder("convnext", 64, TINY["convnext"], tmp_path / "enc.pth")
    for k, v in src.body.state_dict().items():
        assert torch.equal(enc.body.state_dict()[k], v)
    wider = {"depths": (1, 1, 1, 1), "dims": (24, 48, 96, 192)}
    with pytest.raises(UserError, match=r"52 tensors have other shapes.*stem_0\.weight"):
        build_encoder("convnext", 64, wider, tmp_path / "enc.pth")
    timm_file = tmp_path / "timm.safetensors"
    safetensors.torch.save_file(_timm_model("convnext", 64).state_dict(), str(timm_file))
    with pytest.raises(UserError, match="model.pretrained.*does not fit convnext_tiny"):
        build_encoder("convnext", 64, wider, timm_file)
    with pytest.raises(UserError, match="does not exist"):
        build_encoder("convnext", 64, TINY["convnext"], tmp_path / "missing.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="not a readable weights file"):
        build_encoder("convnext", 64, TINY["convnext"], tmp_path / "junk.pth")


def _fake_hub_cache(root: Path, repo: str, tensors: dict[str, torch.Tensor]) -> None:
    # The layout huggingface_hub writes: refs/main names a snapshot holding the files.
    folder = root / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text("0" * 40)
    snap = folder / "snapshots" / ("0" * 40)
    snap.mkdir(parents=True)
    safetensors.torch.save_file(tensors, str(snap / "model.safetensors"))


def test_pretrained_from_hub_cache_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(UserError, match="not in the Hugging Face cache.*hf download timm/"):
        build_encoder("convnext", 64, TINY["convnext"], True)
    torch.manual_seed(3)
    full = _timm_model("convnext", 64)
    repo = timm.models.get_pretrained_cfg("convnext_tiny").hf_hub_id
    _fake_hub_cache(tmp_path, repo, full.state_dict())
    enc = build_encoder("convnext", 64, TINY["convnext"], True)
    assert torch.equal(enc.body.state_dict()["stem_0.weight"], full.state_dict()["stem.0.weight"])
    spec = _spec("convnext", pretrained=True)
    assert torch.equal(
        build_segmenter(spec, 64).encoder.body.stem_0.weight, full.state_dict()["stem.0.weight"]
    )


@pytest.mark.parametrize("norm", ["bn", "gn"])
def test_batch_of_one_trains(norm: str) -> None:
    # The PPM's 1x1-pooled branch has no BatchNorm, so batch size 1 does not trip BN.
    from jobs.models import Segmenter

    enc = build_encoder("convnext", 64, TINY["convnext"])
    model = Segmenter(enc, decoder_channels=32, norm=norm).train()  # type: ignore[arg-type]
    out = model(torch.randn(1, 3, 64, 64))["fine"]
    out.mean().backward()
    kinds = {type(m) for m in model.decoder.modules()}
    assert (torch.nn.GroupNorm in kinds) == (norm == "gn")
    assert (torch.nn.BatchNorm2d in kinds) == (norm == "bn")
