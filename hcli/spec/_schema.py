"""The experiment spec: one nested pydantic tree, `extra="forbid"` everywhere.

Defaults live here, in code. Cross-field rules live in one place (`Spec._cross_field_rules`) and
their messages say how to fix the value. Fields marked `identity=False` describe *how* a run
executes, not *what* it computes, and are left out of the run id (see `hcli.identity`).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from hcli.classes import CLASS_NAMES, DEFAULT_COARSE_GROUPS

__all__ = [
    "SPEC_SCHEMA_VERSION",
    "Kind",
    "KINDS",
    "BACKBONES",
    "DataSpec",
    "ModelSpec",
    "TrainSpec",
    "LossSpec",
    "SlurmSpec",
    "MaeSpec",
    "MetaSpec",
    "AdaptSpec",
    "Spec",
    "backbone_short_name",
    "resolve_timm_name",
]

# Part of every run id (hcli.identity). Bump it when a default changes what a spec computes,
# and say so in CHANGELOG.md; adding a field with a default needs no bump.
SPEC_SCHEMA_VERSION = 1

Kind = Literal["probe", "multiclass", "mae", "meta", "adapt"]
KINDS: tuple[str, ...] = ("probe", "multiclass", "mae", "meta", "adapt")

# Short names for the study's three encoder families. MaxViT and Swin are built for the crop
# size (`img_size=`), so the timm name is resolved together with the crop (resolve_timm_name).
BACKBONES: dict[str, str] = {
    "convnext": "convnext_tiny",
    "swin": "swin_tiny_patch4_window7_224",
    "maxvit": "maxvit_tiny_tf_224",
}


def _execution_only(**kw: Any) -> Any:
    """A field that changes how a run executes but not its results: not part of the run id."""
    return Field(json_schema_extra={"identity": False}, **kw)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataSpec(_Section):
    root: Path = Field(
        Path("data/artefact"), description="prepared HDF5 folder (hcli data prepare)"
    )
    crop_size: int = Field(512, gt=0, description="training crop side in pixels (multiple of 32)")
    protocol: Literal["kfold", "lomo", "lomo-grouped", "locontent"] = "kfold"
    fold: int = Field(0, ge=0, description="which fold of the protocol is held out")
    k: int = Field(5, ge=2, description="number of folds for protocol kfold")
    groups_file: Path | None = Field(
        None, description="YAML of material groups for lomo-grouped (default: the shipped one)"
    )
    val_fraction: float = Field(
        0.15, ge=0.0, lt=1.0, description="share of train kept for validation"
    )
    min_fold_size: int = Field(10, ge=1, description="test folds smaller than this are flagged")
    scale_range: tuple[float, float] = Field(
        (0.5, 1.5), description="random rescale before the crop"
    )
    rare_repeat_threshold: float = Field(
        0.1,
        ge=0.0,
        le=1.0,
        description="repeat-factor sampling threshold t (LVIS); 0 disables oversampling",
    )
    eval_window: int | None = Field(
        None, description="sliding-window side for evaluation (default: crop_size)"
    )
    num_workers: int = _execution_only(default=2, ge=0, description="loader worker processes")
    stage_to_local: bool = _execution_only(
        default=False,
        description="copy the shards to node-local scratch at job start and read them there",
    )
    stage_dir: Path | None = _execution_only(
        default=None,
        description="scratch folder for stage_to_local, $VARS expanded on the node "
        "(default: $SLURM_TMPDIR, else $TMPDIR, else /tmp)",
    )

    @field_validator("scale_range")
    @classmethod
    def _ordered(cls, v: tuple[float, float]) -> tuple[float, float]:
        lo, hi = v
        if not 0 < lo <= hi:
            raise ValueError("must be two numbers 0 < low <= high, e.g. [0.5, 1.5]")
        return v


class PrototypeSpec(_Section):
    """Damage-prototype attention (model.attention=prototypes; docs/innovations.md)."""

    per_class: int = Field(4, gt=0, description="prototypes per class (damage is multimodal)")
    dim: int = Field(64, gt=0, description="embedding dimension pixels and prototypes share")
    loss_weight: float = Field(0.1, ge=0, description="weight of the pull-to-own-prototypes loss")
    temperature: float = Field(0.1, gt=0, description="cosine similarities are divided by this")
    init: Literal["kmeans", "random"] = Field(
        "kmeans", description="k-means over the fold's training pixels per class, or random"
    )


class ModelSpec(_Section):
    backbone: str = Field(
        "convnext", description="convnext | swin | maxvit (the Tiny models) or any timm model name"
    )
    encoder_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="passed to timm.create_model (e.g. depths, embed_dim)"
    )
    pretrained: bool | Path = Field(
        False, description="false, true (timm/Hugging Face cache) or a local weights file"
    )
    init_from: str | None = Field(
        None, description="run id or checkpoint file whose encoder initialises this run"
    )
    init_allow_test_overlap: bool = Field(
        False, description="allow init_from a run that trained on this run's test images"
    )
    decoder_channels: int = Field(256, gt=0, description="UPerNet channel width")
    decoder_norm: Literal["bn", "gn"] = Field(
        "bn", description="decoder normalisation: BatchNorm, or GroupNorm for tiny batches"
    )
    pool_scales: tuple[int, ...] = (1, 2, 3, 6)
    hierarchical: bool = Field(False, description="add binary and coarse heads")
    coarse_groups: dict[str, list[str]] = Field(
        default_factory=lambda: {k: list(v) for k, v in DEFAULT_COARSE_GROUPS.items()},
        description="damage groups: group name -> fine class names (each damage class once)",
    )
    grad_checkpointing: bool = False
    attention: Literal["none", "prototypes"] = Field(
        "none", description="prototypes: decoder features attend to learnable class prototypes"
    )
    prototypes: PrototypeSpec = Field(default_factory=lambda: PrototypeSpec())

    @field_validator("backbone")
    @classmethod
    def _known_backbone(cls, v: str) -> str:
        if v in BACKBONES or v in _timm_names():
            return v
        import difflib

        close = difflib.get_close_matches(v, [*BACKBONES, *_timm_names()], n=3, cutoff=0.6)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise ValueError(
            f"unknown backbone {v!r}; {hint}use convnext, swin, maxvit or a timm model name "
            "(python -c 'import timm; print(timm.list_models())')"
        )

    @field_validator("coarse_groups")
    @classmethod
    def _groups_cover_damage_once(cls, v: dict[str, list[str]]) -> dict[str, list[str]]:
        damage = set(CLASS_NAMES[1:])
        seen: dict[str, str] = {}
        for group, names in v.items():
            for name in names:
                if name not in damage:
                    raise ValueError(
                        f"group {group!r} names {name!r}, which is not a damage class; "
                        f"use one of {sorted(damage)}"
                    )
                if name in seen:
                    raise ValueError(f"{name!r} is in both {seen[name]!r} and {group!r}; keep one")
                seen[name] = group
        missing = sorted(damage - set(seen))
        if missing:
            raise ValueError(f"damage classes in no group: {missing}; add each to one group")
        return v


class TrainSpec(_Section):
    steps: int = Field(20_000, gt=0, description="optimizer steps in total")
    batch_size: int = Field(
        8, gt=0, description="samples per step per process (before accumulation)"
    )
    accum_steps: int = Field(1, gt=0, description="micro-batches accumulated per optimizer step")
    lr: float = Field(1e-4, gt=0, description="decoder learning rate")
    encoder_lr_mult: float = Field(0.1, gt=0, le=1, description="encoder lr = lr * this")
    weight_decay: float = Field(0.01, ge=0)
    warmup_steps: int | None = Field(
        None, ge=0, description="linear warmup steps (default: min(500, steps // 10))"
    )
    schedule: Literal["poly", "cosine"] = "poly"
    poly_power: float = Field(0.9, gt=0)
    clip_grad: float | None = Field(1.0, gt=0, description="max gradient norm; null disables")
    amp: Literal["off", "bf16", "fp16"] = "off"
    channels_last: bool = False
    compile: bool = False
    device: Literal["auto", "cpu", "cuda"] = "auto"
    val_every_steps: int = Field(500, gt=0)
    early_stop_patience: int | None = Field(
        None, gt=0, description="validations without improvement before stopping; null disables"
    )
    early_stop_min_delta: float = Field(0.0, ge=0)
    checkpoint_every_steps: int = _execution_only(default=500, gt=0)
    checkpoint_every_min: float = _execution_only(default=10.0, gt=0)
    keep_checkpoints: int = _execution_only(default=3, ge=1)
    log_every_steps: int = _execution_only(default=10, gt=0)
    threads: int | None = _execution_only(default=None, gt=0, description="torch CPU threads")
    overlays: int = _execution_only(default=4, ge=0, description="prediction overlays saved")
    curriculum: tuple[Literal["binary", "coarse", "fine"], ...] = Field(
        (), description="stages over the hierarchy, e.g. [binary, coarse, fine]; empty: none"
    )
    curriculum_fractions: tuple[float, ...] | None = Field(
        None, description="share of train.steps per stage (default: equal shares)"
    )
    curriculum_plateau: int | None = Field(
        None, gt=0, description="a stage also ends after this many validations without gain"
    )
    curriculum_freeze_encoder: tuple[Literal["binary", "coarse", "fine"], ...] = Field(
        (), description="stages in which the encoder is frozen"
    )
    curriculum_lr_mults: tuple[float, ...] | None = Field(
        None, description="learning-rate multiplier per stage (default: 1 for each)"
    )

    @field_validator("curriculum", "curriculum_freeze_encoder", mode="before")
    @classmethod
    def _stage_list(cls, v: Any) -> Any:
        # A YAML string `binary,coarse,fine` is the list it spells.
        return [p.strip() for p in v.split(",") if p.strip()] if isinstance(v, str) else v

    @property
    def warmup(self) -> int:
        return self.warmup_steps if self.warmup_steps is not None else min(500, self.steps // 10)


class LossSpec(_Section):
    name: Literal["dice_focal", "ce"] = "dice_focal"
    dice_weight: float = Field(1.0, ge=0)
    focal_weight: float = Field(1.0, ge=0)
    focal_gamma: float = Field(2.0, ge=0)
    class_weights: Literal["none", "inverse", "inverse_sqrt", "log"] = "none"
    weight_clip: float = Field(10.0, gt=0, description="class weights are clipped to [1/c, c]")
    coarse_weight: float = Field(0.3, ge=0, description="auxiliary coarse head loss weight")
    binary_weight: float = Field(0.2, ge=0, description="auxiliary binary head loss weight")

    @model_validator(mode="after")
    def _some_term(self) -> LossSpec:
        if self.name == "dice_focal" and self.dice_weight == 0 and self.focal_weight == 0:
            raise ValueError("dice_weight and focal_weight are both 0; set one above 0")
        return self


class SlurmSpec(_Section):
    partition: str | None = None
    time_min: int = Field(240, gt=0, description="time limit in minutes")
    nodes: int = Field(1, gt=0)
    gpus_per_node: int = Field(0, ge=0)
    tasks_per_node: int | None = Field(None, gt=0, description="default: one task per GPU, else 1")
    cpus_per_task: int = Field(4, gt=0)
    mem_gb: float = Field(32, gt=0)
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    signal_delay_s: int = Field(120, gt=0, description="USR2 this long before the time limit")
    max_requeues: int = Field(3, ge=0)
    additional_parameters: dict[str, Any] = Field(default_factory=dict)
    setup: list[str] = Field(default_factory=list, description="shell lines run before the job")
    container: Path | None = Field(None, description="Apptainer image (.sif) to run the job in")
    skip_checks: bool = _execution_only(
        default=False,
        description="skip the checks before queueing (data seen only from the nodes); "
        "the job runs them at its start",
    )

    @property
    def ntasks_per_node(self) -> int:
        return self.tasks_per_node or max(1, self.gpus_per_node)


class MaeSpec(_Section):
    """Masked-image pretraining, SimMIM-style (docs/mae.md)."""

    mask_ratio: float = Field(0.6, gt=0, lt=1, description="share of mask patches hidden")
    patch_size: int = Field(
        32, gt=0, description="mask grid in pixels (a multiple of the encoder's stem stride)"
    )
    decoder: Literal["linear", "conv"] = Field(
        "linear", description="linear: 1x1 conv + pixel shuffle (SimMIM); conv: a small stack"
    )
    loss: Literal["l1", "mse"] = Field("l1", description="on masked pixels only")
    norm_target: bool = Field(False, description="regress each patch normalised (MAE)")
    images: Literal["train", "train+val", "all"] = Field(
        "train", description="which images of the fold: all includes its test images"
    )


class MetaSpec(_Section):
    """Meta-learning over the domains of a fold's training set (docs/meta.md)."""

    algorithm: Literal["fomaml", "reptile", "maml"] = Field(
        "fomaml", description="first-order MAML, Reptile, or second-order MAML (small models)"
    )
    domain: Literal["material", "content", "group"] = Field(
        "material", description="what a task is: a material, a content, or a material group"
    )
    inner_lr: float = Field(1e-3, gt=0, description="SGD learning rate of the inner loop")
    inner_steps: int = Field(5, gt=0, description="SGD steps on the support batch per task")
    inner_params: Literal["all", "decoder", "heads"] = Field(
        "all", description="what the inner loop adapts: all, decoder (+heads), or heads only"
    )
    tasks_per_step: int = Field(
        4, gt=0, description="domains per outer step (per process; = train.accum_steps)"
    )
    train_on: Literal["fold", "all"] = Field(
        "fold", description="fold: the fold's training domains; all: every domain (transductive)"
    )
    transductive: bool = Field(
        False, description="allow meta.train_on=all, which meta-trains on the held-out domain"
    )


class AdaptSpec(_Section):
    """k-shot adaptation of a trained run (meta or multiclass) to its held-out domain."""

    source_run: str | None = Field(
        None, description="run id whose weights adapt (a leave-one-domain-out run)"
    )
    shots: int = Field(5, ge=0, description="support images from the held-out domain; 0: as is")
    steps: int = Field(100, gt=0, description="fine-tuning steps on the support images")
    lr: float = Field(1e-4, gt=0, description="fine-tuning learning rate (constant)")
    params: Literal["all", "decoder", "heads"] | None = Field(
        None, description="parameters that adapt (default: meta.inner_params, else all)"
    )


class Spec(_Section):
    name: str = _execution_only(default="default", min_length=1)
    kind: Kind = "multiclass"
    seed: int = Field(0, ge=0)
    data: DataSpec = Field(default_factory=lambda: DataSpec())
    model: ModelSpec = Field(default_factory=lambda: ModelSpec())
    train: TrainSpec = Field(default_factory=lambda: TrainSpec())
    loss: LossSpec = Field(default_factory=lambda: LossSpec())
    slurm: SlurmSpec = _execution_only(default_factory=lambda: SlurmSpec())
    mae: MaeSpec = Field(default_factory=lambda: MaeSpec())
    meta: MetaSpec = Field(default_factory=lambda: MetaSpec())
    adapt: AdaptSpec = Field(default_factory=lambda: AdaptSpec())

    @model_validator(mode="after")
    def _cross_field_rules(self) -> Spec:
        """Every rule that involves more than one field, in one place."""
        crop, backbone = self.data.crop_size, self.model.backbone
        kind = _backbone_family(backbone)
        if crop % 32:
            raise ValueError(
                f"data.crop_size={crop} is not a multiple of 32, which every encoder needs "
                f"(its output stride); use {_round32(crop)}"
            )
        # MaxViT is built with img_size=crop (window crop/32), so any multiple of 32 fits it.
        # Swin pads its grids to the window, but below 64 px its last stage holds one patch.
        if kind == "swin" and crop < 64:
            raise ValueError(f"data.crop_size={crop} is too small for swin; use at least 64")
        if kind == "swin" and self.data.eval_window not in (None, crop):
            raise ValueError(
                f"data.eval_window={self.data.eval_window} with swin, which is built for "
                f"data.crop_size={crop} only; leave data.eval_window unset"
            )
        if self.data.eval_window is not None and self.data.eval_window % 32:
            raise ValueError(
                f"data.eval_window={self.data.eval_window} is not a multiple of 32; "
                f"use {_round32(self.data.eval_window)}"
            )
        if self.data.protocol == "kfold" and self.data.fold >= self.data.k:
            raise ValueError(
                f"data.fold={self.data.fold} but data.k={self.data.k} folds exist; "
                f"use a fold from 0 to {self.data.k - 1}"
            )
        slack_s = self.slurm.signal_delay_s + 60  # the warning, plus a minute to checkpoint
        if self.slurm.time_min * 60 <= slack_s:
            raise ValueError(
                f"slurm.time_min={self.slurm.time_min} leaves no time to train: the job is warned "
                f"{self.slurm.signal_delay_s} s before the limit and needs ~60 s to checkpoint; "
                f"raise slurm.time_min above {slack_s // 60 + 1} or lower slurm.signal_delay_s"
            )
        if kind == "maxvit" and self.train.batch_size < 2:
            raise ValueError(
                "train.batch_size=1 with maxvit, whose BatchNorm layers cannot train on one "
                "sample; use train.batch_size >= 2"
            )
        if self.train.warmup_steps is not None and self.train.warmup_steps >= self.train.steps > 1:
            raise ValueError(
                f"train.warmup_steps={self.train.warmup_steps} is not below train.steps="
                f"{self.train.steps}; lower the warmup"
            )
        if self.train.amp == "fp16" and self.train.device == "cpu":
            raise ValueError('train.amp="fp16" needs a GPU; on CPU use train.amp="bf16" or "off"')
        self._meta_rules()
        self._curriculum_rules()
        if self.kind == "mae":
            self._mae_rules(kind)
        if self.adapt.source_run is None and self.kind == "adapt":
            raise ValueError(
                "kind=adapt needs adapt.source_run (a meta or multiclass run id); "
                "`hcli submit adapt --from RUN` sets it"
            )
        return self

    def _curriculum_rules(self) -> None:
        t = self.train
        stages = t.curriculum
        if not stages:
            return
        if self.kind not in ("multiclass", "adapt"):  # adapt keeps its source's, unused
            raise ValueError(
                f"train.curriculum is for multiclass runs; kind={self.kind} would ignore it: "
                "drop train.curriculum"
            )
        order = ("binary", "coarse", "fine")
        if list(stages) != sorted(set(stages), key=order.index) or stages[-1] != "fine":
            raise ValueError(
                f"train.curriculum={list(stages)}: stages go from binary to coarse to fine, each "
                "once, ending with fine; on the command line write "
                "-o 'train.curriculum=[binary,coarse,fine]' (a bare comma makes a sweep)"
            )
        if not self.model.hierarchical:
            raise ValueError(
                "train.curriculum needs the binary and coarse heads; set model.hierarchical=true"
            )
        for key in ("curriculum_fractions", "curriculum_lr_mults"):
            values = getattr(t, key)
            if values is not None and len(values) != len(stages):
                raise ValueError(
                    f"train.{key} has {len(values)} values for {len(stages)} curriculum stages; "
                    "give one per stage"
                )
        fr = t.curriculum_fractions
        if fr is not None and (min(fr) <= 0 or abs(sum(fr) - 1) > 1e-6):
            raise ValueError(
                f"train.curriculum_fractions={list(fr)} must be positive and sum to 1"
            )
        extra = sorted(set(t.curriculum_freeze_encoder) - set(stages))
        if extra:
            raise ValueError(
                f"train.curriculum_freeze_encoder names {extra}, not stages of train.curriculum"
            )

    def _meta_rules(self) -> None:
        meta = self.meta
        if meta.train_on == "all" and not meta.transductive:
            raise ValueError(
                "meta.train_on=all meta-trains on the fold's held-out domain too, so its "
                "held-out score measures no generalisation; set meta.transductive=true to "
                "accept that (it is recorded on every result), or use meta.train_on=fold"
            )
        if self.kind != "meta":
            return
        # One task (domain) per micro-step: the engine's accumulation averages the per-task
        # meta-gradients into one outer step, so the two counts are one number.
        if "accum_steps" not in self.train.model_fields_set:
            self.train.accum_steps = meta.tasks_per_step
        elif self.train.accum_steps != meta.tasks_per_step:
            raise ValueError(
                f"train.accum_steps={self.train.accum_steps} but meta.tasks_per_step="
                f"{meta.tasks_per_step}: a meta run takes one task per micro-step; set "
                f"train.accum_steps={meta.tasks_per_step} or leave it unset"
            )
        if self.model.grad_checkpointing:
            raise ValueError(
                "model.grad_checkpointing=true with kind=meta: the recomputation in backward "
                "runs outside torch.func.functional_call and would see the meta-weights, not "
                "the adapted ones; set model.grad_checkpointing=false"
            )
        if self.data.val_fraction == 0:
            raise ValueError(
                "data.val_fraction=0 with kind=meta, which selects checkpoints on held-out "
                "images of the training domains (never the test domain); use data.val_fraction>0"
            )

    def _mae_rules(self, family: str) -> None:
        patch, crop = self.mae.patch_size, self.data.crop_size
        stride = _STEM_STRIDES.get(family)
        if stride and patch % stride:
            raise ValueError(
                f"mae.patch_size={patch} is not a multiple of {family}'s stem stride {stride}; "
                f"use a multiple of {stride} such as 32"
            )
        if crop % patch:
            raise ValueError(
                f"mae.patch_size={patch} does not divide data.crop_size={crop}; use a divisor "
                "of the crop such as 32"
            )
        # ImageNet weights by default where the architecture is the published one: masked
        # modelling from scratch on a few hundred images reconstructs noise (docs/mae.md).
        if "pretrained" not in self.model.model_fields_set:
            self.model.pretrained = not self.model.encoder_kwargs

    @property
    def backbone_short(self) -> str:
        return backbone_short_name(self.model.backbone)


# Input pixels per position after the stem (SimMIM places the mask token there).
_STEM_STRIDES = {"convnext": 4, "swin": 4, "maxvit": 2}


@functools.cache
def _timm_names() -> frozenset[str]:
    # A list shipped with the package: importing timm here would pull torch into the control plane.
    text = (Path(__file__).resolve().parents[1] / "resources" / "timm_models.txt").read_text()
    return frozenset(line for line in text.splitlines() if line and not line.startswith("#"))


def _round32(n: int) -> int:
    return max(32, round(n / 32) * 32)


def _backbone_family(backbone: str) -> str:
    name = BACKBONES.get(backbone, backbone)
    for family in ("convnext", "swin", "maxvit"):
        if name.startswith(family):
            return family
    return "other"


def backbone_short_name(backbone: str) -> str:
    """The backbone as it appears in run ids: short name, or the timm name made path-safe."""
    if backbone in BACKBONES:
        return backbone
    return "".join(c if c.isalnum() else "_" for c in backbone).strip("_")[:40]


def resolve_timm_name(backbone: str, crop_size: int) -> tuple[str, dict[str, Any]]:
    """The timm model name and the kwargs that make it accept `crop_size` inputs."""
    name = BACKBONES.get(backbone, backbone)
    family = _backbone_family(backbone)
    extra: dict[str, Any] = {}
    if family in ("swin", "maxvit"):
        # Both fix their attention grid at build time ("Input height doesn't match model").
        extra["img_size"] = crop_size
    return name, extra
