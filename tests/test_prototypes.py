"""Prototype attention: shapes per backbone, the loss, and an initialisation that sees training
pixels only (and only once: a resumed run keeps its checkpoint's prototypes), in multiclass and
meta runs; meta and adapt runs carry the prototypes and their loss."""

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
    monkeypatch.setattr(mt, "init_segmenter_prototypes", lambda *a, **k: calls.append(1) or [])
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


# -- meta and adapt ----------------------------------------------------------------------------

META = ("data.protocol=lomo", "data.fold=4", "model.attention=prototypes",
        "model.prototypes.per_class=2", "model.prototypes.dim=8")


def _meta_task(data: Path, run_dir: Path, *extra: str):
    from jobs.meta.task import MetaTask

    spec = load_spec(None, kind="meta", overrides=[*TINY, f"data.root={data}", *META, *extra])
    env = Env(spec, torch.device("cpu"), 0, 1, run_dir, "test", contextlib.nullcontext)
    return MetaTask(env)


def test_meta_prototype_init_reads_training_domain_ids_only(synth_data, tmp_path,
                                                            monkeypatch) -> None:
    """The planted colour and class are in the held-out domain and the validation images; even
    meta.train_on=all (transductive meta-training) keeps them out of the initialisation."""
    import jobs.meta.task as mt
    from hcli.data.manifest import load_manifest
    from hcli.data.splits import get_fold

    spec = _meta_task(synth_data, tmp_path).spec
    fold = get_fold(load_manifest(spec.data.root), spec.data, spec.seed)
    assert fold.held_out and fold.test
    spy = _Spy(mt.build_eval_dataset, set(fold.test) | set(fold.val))
    monkeypatch.setattr(mt, "build_eval_dataset", spy)
    for extra in ((), ("meta.train_on=all", "meta.transductive=true")):
        task = _meta_task(synth_data, tmp_path, *extra)
        task.build_feeds()
        spy.read.clear()
        torch.manual_seed(0)
        model = task.build_model()
        task.on_start(model, resumed=False)
        assert spy.read and set(spy.read) <= set(fold.train), extra
        monkeypatch.setattr(mt, "build_eval_dataset", spy.real)
        random_init = _meta_task(synth_data, tmp_path, *extra, "model.prototypes.init=random")
        random_init.build_feeds()
        torch.manual_seed(0)
        base = random_init.build_model()
        monkeypatch.setattr(mt, "build_eval_dataset", spy)
        moved = (model.attention.prototypes - base.attention.prototypes).abs().sum(1) > 0
        assert moved.any()
        assert not moved[15 * 2:].any()  # the planted class's prototypes stayed random


def test_meta_loss_carries_the_prototype_loss_in_inner_and_outer_steps(synth_data,
                                                                        tmp_path) -> None:
    task = _meta_task(synth_data, tmp_path, "meta.inner_steps=1")
    task.build_feeds()
    torch.manual_seed(0)
    model = task.build_model()
    assert "attention.prototypes" in task.learner.inner_names  # decoder side: adapted inner
    seen = []
    plain = task.criterion
    task.criterion = lambda out, tgt: (seen.append(set(out)) or plain(out, tgt))  # type: ignore
    feeds = task.build_feeds()
    fetch = {name: iter(feed.loader) for name, feed in feeds.items()}
    model.train()
    loss = task.micro_step(lambda name: next(fetch[name]), model)
    # One support step and the query: both forwards produced similarities for the extra term.
    assert len(seen) == 2 and all("prototype_sims" in keys for keys in seen)
    assert task.train_logs()["prototype_loss"] > 0
    model.zero_grad()
    loss.backward()
    assert model.attention.prototypes.grad is not None
    assert model.attention.prototypes.grad.abs().sum() > 0
    heads_only = _meta_task(synth_data, tmp_path, "meta.inner_params=heads")
    heads_only.build_feeds()
    heads_only.build_model()
    assert heads_only.learner.inner_names
    assert not any(n.startswith("attention.") for n in heads_only.learner.inner_names)


@pytest.mark.slow
def test_meta_then_adapt_with_prototypes_keep_them_in_checkpoints(synth_data, tmp_path) -> None:
    import json

    from tests.conftest import run_cli, tiny_overrides

    runs = tmp_path / "runs"
    run_cli(["submit", "meta", "--foreground", "--runs-dir", str(runs),
             *tiny_overrides(synth_data, *META, "meta.tasks_per_step=2", "meta.inner_steps=1",
                             "train.steps=4", "train.val_every_steps=2")])
    (meta,) = [p for p in runs.iterdir() if not p.name.startswith(".")]
    assert json.loads((meta / "results.json").read_text())["kind"] == "meta"
    src = torch.load(meta / "checkpoints" / "best.pt", weights_only=True)["model"]
    assert src["attention.prototypes"].shape == (16 * 2, 8)
    step_ckpts = sorted((meta / "checkpoints").glob("step-*.pt"))
    assert step_ckpts
    assert "attention.prototypes" in torch.load(step_ckpts[-1], weights_only=True)["model"]
    logged = [json.loads(line) for line in (meta / "metrics.jsonl").read_text().splitlines()]
    assert any((line.get("prototype_loss") or 0) > 0 for line in logged)
    assert list((meta / "figures" / "prototypes").glob("*_attention.png"))

    run_cli(["submit", "adapt", "--from", meta.name, "--foreground", "--runs-dir", str(runs),
             "-o", "adapt.shots=2", "-o", "adapt.steps=2", "-o", "adapt.params=decoder"])
    (adapt,) = [p for p in runs.iterdir() if not p.name.startswith(".") and p != meta]
    res = json.loads((adapt / "results.json").read_text())
    assert res["kind"] == "adapt" and res["params"] == "decoder" and res["final_step"] == 2
    got = torch.load(adapt / "checkpoints" / "best.pt", weights_only=True)["model"]
    assert not torch.equal(got["attention.prototypes"], src["attention.prototypes"])
    encoder = [k for k in src if k.startswith("encoder.")]
    assert encoder and all(torch.equal(got[k], src[k]) for k in encoder)
    assert list((adapt / "figures" / "prototypes").glob("*_attention.png"))
