"""The run-folder contract as pydantic models: what the job writes and `status`/`collect` read.

One model per file (state.json, progress.json, results.json per kind, provenance.json) and per
kind of metrics.jsonl line. Every field added after the first release has a default, so files
written by older versions still read. Unknown keys are kept when read (a newer writer's file
survives an older reader's read-modify-write) but refused when written (`dump`), so a writer
cannot put a field under a name the readers do not know. docs/run-folder.md documents exactly
these fields (tests/test_contract.py).

Torch-free. `hcli status` does not import this module (pydantic costs ~40 ms of its 200 ms); it
uses the key names in `hcli.contract_keys`, held equal to these models by the tests.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from hcli.runs import now_iso

__all__ = [
    "AdaptResults",
    "AttemptCompute",
    "Compute",
    "CurriculumProgress",
    "DataRead",
    "EventLine",
    "Hardware",
    "JobRecord",
    "MaeResults",
    "MaeValSummary",
    "MetaResults",
    "MetaSummary",
    "MetricsLine",
    "MulticlassResults",
    "ProbeResults",
    "Progress",
    "Provenance",
    "Requeue",
    "Results",
    "SampleSet",
    "Seen",
    "State",
    "TrainLine",
    "ValLine",
    "ValSummary",
    "check_metrics_line",
    "check_progress",
    "compute_from_state",
    "dump",
    "parse_metrics_line",
    "require_complete",
    "results_model",
]


class _Model(BaseModel):
    model_config = ConfigDict(extra="allow")


def dump(model: BaseModel) -> dict[str, Any]:
    """The model as JSON-ready data; refuses fields the contract does not define."""
    _refuse_extra(model, type(model).__name__)
    return model.model_dump(mode="json")


def _refuse_extra(model: BaseModel, where: str, *, numeric_extras: bool = False) -> None:
    extra = model.model_extra or {}
    if numeric_extras:
        extra = {k: v for k, v in extra.items() if not _is_number_or_none(v)}
    if extra:
        raise ValueError(
            f"{where}: field(s) {sorted(extra)} are not in the run-folder contract; add them to "
            "hcli/contract.py (and docs/run-folder.md) or fix the name"
        )
    for name in type(model).model_fields:
        value = getattr(model, name)
        items = value if isinstance(value, list) else (
            value.values() if isinstance(value, dict) else [value])
        for item in items:
            if isinstance(item, BaseModel):
                _refuse_extra(item, f"{where}.{name}")


def _is_number_or_none(value: Any) -> bool:
    return value is None or (isinstance(value, int | float) and not isinstance(value, bool))


# -- state.json --------------------------------------------------------------------------------


class Hardware(_Model):
    """What one execution of a job ran on (recorded by the job's rank 0 when it starts)."""

    host: str | None = None
    nodes: int = 1
    nodelist: str | None = None
    world_size: int = 1
    gpus: int = 0  # GPUs the run's processes use in total (0: CPU)
    gpu_name: str | None = None


class JobRecord(_Model):
    """One scheduler job of the run. A requeued SLURM job keeps its id and gains a start."""

    job_id: str
    executor: str | None = None
    submitted_at: str | None = None
    attempt: int = 1
    resumed: bool = False
    dependency: str | None = None  # the `afterok:` it was queued with (--after, pipelines)
    stdout: str | None = None
    stderr: str | None = None
    # starts[i], ends[i] and hardware[i] describe the i-th execution; an end is null when the
    # process died without saying so (SIGKILL, node failure).
    starts: list[str] = Field(default_factory=list)
    ends: list[str | None] = Field(default_factory=list)
    hardware: list[Hardware] = Field(default_factory=list)

    @classmethod
    def new(cls, job_id: str, executor: str, attempt: int, **extra: Any) -> JobRecord:
        """The one builder of a job record (submit, resume, and a job started by hand)."""
        return cls(job_id=job_id, executor=executor, submitted_at=now_iso(), attempt=attempt,
                   **extra)


class Requeue(_Model):
    at: str
    step: int | None = None
    reason: str | None = None
    job_id: str | None = None


class State(_Model):
    run_id: str | None = None
    kind: str | None = None
    backbone: str | None = None
    name: str | None = None
    state: str = "UNKNOWN"
    attempt: int = 1  # bumped by `submit --force`, which moves the previous outputs aside
    restarts: int = 0
    executor: str | None = None
    jobs: list[JobRecord] = Field(default_factory=list)
    requeues: list[Requeue] = Field(default_factory=list)
    created_at: str | None = None
    updated_at: str | None = None
    message: str | None = None
    host: str | None = None
    pid: int | None = None


# -- progress.json and metrics.jsonl -----------------------------------------------------------


class CurriculumProgress(_Model):
    """Where a curriculum run (train.curriculum) stands: its stage, that stage's number (from 1)
    among `stages`, and the step each stage so far began at."""

    stage: str
    number: int
    stages: list[str]
    began: list[int]


class Progress(_Model):
    """progress.json; a kind may add numbers of its own (e.g. `best_val_loss`) beside these."""

    step: int = 0
    total_steps: int | None = None
    epoch: int = 0
    phase: str = "starting"
    eta_s: float | None = None
    heartbeat: str | None = None
    latest: dict[str, float | None] = Field(default_factory=dict)
    best_val_miou: float | None = None
    best_step: int | None = None
    curriculum: CurriculumProgress | None = None


class TrainLine(_Model):
    """A training line; a kind may add numeric figures of its own beside these."""

    step: int
    time: str
    split: Literal["train"] = "train"
    loss: float | None = None
    lr: float | None = None
    grad_norm: float | None = None
    samples_per_s: float | None = None
    epoch: int | None = None


class ValLine(_Model):
    """A validation line; a kind may add numeric figures of its own beside these."""

    step: int
    time: str
    split: Literal["val"] = "val"
    miou: float | None = None
    binary_miou: float | None = None
    coarse_miou: float | None = None
    rare_miou: float | None = None
    per_class_iou: dict[str, float | None] = Field(default_factory=dict)


EventName = Literal["requeued", "resumed", "stopped", "early_stop", "checkpoint", "stage"]


class EventLine(_Model):
    step: int
    time: str
    event: EventName
    reason: str | None = None  # requeued, stopped: the signal; stage: start, schedule, plateau
    checkpoint: str | None = None  # resumed, checkpoint: the file
    best_step: int | None = None  # early_stop
    job_id: str | None = None  # requeued
    stage: str | None = None  # stage: the curriculum stage that begins at `step`


MetricsLine = TrainLine | ValLine | EventLine


def parse_metrics_line(obj: Any) -> MetricsLine | None:
    """One decoded metrics.jsonl object as its model; None when it is no line of the contract."""
    if not isinstance(obj, dict):
        return None
    model: type[TrainLine] | type[ValLine] | type[EventLine]
    if "event" in obj:
        model = EventLine
    elif obj.get("split") == "train":
        model = TrainLine
    elif obj.get("split") == "val":
        model = ValLine
    else:
        return None
    try:
        return model.model_validate(obj)
    except ValidationError:
        return None


def check_progress(progress: Progress) -> dict[str, Any]:
    """progress.json ready to write: extra fields only as numbers."""
    _refuse_extra(progress, "Progress", numeric_extras=True)
    return progress.model_dump(mode="json")


def check_metrics_line(line: MetricsLine) -> dict[str, Any]:
    """A line ready to append: train/val lines may carry extra numbers, events nothing else."""
    _refuse_extra(line, type(line).__name__, numeric_extras=not isinstance(line, EventLine))
    return line.model_dump(mode="json", exclude_unset=True)


# -- results.json ------------------------------------------------------------------------------


class AttemptCompute(_Model):
    """One execution: from a start recorded in state.json to its end (or to now, or unknown)."""

    job_id: str
    start: str
    end: str | None = None
    wall_s: float | None = None
    node_hours: float | None = None
    gpu_hours: float | None = None
    hardware: Hardware = Field(default_factory=Hardware)


class Compute(_Model):
    """What the run used, summed over every execution of its current attempt."""

    wall_s: float | None = None
    node_hours: float | None = None
    gpu_hours: float | None = None
    restarts: int = 0
    device: str | None = None
    world_size: int = 1
    hosts: list[str] = Field(default_factory=list)
    attempts: list[AttemptCompute] = Field(default_factory=list)
    # Executions whose end was never recorded (killed): not in the totals, which are then low.
    unended: int = 0


class Results(_Model):
    run_id: str
    kind: str
    backbone: str | None = None


class ValSummary(_Model):
    best_miou: float | None = None
    best_step: int | None = None
    last_miou: float | None = None


class MulticlassResults(Results):
    checkpoint: str | None = None  # "best" or "last"
    step: int | None = None
    final_step: int | None = None
    early_stopped: bool = False
    split: str = "test"
    protocol: str | None = None
    fold: int | None = None
    held_out: str | None = None
    fold_sizes: dict[str, int] = Field(default_factory=dict)
    miou: float | None = None
    binary_miou: float | None = None
    coarse_miou: float | None = None
    rare_miou: float | None = None
    pixel_accuracy: float | None = None
    per_class_iou: dict[str, float | None] = Field(default_factory=dict)
    per_class_f1: dict[str, float | None] = Field(default_factory=dict)
    per_coarse_iou: dict[str, float | None] | None = None
    confusion: list[list[float]] | None = None
    confusion_normalization: str | None = None
    rare_classes: list[str] = Field(default_factory=list)
    baseline_all_clean_miou: float | None = None
    # The score is not a held-out score: this fold's test images were seen before it, allowed
    # loudly (meta.train_on=all, or model.init_allow_test_overlap over init_transductive).
    transductive: bool = False
    # The run of the model.init_from chain that trained on this run's test images (e.g. an MAE
    # run with mae.images=all), from provenance.json; None when none did.
    init_transductive: str | None = None
    # The fold had no validation images (data.val_fraction=0), so checkpoints were selected and
    # early stopping decided on the test images: `transductive` too.
    selected_on_test: bool = False
    val: ValSummary = Field(default_factory=ValSummary)
    compute: Compute = Field(default_factory=Compute)
    samples: list[str] = Field(default_factory=list)
    class_names: list[str] = Field(default_factory=list)


class ProbeResults(Results):
    probe: dict[str, Any] = Field(default_factory=dict)


class MaeValSummary(_Model):
    best_loss: float | None = None
    best_step: int | None = None
    last_loss: float | None = None


class MaeResults(Results):
    """A masked-image pretraining run: reconstruction loss on held-out images (masked pixels)
    beside filling each hidden patch with a mean colour, what it saw, and its encoder."""

    checkpoint: str | None = None  # "best" or "last"
    step: int | None = None
    final_step: int | None = None
    early_stopped: bool = False
    protocol: str | None = None
    fold: int | None = None
    held_out: str | None = None
    recon_loss: float | None = None
    # Each hidden patch filled with the mean colour of its visible neighbours (a prediction),
    # and with its own true mean colour (an oracle: beating it means texture is reconstructed).
    baseline_neighbour_mean_loss: float | None = None
    baseline_patch_mean_loss: float | None = None
    loss_vs_baseline: float | None = None  # recon_loss / baseline_neighbour_mean_loss
    loss_fn: str | None = None  # l1 or mse
    images: str = "train"  # mae.images: train, train+val or all
    transductive: bool = False  # saw the fold's test images (mae.images=all)
    n_images: int = 0
    val_images: int = 0
    val_held_out: bool = True  # the validation images were not trained on
    images_seen: int = 0
    epochs: float = 0.0
    encoder_file: str | None = None
    figures: list[str] = Field(default_factory=list)
    val: MaeValSummary = Field(default_factory=MaeValSummary)
    compute: Compute = Field(default_factory=Compute)


class AdaptValSummary(ValSummary):
    """An adaptation validates once, on its support images: no in-domain mIoU of its own."""

    best_support_miou: float | None = None
    last_support_miou: float | None = None


class AdaptResults(MulticlassResults):
    """An adaptation run: the multiclass figures are those of the held-out domain without the
    support images (the query set); the rest says what was adapted, from what, on which images."""

    source_run: str | None = None
    source_kind: str | None = None  # multiclass (ERM) or meta: the approach being compared
    source_val_miou: float | None = None  # the source's in-domain (training-domain) best val
    source_test_miou: float | None = None  # the source's own score on the whole held-out domain
    # The source, or a run of its init chain, saw the held-out domain (meta.transductive, or
    # init_transductive names the run, e.g. an MAE run with mae.images=all).
    source_transductive: bool = False
    shots: int = 0
    adapt_steps: int = 0
    adapt_lr: float | None = None
    params: str | None = None  # all | decoder | heads
    support_ids: list[str] = Field(default_factory=list)
    query_size: int = 0
    val: AdaptValSummary = Field(default_factory=AdaptValSummary)


class MetaSummary(_Model):
    """How a meta run meta-trained (jobs.meta): the tasks it drew, per domain."""

    algorithm: str  # fomaml | reptile | maml
    domain: str  # material | content | group
    domains: list[str] = Field(default_factory=list)  # the training domains (the tasks)
    domain_sizes: dict[str, int] = Field(default_factory=dict)  # training images per domain
    tasks_per_domain: dict[str, int] = Field(default_factory=dict)  # tasks drawn (rank 0)
    with_replacement: list[str] = Field(default_factory=list)  # fewer images than a batch
    inner_steps: int = 0
    inner_lr: float | None = None
    inner_params: str | None = None  # all | decoder | heads
    tasks_per_step: int = 0
    train_on: str = "fold"  # fold | all


class MetaResults(MulticlassResults):
    """A meta run: the multiclass figures are the zero-shot ones on the held-out domain."""

    # transductive (MulticlassResults): also when the held-out domain was in meta-training.
    in_domain_miou: float | None = None  # the same weights on the training domains' val images
    meta: MetaSummary | None = None


def results_model(kind: str) -> type[Results]:
    """The results model a kind declares in the registry (hcli/kinds), else the common part."""
    from hcli.kinds import all_kinds, load_attr

    info = all_kinds().get(kind)
    if info is None or info.results_model is None:
        return Results
    model: type[Results] = load_attr(info.results_model)
    return model


def require_complete(model: type[BaseModel], payload: dict[str, Any], where: str = "") -> None:
    """Every field of `model` is in `payload`, recursively (also in lists and dicts of models):
    a writer must write the whole contract, so a field it forgets is an error here rather than
    a default in every reader. ValueError naming the missing fields."""
    missing = _missing(model, payload, where)
    if missing:
        raise ValueError(f"{model.__name__}: missing field(s): {', '.join(missing)}")


def _missing(model: type[BaseModel], payload: Any, where: str) -> list[str]:
    if not isinstance(payload, dict):
        return []
    missing = []
    for name, info in model.model_fields.items():
        if name not in payload:
            missing.append(f"{where}{name}")
            continue
        value, sub = payload[name], _model_in(info.annotation)
        if sub is None:
            continue
        if isinstance(value, list):
            for i, item in enumerate(value):
                missing += _missing(sub, item, f"{where}{name}[{i}].")
        elif isinstance(value, dict) and _is_mapping(info.annotation):
            for key, item in value.items():
                missing += _missing(sub, item, f"{where}{name}[{key}].")
        else:
            missing += _missing(sub, value, f"{where}{name}.")
    return missing


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The model a field holds: itself, or the items of its list or dict."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _is_mapping(annotation: Any) -> bool:
    return get_origin(annotation) is dict


# -- provenance.json ---------------------------------------------------------------------------


class SampleSet(_Model):
    """A list of sample ids, kept beside provenance.json (one id per line, sorted)."""

    count: int
    sha256: str  # of the file's bytes
    file: str  # relative to the run folder


class Seen(SampleSet):
    """Samples a run of the initialisation chain trained or validated on."""

    run_id: str
    split: str  # "train" | "val"
    # True for a source without provenance.json (an older run): re-derived from its spec's fold.
    derived: bool = False


class DataRead(_Model):
    """Where the newest execution read the prepared data (data.stage_to_local; docs/staging.md)."""

    root: str  # spec's data.root, the shared folder
    read_from: str  # the folder read: a node-local copy, or root
    staged: bool = False
    reused: bool = False  # a copy an earlier job made on this node, checked again
    bytes: int = 0  # staged bytes (shards and manifest)
    copy_s: float | None = None
    verify_s: float | None = None
    host: str | None = None
    note: str | None = None  # why staging fell back to root


class Provenance(_Model):
    run_id: str
    kind: str
    started_at: str
    finished_at: str | None = None
    manifest: str | None = None  # path of the data manifest
    manifest_sha256: str | None = None
    samples: dict[str, SampleSet] = Field(default_factory=dict)  # train, val (, test)
    init_from: list[str] = Field(default_factory=list)  # run ids (or checkpoint paths)
    seen: list[Seen] = Field(default_factory=list)  # this run and every run it descends from
    end: dict[str, Any] = Field(default_factory=dict)  # what the job adds when it finishes
    data: DataRead | None = None  # where the data was read from


# -- compute over every execution --------------------------------------------------------------


def _parse_time(value: str | None) -> datetime | None:
    try:
        return datetime.fromisoformat(value) if value else None
    except ValueError:
        return None


def compute_from_state(state: State, *, now: str | None = None, device: str | None = None,
                       world_size: int | None = None) -> Compute:
    """Wall time, node-hours and GPU-hours of every execution of the run's current attempt.

    An execution without a recorded end counts up to `now` when it is the newest one (the job
    asking is that execution); an older one without an end died unrecorded and is counted in
    `unended`, not in the totals.
    """
    runs = [
        (job, i, start)
        for job in state.jobs if job.attempt == state.attempt
        for i, start in enumerate(job.starts)
    ]
    attempts: list[AttemptCompute] = []
    unended = 0
    for n, (job, i, start) in enumerate(runs):
        end = job.ends[i] if i < len(job.ends) else None
        if end is None and n == len(runs) - 1:
            end = now
        hw = job.hardware[i] if i < len(job.hardware) else Hardware()
        t0, t1 = _parse_time(start), _parse_time(end)
        wall = max(0.0, (t1 - t0).total_seconds()) if t0 and t1 else None
        if wall is None:
            unended += 1
        attempts.append(AttemptCompute(
            job_id=job.job_id, start=start, end=end, hardware=hw,
            wall_s=None if wall is None else round(wall, 1),
            node_hours=None if wall is None else round(wall / 3600 * hw.nodes, 4),
            gpu_hours=None if wall is None else round(wall / 3600 * hw.gpus, 4),
        ))
    known = [a for a in attempts if a.wall_s is not None]
    hosts = sorted({a.hardware.host for a in attempts if a.hardware.host})
    last = attempts[-1].hardware if attempts else Hardware()
    return Compute(
        wall_s=round(sum(a.wall_s or 0.0 for a in known), 1) if known else None,
        node_hours=round(sum(a.node_hours or 0.0 for a in known), 4) if known else None,
        gpu_hours=round(sum(a.gpu_hours or 0.0 for a in known), 4) if known else None,
        restarts=state.restarts,
        device=device,
        world_size=world_size if world_size is not None else last.world_size,
        hosts=hosts,
        attempts=attempts,
        unended=unended,
    )

