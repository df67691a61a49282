"""Run identity: stable under what does not change results, sensitive to what does."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel, ConfigDict, Field

from hcli.classes import CLASS_NAMES
from hcli.identity import identity_changes, identity_payload, run_id
from hcli.launch._plan import plan_runs
from hcli.runs import Run
from hcli.spec import SPEC_SCHEMA_VERSION, DataSpec, Spec, load_spec, resolve_paths


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


# --- identity from the changes to the defaults --------------------------------------------------

# One non-default value for every identity field, with the kind whose sections make it count.
# test_every_field_is_listed fails when a field is added without a line here.
CHANGED: dict[str, tuple[Any, str]] = {
    "kind": ("probe", "multiclass"),
    "seed": (1, "multiclass"),
    "data.root": ("elsewhere", "multiclass"),
    "data.crop_size": (256, "multiclass"),
    "data.protocol": ("lomo", "multiclass"),
    "data.fold": (1, "multiclass"),
    "data.k": (3, "multiclass"),
    "data.groups_file": ("groups.yaml", "multiclass"),
    "data.val_fraction": (0.2, "multiclass"),
    "data.min_fold_size": (5, "multiclass"),
    "data.scale_range": ([0.5, 1.0], "multiclass"),
    "data.rare_repeat_threshold": (0.0, "multiclass"),
    "data.eval_window": (256, "multiclass"),
    "model.backbone": ("swin", "multiclass"),
    "model.encoder_kwargs": ({"depths": [1, 1, 1, 1]}, "multiclass"),
    "model.pretrained": (True, "multiclass"),
    "model.init_from": ("multiclass-convnext-00000000", "multiclass"),
    "model.init_allow_test_overlap": (True, "multiclass"),
    "model.decoder_channels": (128, "multiclass"),
    "model.decoder_norm": ("gn", "multiclass"),
    "model.pool_scales": ([1, 2, 3], "multiclass"),
    "model.hierarchical": (True, "multiclass"),
    "model.coarse_groups": ({"all": list(CLASS_NAMES[1:])}, "multiclass"),
    "model.grad_checkpointing": (True, "multiclass"),
    "model.attention": ("prototypes", "multiclass"),
    "model.prototypes.per_class": (2, "multiclass"),
    "model.prototypes.dim": (32, "multiclass"),
    "model.prototypes.loss_weight": (0.5, "multiclass"),
    "model.prototypes.temperature": (0.2, "multiclass"),
    "model.prototypes.init": ("random", "multiclass"),
    "train.curriculum": (["coarse", "fine"], "hierarchical"),
    "train.curriculum_fractions": ([0.2, 0.3, 0.5], "curriculum"),
    "train.curriculum_plateau": (2, "curriculum"),
    "train.curriculum_freeze_encoder": (["binary"], "curriculum"),
    "train.curriculum_lr_mults": ([2.0, 1.0, 0.5], "curriculum"),
    "train.steps": (100, "multiclass"),
    "train.batch_size": (4, "multiclass"),
    "train.accum_steps": (2, "multiclass"),
    "train.lr": (2e-4, "multiclass"),
    "train.encoder_lr_mult": (0.5, "multiclass"),
    "train.weight_decay": (0.05, "multiclass"),
    "train.warmup_steps": (10, "multiclass"),
    "train.schedule": ("cosine", "multiclass"),
    "train.poly_power": (1.0, "multiclass"),
    "train.clip_grad": (None, "multiclass"),
    "train.amp": ("bf16", "multiclass"),
    "train.channels_last": (True, "multiclass"),
    "train.compile": (True, "multiclass"),
    "train.device": ("cpu", "multiclass"),
    "train.val_every_steps": (100, "multiclass"),
    "train.early_stop_patience": (3, "multiclass"),
    "train.early_stop_min_delta": (0.01, "multiclass"),
    "loss.name": ("ce", "multiclass"),
    "loss.dice_weight": (0.5, "multiclass"),
    "loss.focal_weight": (0.5, "multiclass"),
    "loss.focal_gamma": (1.0, "multiclass"),
    "loss.class_weights": ("log", "multiclass"),
    "loss.weight_clip": (5.0, "multiclass"),
    "loss.coarse_weight": (0.1, "multiclass"),
    "loss.binary_weight": (0.1, "multiclass"),
    "mae.mask_ratio": (0.75, "mae"),
    "mae.patch_size": (16, "mae"),
    "mae.decoder": ("conv", "mae"),
    "mae.images": ("train+val", "mae"),
    "mae.loss": ("mse", "mae"),
    "mae.norm_target": (True, "mae"),
    "meta.domain": ("content", "meta"),
    "meta.inner_lr": (1e-2, "meta"),
    "meta.inner_steps": (3, "meta"),
    "meta.tasks_per_step": (2, "meta"),
    "meta.algorithm": ("reptile", "meta"),
    "meta.inner_params": ("heads", "meta"),
    "meta.transductive": (True, "meta"),
    "meta.train_on": ("all", "meta-transductive"),
    "adapt.source_run": ("meta-convnext-11111111", "adapt"),
    "adapt.shots": (10, "adapt"),
    "adapt.steps": (50, "adapt"),
    "adapt.lr": (1e-3, "adapt"),
    "adapt.params": ("heads", "adapt"),
}

# One non-default value for every execution-only field: none of them may move the id.
EXECUTION_ONLY_CHANGED: dict[str, Any] = {
    "name": "other",
    "data.num_workers": 8,
    "data.stage_to_local": True,
    "data.stage_dir": "/local/scratch",
    "train.checkpoint_every_steps": 7,
    "train.checkpoint_every_min": 1.0,
    "train.keep_checkpoints": 9,
    "train.log_every_steps": 1,
    "train.threads": 2,
    "train.overlays": 0,
    "slurm.partition": "gpu",
    "slurm.time_min": 600,
    "slurm.nodes": 2,
    "slurm.gpus_per_node": 1,
    "slurm.tasks_per_node": 2,
    "slurm.cpus_per_task": 8,
    "slurm.mem_gb": 64,
    "slurm.account": "lab",
    "slurm.qos": "high",
    "slurm.constraint": "a100",
    "slurm.signal_delay_s": 60,
    "slurm.max_requeues": 0,
    "slurm.additional_parameters": {"exclusive": True},
    "slurm.setup": ["module load cuda"],
    "slurm.container": "image.sif",
    "slurm.skip_checks": True,
}

# Minimal settings a kind needs to validate at all.
BASE: dict[str, dict[str, Any]] = {
    "multiclass": {},
    "hierarchical": {"model": {"hierarchical": True}},
    "curriculum": {"model": {"hierarchical": True},
                   "train": {"curriculum": ["binary", "coarse", "fine"]}},
    "mae": {"kind": "mae"},
    "meta": {"kind": "meta"},
    "meta-transductive": {"kind": "meta", "meta": {"transductive": True}},
    "adapt": {"kind": "adapt", "adapt": {"source_run": "meta-convnext-00000000"}},
}


def _leaf_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    keys = []
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            keys.extend(_leaf_keys(ann, f"{prefix}{name}."))
        else:
            keys.append(f"{prefix}{name}")
    return keys


def _with(tree: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
    out = copy.deepcopy(tree)
    *parents, leaf = key.split(".")
    node = out
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value
    return out


def _digest(spec: Spec) -> str:
    return run_id(spec).rsplit("-", 1)[1]


def test_every_field_is_listed():
    listed = set(CHANGED) | set(EXECUTION_ONLY_CHANGED)
    assert set(_leaf_keys(Spec)) == listed, "give new spec fields a value in CHANGED or below it"


@pytest.mark.parametrize("key", sorted(CHANGED))
def test_changing_any_identity_field_changes_the_digest(key):
    value, kind = CHANGED[key]
    base = Spec.model_validate(BASE[kind])
    changed = Spec.model_validate(_with(BASE[kind], key, value))
    # The digest alone must tell them apart, even where kind or backbone also show in the prefix.
    assert _digest(changed) != _digest(base)
    assert key in identity_changes(changed)
    assert identity_changes(changed)[key] != identity_changes(base).get(key, "unset")


def test_single_changes_give_pairwise_distinct_ids():
    ids = {
        run_id(Spec.model_validate(_with(BASE[kind], key, value)))
        for key, (value, kind) in CHANGED.items()
    }
    assert len(ids) == len(CHANGED)


@pytest.mark.parametrize("key", sorted(EXECUTION_ONLY_CHANGED))
def test_changing_any_execution_only_field_keeps_the_id(key):
    spec = load_spec("quickstart")
    tree = _with(spec.model_dump(mode="json"), key, EXECUTION_ONLY_CHANGED[key])
    assert run_id(Spec.model_validate(tree)) == run_id(spec)


def test_a_value_equal_to_the_default_is_no_change():
    assert identity_changes(Spec()) == {}
    explicit = Spec.model_validate(
        {"seed": 0, "train": {"lr": 1e-4}, "model": {"pool_scales": [1, 2, 3, 6]}}
    )
    assert run_id(explicit) == run_id(Spec())


def test_the_schema_version_is_hashed(monkeypatch):
    import hcli.identity

    before = run_id(load_spec("quickstart"))
    assert identity_payload(load_spec("quickstart"))["schema"] == SPEC_SCHEMA_VERSION
    monkeypatch.setattr(hcli.identity, "SPEC_SCHEMA_VERSION", SPEC_SCHEMA_VERSION + 1)
    assert run_id(load_spec("quickstart")) != before


class _DataWithNewField(DataSpec):
    new_knob: float = Field(0.5, description="a field added after runs were submitted")


class _NewSection(BaseModel):
    model_config = ConfigDict(extra="forbid")
    strength: int = 3


class _SpecWithNewFields(Spec):
    data: _DataWithNewField = Field(default_factory=lambda: _DataWithNewField())
    curriculum: _NewSection = Field(default_factory=lambda: _NewSection())


@pytest.mark.parametrize(
    "overrides", [[], ["seed=1"], ["train.lr=3e-4", "data.fold=2", "model.encoder_kwargs={}"]]
)
def test_adding_fields_with_defaults_keeps_every_id(overrides):
    spec = load_spec("quickstart", overrides=overrides)
    newer = _SpecWithNewFields.model_validate(spec.model_dump(mode="json"))
    assert newer.data.new_knob == 0.5
    assert run_id(newer) == run_id(spec)
    # ... while setting the new field counts like any other.
    tree = _with(spec.model_dump(mode="json"), "data.new_knob", 0.7)
    assert run_id(_SpecWithNewFields.model_validate(tree)) != run_id(spec)
    tree = _with(spec.model_dump(mode="json"), "curriculum.strength", 4)
    assert run_id(_SpecWithNewFields.model_validate(tree)) != run_id(spec)


def test_an_older_spec_yaml_without_newer_fields_loads_with_their_defaults(tmp_path):
    spec = resolve_paths(load_spec("quickstart"), tmp_path)
    old = spec.model_dump(mode="json")
    del old["model"]["decoder_norm"], old["train"]["early_stop_min_delta"], old["adapt"]
    folder = tmp_path / run_id(spec)
    folder.mkdir()
    (folder / "spec.yaml").write_text(yaml.safe_dump(old))
    read = Run(folder).spec()
    assert read.model.decoder_norm == "bn" and read.train.early_stop_min_delta == 0.0
    assert read == spec
    assert run_id(read) == folder.name


# Pinned ids: a change here renames every run folder and makes submit rerun finished work.
# Only a deliberate SPEC_SCHEMA_VERSION bump (with a CHANGELOG.md entry) may change them.
GOLDEN = [
    ("quickstart", "multiclass", None, [], "multiclass-convnext-6b6d72f6"),
    (None, "multiclass", None, [], "multiclass-convnext-3588b12a"),
    (None, "multiclass", "swin", ["seed=1"], "multiclass-swin-9c610cfc"),
    (
        None,
        "multiclass",
        None,
        ["train.lr=3e-4", "data.fold=2", "model.encoder_kwargs={depths: [1, 1, 1, 1]}"],
        "multiclass-convnext-8818bb48",
    ),
    ("quickstart", "probe", "maxvit", ["slurm.partition=gpu"], "probe-maxvit-09040126"),
]


@pytest.mark.parametrize(("config", "kind", "backbone", "overrides", "expected"), GOLDEN)
def test_golden_ids(config, kind, backbone, overrides, expected):
    flags = {"model.backbone": backbone} if backbone else {}
    assert run_id(load_spec(config, kind=kind, flags=flags, overrides=overrides)) == expected


def test_golden_id_of_a_sweep_member_as_submit_plans_it():
    planned = plan_runs(
        "multiclass",
        backbones=["swin"],
        overrides=["seed=0,1", "data.root=/data/artefact"],
        base_dir=Path("/study"),
    )
    assert [p.run_id for p in planned] == ["multiclass-swin-5389e38f", "multiclass-swin-a881d691"]
