"""Prototype attention: shapes per backbone, the loss, and an initialisation that sees training
pixels only (and only once: a resumed run keeps its checkpoint's prototypes)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from hcli.classes import DEFAULT_COARSE_GROUPS
from hcli.spec import ModelSpec, load_spec
from jobs.models import build_segmenter
from jobs.models.encoders import SHRUNKEN_ENCODER_KWARGS
from jobs.models.prototypes import PrototypeAttention, init_prototypes_kmeans, prototype_loss
from jobs.task import Env
from tests.conftest import TINY

N_COARSE = 1 + len(DEFAULT_COARSE_GROUPS)


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _spec(backbone: str, **kw: object) -> ModelSpec:
    return ModelSpec(backbone=backbone, encoder_kwargs=SHRUNKEN_ENCODER_KWARGS[backbone],
                     decoder_channels=32, hierarchical=True, attention="prototypes",
                     prototypes={"per_class": 3, "dim": 8}, **kw)


@pytest.mark.parametrize("backbone", list(SHRUNKEN_ENCODER_KWARGS))
def test_attention_shapes_for_each_backbone(backbone: str) -> None:
    crop = 64
    model = build_segmenter(_spec(backbone), crop)
    out = model(torch.randn(2, 3, crop, crop))
    assert set(out) == {"fine", "binary", "coarse", "prototype_sims"}
    assert out["fine"].shape == (2, 16, crop, crop)
    assert out["coarse"].shape == (2, N_COARSE, crop, crop)
    assert out["prototype_sims"].shape == (2, 16 * 3, crop // 4, crop // 4)
    maps = model.prototype_attention(torch.randn(1, 3, crop, crop))
    assert maps.shape == (1, 16, crop // 4, crop // 4)
    torch.testing.assert_close(maps.sum(1), torch.ones(1, crop // 4, crop // 4))
    model.eval()
    assert set(model(torch.randn(1, 3, crop, crop))) == {"fine", "binary", "coarse"}


def test_attention_off_adds_nothing() -> None:
    spec = ModelSpec(backbone="convnext", encoder_kwargs=SHRUNKEN_ENCODER_KWARGS["convnext"],
                     decoder_channels=32)
    torch.manual_seed(0)
    plain = build_segmenter(spec, 64)
    assert not any("attention" in k for k in plain.state_dict())
    assert set(plain(torch.randn(1, 3, 64, 64))) == {"fine"}


def test_residual_starts_at_zero_and_loss_prefers_own_class() -> None:
    torch.manual_seed(0)
    attn = PrototypeAttention(channels=4, num_classes=3, per_class=2, dim=4, temperature=0.1)
    feat = torch.randn(1, 4, 2, 2)
    out, sims = attn(feat)
    torch.testing.assert_close(out, feat)  # value projection starts at zero
    target = torch.zeros(1, 2, 2, dtype=torch.long)
    with torch.no_grad():  # class 0's prototypes on the pixels' embeddings: low loss
        emb = attn.embeddings(feat)[0, :, 0, 0]
        attn.prototypes[0:2] = emb
    near = prototype_loss(attn, attn(feat)[1], target)
    far = prototype_loss(attn, attn(feat)[1], torch.full_like(target, 2))
    assert near < far
    assert prototype_loss(attn, sims, torch.full_like(target, 255)) == 0


def test_kmeans_leaves_a_class_without_pixels_random() -> None:
    torch.manual_seed(0)
    attn = PrototypeAttention(channels=4, num_classes=3, per_class=2, dim=4, temperature=0.1)
    before = attn.prototypes.detach().clone()
    mask = torch.zeros(8, 8, dtype=torch.long)
    mask[:, 4:] = 1  # classes 0 and 1 only; class 2 is planted in no training sample
    direction = torch.tensor([1.0, 2, -1, 0.5])[:, None, None]
    centre = torch.where(mask == 0, -1.0, 1.0)[None, None] * direction
    image = centre + 0.05 * torch.randn(1, 4, 8, 8)
    empty = init_prototypes_kmeans(attn, lambda x: x, [(image, mask)], seed=0)
    assert empty == [2]
    after = attn.prototypes.detach()
    torch.testing.assert_close(after[4:6], before[4:6])
    assert not torch.allclose(after[0:4], before[0:4])
    # Each centre is a unit vector that a pixel of its class is closest to.
    emb = attn.embeddings(image)[0].flatten(1).T
    torch.testing.assert_close(after[0:4].norm(dim=1), torch.ones(4))
    nearest = (emb @ after[0:4].T).argmax(1)
    assert set(nearest[mask.flatten() == 0].tolist()) <= {0, 1}
    assert set(nearest[mask.flatten() == 1].tolist()) <= {2, 3}


def _task(data: Path, run_dir: Path, *extra: str):
    from jobs.multiclass.task import MulticlassTask

    spec = load_spec(None, overrides=[*TINY, f"data.root={data}", "model.hierarchical=true",
                                      "model.attention=prototypes", *extra])
    env = Env(spec, torch.device("cpu"), 0, 1, run_dir, "test", contextlib.nullcontext)
    return MulticlassTask(env)


class _Spy:
    """build_eval_dataset that records every id whose item is read, and plants a unique
    colour and a class of its own (Lightleak, removed from every other image) in every test and
    validation image: none of it may reach the prototypes."""

    def __init__(self, real, test_ids: set[str]) -> None:
        self.real, self.test_ids, self.read = real, test_ids, []

    def __call__(self, spec, manifest, ids):
        ds = self.real(spec, manifest, ids)
        spy = self

        class Wrapped:
            def __len__(self) -> int:
                return len(ds)

            def __getitem__(self, i: int):
                item = ds[i]
                spy.read.append(item["id"])
                if item["id"] in spy.test_ids:
                    item["image"] = torch.full_like(item["image"], 9.0)
                    item["mask"] = torch.full_like(item["mask"], 15)
                else:
                    item["mask"] = torch.where(item["mask"] == 15, 0, item["mask"])
                return item

        return Wrapped()


def test_prototype_init_reads_training_ids_only(synth_data, tmp_path, monkeypatch) -> None:
    import jobs.multiclass.task as mt
    from hcli.data.manifest import load_manifest
    from hcli.data.splits import get_fold

    probe = _task(synth_data, tmp_path)
    spec = probe.spec
    fold = get_fold(load_manifest(spec.data.root), spec.data, spec.seed)
    spy = _Spy(mt.build_eval_dataset, set(fold.test) | set(fold.val))
    monkeypatch.setattr(mt, "build_eval_dataset", spy)
    task = _task(synth_data, tmp_path)
    task.build_feeds()
    spy.read.clear()  # feeds build val/test sets lazily; only the initialisation reads here
    torch.manual_seed(0)
    model = task.build_model()
    task.on_start(model, resumed=False)
    assert spy.read and set(spy.read) <= set(fold.train)
    assert not set(spy.read) & (set(fold.test) | set(fold.val))
    # Same seed, random init: the k-means moved the prototypes of classes with pixels only.
    torch.manual_seed(0)
    random_init = _task(synth_data, tmp_path, "model.prototypes.init=random")
    monkeypatch.setattr(mt, "build_eval_dataset", spy.real)
    random_init.build_feeds()
    torch.manual_seed(0)
    base = random_init.build_model()
    moved = (model.attention.prototypes - base.attention.prototypes).abs().sum(1) > 0
    assert moved.any()
    assert not moved[15 * 4:].any()  # the planted test-only class kept its random prototypes


def test_resumed_run_does_not_reinitialise(synth_data, tmp_path, monkeypatch) -> None:
    import jobs.multiclass.task as mt

    calls = []
    monkeypatch.setattr(mt, "init_prototypes_kmeans", lambda *a, **k: calls.append(1) or [])
    task = _task(synth_data, tmp_path)
    task.build_feeds()
    task.on_start(task.build_model(), resumed=False)
    assert calls == [1]
    # The engine restored a checkpoint: its prototypes stand. A run whose every checkpoint was
    # damaged (resumed=False although markers exist) initialises like a fresh one.
    task = _task(synth_data, tmp_path)
    task.build_feeds()
    task.on_start(task.build_model(), resumed=True)
    assert calls == [1]
