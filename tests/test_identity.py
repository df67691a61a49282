"""Run identity: stable under what does not change results, sensitive to what does."""

from __future__ import annotations

from pathlib import Path

from hcli.identity import run_id
from hcli.spec import load_spec


def _id(tmp_path: Path | None = None, text: str | None = None, overrides=(), **kw) -> str:
    config = None
    if text is not None:
        config = tmp_path / f"c{abs(hash(text))}.yaml"
        config.write_text(text)
    return run_id(load_spec(config, overrides=list(overrides), **kw))


def test_format():
    rid = _id(flags={"model.backbone": "swin"})
    kind, backbone, digest = rid.split("-")
    assert (kind, backbone) == ("multiclass", "swin")
    assert len(digest) == 8 and int(digest, 16) >= 0


def test_key_order_in_yaml_does_not_matter(tmp_path):
    a = "seed: 1\ntrain: {lr: 0.001, steps: 100}\nmodel: {backbone: swin}\n"
    b = "model: {backbone: swin}\ntrain: {steps: 100, lr: 0.001}\nseed: 1\n"
    assert _id(tmp_path, a) == _id(tmp_path, b)


def test_override_order_does_not_matter():
    assert _id(overrides=["train.lr=1e-3", "seed=4"]) == _id(overrides=["seed=4", "train.lr=1e-3"])


def test_equal_values_written_differently_are_equal():
    assert _id(overrides=["train.lr=0.001"]) == _id(overrides=["train.lr=1e-3"])


def test_slurm_and_execution_fields_do_not_count():
    base = _id()
    assert _id(overrides=["slurm.partition=gpu", "slurm.time_min=600", "slurm.mem_gb=64"]) == base
    assert _id(overrides=["name=other", "data.num_workers=8", "train.log_every_steps=1"]) == base
    assert _id(overrides=["train.checkpoint_every_steps=7", "train.keep_checkpoints=9"]) == base


def test_sections_of_other_kinds_do_not_count():
    assert _id(overrides=["mae.mask_ratio=0.9"]) == _id()
    assert _id(kind="mae", overrides=["mae.mask_ratio=0.9"]) != _id(kind="mae")


def test_what_changes_results_changes_the_id():
    base = _id()
    changed = {
        _id(overrides=["seed=1"]),
        _id(overrides=["train.lr=2e-4"]),
        _id(overrides=["data.fold=1"]),
        _id(overrides=["loss.class_weights=log"]),
        _id(overrides=["model.hierarchical=true"]),
        _id(kind="probe"),
    }
    assert base not in changed and len(changed) == 6
