"""Reading run folders for `hcli collect`, without ever writing to them.

A run may be complete (results.json), still running (only metrics.jsonl / progress.json), failed,
or missing files; every case gives a `RunRecord`, with what could not be read listed in
`warnings`. Every file is read through its model in `hcli.contract` (the models the job writes
through), so a field the job renames fails the contract tests rather than reading as missing.
"""

from __future__ import annotations

import glob
import json
import os
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from hcli.classes import CLASS_NAMES
from hcli.contract import (
    AdaptResults,
    EventLine,
    MetricsLine,
    MulticlassResults,
    Progress,
    Results,
    State,
    TrainLine,
    ValLine,
    compute_from_state,
    parse_metrics_line,
    results_model,
)
from hcli.errors import UserError
from hcli.identity import KIND_SECTIONS, OPTIONAL_SECTIONS, execution_only_keys

__all__ = [
    "AGGREGATED_KEYS",
    "DEFAULT_RARE_CLASSES",
    "EXECUTION_ONLY",
    "RunRecord",
    "config_key",
    "discover_runs",
    "flatten",
    "load_run",
    "load_runs",
    "resolve_run_args",
]

# Run files whose presence makes a folder a run folder (any one: collect tolerates missing files).
_RUN_FILES = ("state.json", "spec.yaml", "results.json")

# Fields that change how a run executes, not what it computes, and the sections each kind reads:
# the same lists the run identity uses.
EXECUTION_ONLY: tuple[str, ...] = execution_only_keys()
# Aggregated over (mean ± std), never ablated.
# An adaptation's source run is one per fold, so it is aggregated over as the fold is.
AGGREGATED_KEYS: tuple[str, ...] = ("seed", "data.fold", "adapt.source_run")

# Fallback when no results.json names its rare classes: the damage classes under 0.1 % of all
# pixels in ARTeFACT (class_pixel_counts in hcli/resources/domain_stats.json).
DEFAULT_RARE_CLASSES: tuple[str, ...] = (
    "Dust", "Hair", "Writing", "Stamp", "Puncture", "Burn marks",
)

_FAILED_STATES = ("FAILED", "CANCELLED")


@dataclass
class RunRecord:
    """Everything collect knows about one run folder."""

    path: Path
    run_id: str
    kind: str
    backbone: str
    state: str
    spec: dict[str, Any]
    flat: dict[str, Any]
    protocol: str | None = None
    fold: int | None = None
    seed: int | None = None
    held_out: str | None = None
    # "test" (results.json), "val" (last validation line: the run is in progress) or None.
    source: str | None = None
    miou: float | None = None
    binary_miou: float | None = None
    coarse_miou: float | None = None
    rare_miou: float | None = None
    per_class_iou: dict[str, float | None] = field(default_factory=dict)
    confusion: list[list[float]] | None = None
    class_names: list[str] = field(default_factory=lambda: list(CLASS_NAMES))
    rare_classes: list[str] = field(default_factory=list)
    best_val_miou: float | None = None
    best_val_step: int | None = None
    last_val_miou: float | None = None
    step: int | None = None
    total_steps: int | None = None
    node_hours: float | None = None
    node_hours_source: str | None = None
    gpu_hours: float | None = None
    wall_s: float | None = None
    restarts: int = 0
    requeue_steps: list[int] = field(default_factory=list)
    train_curve: list[tuple[int, float]] = field(default_factory=list)
    # Where each later curriculum stage began: its `stage` event's step; for runs without them,
    # to the logging interval (the last logged step of the stage before; train lines carry it).
    stage_steps: list[int] = field(default_factory=list)
    val_curve: list[tuple[int, float]] = field(default_factory=list)
    samples: list[tuple[str, Path, Path, Path]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    # An adaptation run's source_run, source_kind, shots, source_val_miou, source_transductive.
    adapt: dict[str, Any] | None = None
    # Why the run saw its fold's test images before scoring, when its results say it did:
    # its own spec (mae.images=all, meta.train_on=all) or "init <run>" (init_transductive).
    transductive: str | None = None

    @property
    def in_progress(self) -> bool:
        """No results yet and not failed: the latest validation stands in for the results."""
        return self.source == "val" and not self.failed

    @property
    def failed(self) -> bool:
        return self.state in _FAILED_STATES

    @property
    def usable(self) -> bool:
        """Counts in aggregates: has a figure, and a failed run only with its final results."""
        return self.miou is not None and (self.source == "test" or not self.failed)

    @property
    def status(self) -> str:
        if self.in_progress:
            return f"{self.state} (in progress)"
        return self.state

    def summary(self) -> dict[str, Any]:
        """JSON-ready view (paths as strings, curves and samples left out)."""
        return {
            "run_id": self.run_id, "path": str(self.path), "kind": self.kind,
            "backbone": self.backbone, "state": self.state, "in_progress": self.in_progress,
            "protocol": self.protocol, "fold": self.fold, "seed": self.seed,
            "held_out": self.held_out, "source": self.source, "miou": self.miou,
            "binary_miou": self.binary_miou, "coarse_miou": self.coarse_miou,
            "rare_miou": self.rare_miou, "per_class_iou": self.per_class_iou,
            "best_val_miou": self.best_val_miou, "best_val_step": self.best_val_step,
            "last_val_miou": self.last_val_miou, "step": self.step,
            "total_steps": self.total_steps, "node_hours": self.node_hours,
            "node_hours_source": self.node_hours_source, "gpu_hours": self.gpu_hours,
            "wall_s": self.wall_s, "restarts": self.restarts,
            "requeue_steps": self.requeue_steps, "warnings": self.warnings,
            "adapt": self.adapt, "transductive": self.transductive,
        }


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Nested mappings → dotted keys; lists become tuples so values are hashable."""
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(flatten(value, f"{prefix}{key}."))
        if not tree and prefix:
            out[prefix[:-1]] = ()
        return out
    if isinstance(tree, list):
        return {prefix[:-1]: tuple(_hashable(v) for v in tree)}
    return {prefix[:-1]: tree}


def _hashable(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_hashable(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _hashable(v)) for k, v in value.items()))
    return value


def _execution_only(key: str) -> bool:
    return any(key == p or (p.endswith(".") and key.startswith(p)) for p in EXECUTION_ONLY)


def config_key(flat: dict[str, Any], drop: tuple[str, ...] = AGGREGATED_KEYS) -> dict[str, Any]:
    """The fields that define what a run computes, less `drop` (by default seed and fold)."""
    kind = flat.get("kind")
    inert = {s for s in OPTIONAL_SECTIONS if s not in KIND_SECTIONS.get(str(kind), ())}
    return {
        k: v for k, v in flat.items()
        if not _execution_only(k) and k not in drop and k.split(".", 1)[0] not in inert
    }


def _read_json(path: Path, warnings: list[str]) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, json.JSONDecodeError) as exc:
        warnings.append(f"{path.name} unreadable ({exc.__class__.__name__}); ignored")
        return None


def _time(value: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(str(value))
    except (TypeError, ValueError):
        return None


def _read_model(path: Path, model: type[BaseModel], warnings: list[str]) -> Any:
    """The file as its contract model; None when missing, or unreadable (with a warning)."""
    raw = _read_json(path, warnings)
    if raw is None:
        return None
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        warnings.append(f"{path.name} does not match the contract ({where}: {err['msg']}); "
                        "ignored")
        return None


def _read_metrics(path: Path, warnings: list[str]) -> list[MetricsLine]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    lines: list[MetricsLine] = []
    bad = 0
    for raw in text.splitlines():
        if not raw.strip():
            continue
        try:
            line = parse_metrics_line(json.loads(raw))
        except json.JSONDecodeError:
            line = None  # a line being appended while we read, or a crash mid-write
        if line is None:
            bad += 1
            continue
        lines.append(line)
    if bad:
        warnings.append(f"metrics.jsonl: {bad} unparseable line(s) skipped")
    return lines


_Line = TypeVar("_Line", TrainLine, ValLine)


def _last_per_step(lines: list[MetricsLine], kind: type[_Line]) -> list[_Line]:
    """After a resume, steps may appear twice; the contract says keep the last one."""
    by_step: dict[int, _Line] = {}
    for line in lines:
        if isinstance(line, kind):
            by_step[line.step] = line
    return [by_step[s] for s in sorted(by_step)]


def _node_hours_from_timestamps(
    lines: list[MetricsLine], state: State, progress: Progress, nodes: int
) -> float | None:
    """Sum of active spans: the log is cut where a job was requeued or a new job submitted.

    A lower bound: the start-up before a job's first log line and queue time are not counted.
    The fallback for runs whose state.json records no executions (written before it did).
    """
    submits = sorted(t for j in state.jobs if (t := _time(j.submitted_at)))
    spans: list[list[datetime]] = [[]]
    next_submit = 1  # the first submission opens the first span
    events: list[tuple[MetricsLine | None, datetime | None]] = [
        (line, _time(line.time)) for line in lines]
    beat = _time(progress.heartbeat)
    if beat is not None:
        events.append((None, beat))
    for line, t in events:
        if t is None:
            continue
        while next_submit < len(submits) and t >= submits[next_submit]:
            next_submit += 1
            if spans[-1]:
                spans.append([])
        spans[-1].append(t)
        if isinstance(line, EventLine) and line.event == "requeued":
            spans.append([])
    seconds = sum((max(s) - min(s)).total_seconds() for s in spans if len(s) > 1)
    if not any(len(s) > 1 for s in spans):
        return None
    return seconds / 3600.0 * nodes


def _node_hours_from_state(state: State, progress: Progress) -> float | None:
    """The job's own accounts of its executions (state.json), for a run without results: the
    newest execution, if still open, counts up to the last heartbeat (never to the time collect
    runs, so two collects agree)."""
    if not any(j.starts for j in state.jobs):
        return None
    return compute_from_state(state, now=progress.heartbeat).node_hours


def _samples(folder: Path) -> list[tuple[str, Path, Path, Path]]:
    """`figures/samples/<id>_{image,truth,pred}.png` triplets (docs/run-folder.md)."""
    found = []
    for sub in ("samples", "overlays"):
        base = folder / "figures" / sub
        for image in sorted(base.glob("*_image.png")):
            sid = image.name[: -len("_image.png")]
            truth, pred = base / f"{sid}_truth.png", base / f"{sid}_pred.png"
            if truth.is_file() and pred.is_file():
                found.append((sid, image, truth, pred))
        if found:
            break
    return found


def load_run(folder: Path) -> RunRecord:
    """Read one run folder; never raises for a damaged folder, lists what was wrong instead."""
    folder = Path(folder)
    warnings: list[str] = []
    spec: dict[str, Any] = {}
    try:
        # libyaml's parser when present: the pure-Python one is ~90 % of collect's time per
        # run (a resolved spec has some 200 nodes), ten times libyaml's; same values.
        loaded = yaml.load((folder / "spec.yaml").read_text(),
                           Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
        spec = loaded if isinstance(loaded, dict) else {}
    except FileNotFoundError:
        warnings.append("spec.yaml missing: kind, backbone and fold taken from other files")
    except (OSError, yaml.YAMLError):
        warnings.append("spec.yaml unreadable; ignored")
    state = _read_model(folder / "state.json", State, warnings)
    if state is None:
        warnings.append("state.json missing or unreadable: state UNKNOWN")
        state = State()
    progress = _read_model(folder / "progress.json", Progress, warnings) or Progress()
    raw_results = _read_json(folder / "results.json", warnings)
    kind_hint = state.kind or spec.get("kind") or (raw_results or {}).get("kind")
    results: Results | None = _read_model(
        folder / "results.json", results_model(str(kind_hint)), warnings
    ) if isinstance(raw_results, dict) else None
    lines = _read_metrics(folder / "metrics.jsonl", warnings)
    flat = flatten(spec)
    data, model = spec.get("data") or {}, spec.get("model") or {}
    # Figures of the multiclass results model; another kind's results leave them unset.
    res = results if isinstance(results, MulticlassResults) else None

    kind = state.kind or spec.get("kind") or (results.kind if results else None) or "?"
    backbone = (state.backbone or (results.backbone if results else None)
                or _short(model.get("backbone")) or "?")
    rec = RunRecord(
        path=folder.resolve(), run_id=folder.name, kind=str(kind), backbone=str(backbone),
        state=state.state, spec=spec, flat=flat,
        protocol=data.get("protocol", res.protocol if res else None),
        fold=data.get("fold", res.fold if res else None),
        seed=spec.get("seed"), held_out=res.held_out if res else None, warnings=warnings,
    )

    # A run without a readable spec still groups by what the other files say.
    for key, value in (("kind", rec.kind), ("model.backbone", rec.backbone),
                       ("data.protocol", rec.protocol), ("data.fold", rec.fold),
                       ("seed", rec.seed)):
        flat.setdefault(key, value)

    train = _last_per_step(lines, TrainLine)
    val = _last_per_step(lines, ValLine)
    rec.train_curve = [(x.step, x.loss) for x in train if x.loss is not None]
    # Exact from the `stage` events; runs logged before them: from the train lines' stage.
    began = {x.step for x in lines if isinstance(x, EventLine) and x.event == "stage" and x.step}
    stages = [(x.step, (x.model_extra or {}).get("stage")) for x in train]
    rec.stage_steps = sorted(began) or [
        step for (_, k), (step, before) in zip(stages[1:], stages, strict=False)
        if k is not None and k != before]
    rec.val_curve = [(x.step, x.miou) for x in val if x.miou is not None]

    if rec.val_curve:
        best = max(rec.val_curve, key=lambda sv: (sv[1], -sv[0]))
        rec.best_val_step, rec.best_val_miou = best
        rec.last_val_miou = rec.val_curve[-1][1]
    elif progress.best_val_miou is not None:
        rec.best_val_miou = progress.best_val_miou
        rec.best_val_step = progress.best_step
        rec.last_val_miou = progress.latest.get("val_miou")
    if res is not None and res.val.best_miou is not None:
        rec.best_val_miou = res.val.best_miou
        rec.best_val_step = res.val.best_step if res.val.best_step is not None \
            else rec.best_val_step
    if res is not None and res.val.last_miou is not None:
        rec.last_val_miou = res.val.last_miou

    steps = [x.step for x in lines]
    if progress.step or progress.total_steps:
        steps.append(progress.step)
    rec.step = max(steps) if steps else (res.step if res else None)
    rec.total_steps = progress.total_steps or (spec.get("train") or {}).get("steps")

    if results is not None:
        rec.source = "test"
    if getattr(results, "transductive", False):
        via = getattr(results, "init_transductive", None)
        own = {"mae": "mae.images=all", "meta": "meta.train_on=all"}.get(rec.kind)
        if own == "meta.train_on=all" and flat.get("meta.train_on") != "all":
            own = None
        if getattr(results, "selected_on_test", False):
            own = "selected on test"
        rec.transductive = own or f"init {via}"
    if isinstance(results, AdaptResults):
        rec.adapt = {k: getattr(results, k) for k in (
            "source_run", "source_kind", "shots", "source_val_miou", "source_test_miou",
            "source_transductive")}
        # ERM and meta adaptations differ only in their source: keep them apart in groups.
        flat["adapt.source_kind"] = results.source_kind
    if res is not None:
        rec.miou = res.miou
        rec.binary_miou = res.binary_miou
        rec.coarse_miou = res.coarse_miou
        rec.rare_miou = res.rare_miou
        rec.per_class_iou = dict(res.per_class_iou)
        rec.confusion = res.confusion
        rec.class_names = list(res.class_names or CLASS_NAMES)
        rec.rare_classes = list(res.rare_classes)
    elif results is None and val:
        # In progress (or stopped early): the last validation stands in for the final figures.
        last = val[-1]
        rec.source = "val"
        rec.miou = last.miou
        rec.binary_miou = last.binary_miou
        rec.coarse_miou = last.coarse_miou
        rec.rare_miou = last.rare_miou
        rec.per_class_iou = dict(last.per_class_iou)
    elif results is None and rec.last_val_miou is not None:
        rec.source = "val"
        rec.miou = rec.last_val_miou
    if rec.source is None and rec.state == "COMPLETED":
        warnings.append("state COMPLETED but no results.json and no validation lines")

    compute = res.compute if res is not None else None
    rec.restarts = int(state.restarts or len(state.requeues) or
                       (compute.restarts if compute else 0))
    steps_rq = {x.step for x in lines if isinstance(x, EventLine) and x.event == "requeued"}
    steps_rq |= {r.step for r in state.requeues if r.step is not None}
    rec.requeue_steps = sorted(steps_rq)

    if compute is not None:
        rec.gpu_hours, rec.wall_s = compute.gpu_hours, compute.wall_s
    if compute is not None and compute.node_hours is not None:
        rec.node_hours, rec.node_hours_source = compute.node_hours, "results"
    elif (from_state := _node_hours_from_state(state, progress)) is not None:
        rec.node_hours, rec.node_hours_source = from_state, "state"
    else:
        nodes = int((spec.get("slurm") or {}).get("nodes") or 1)
        if state.executor not in (None, "slurm"):
            nodes = 1
        rec.node_hours = _node_hours_from_timestamps(lines, state, progress, nodes)
        rec.node_hours_source = "timestamps" if rec.node_hours is not None else None
    rec.samples = _samples(folder)
    return rec


def _short(backbone: Any) -> str | None:
    if not backbone:
        return None
    from hcli.spec import backbone_short_name

    return backbone_short_name(str(backbone))


def _is_run_folder(path: Path) -> bool:
    return path.is_dir() and any((path / f).is_file() for f in _RUN_FILES)


def discover_runs(root: Path) -> list[Path]:
    """Every run folder directly under the runs root, sorted by name: those `hcli.scan` finds
    (through the index `hcli status` keeps), and those with only a spec or results left."""
    from hcli.scan import run_folders, scan

    known = {os.path.basename(path) for path, _ in scan(root)}
    return [root / name for name in run_folders(root)
            if name in known or _is_run_folder(root / name)]


def resolve_run_args(args: list[str], root: Path) -> list[Path]:
    """Run folders named by paths, globs (from the cwd or the runs root) or run ids/prefixes."""
    if not args:
        found = discover_runs(root)
        if not found:
            raise UserError(
                f"no run folders under {root}; pass run folders or globs, or --runs-dir DIR"
            )
        return found
    seen: dict[Path, None] = {}
    for arg in args:
        matches: list[Path] = []
        if glob.has_magic(arg):
            patterns = [arg] if os.path.isabs(arg) else [arg, str(root / arg)]
            for pattern in patterns:
                matches += [Path(m) for m in sorted(glob.glob(pattern)) if _is_run_folder(Path(m))]
        elif _is_run_folder(Path(arg)):
            matches = [Path(arg)]
        elif _is_run_folder(root / arg):
            matches = [root / arg]
        else:
            matches = [p for p in discover_runs(root) if p.name.startswith(arg)]
        if not matches:
            raise UserError(
                f"{arg!r} matches no run folder (looked in the cwd and {root}); give a run "
                "folder, a glob such as 'runs/multiclass-*', or a run id"
            )
        for m in matches:
            seen.setdefault(m.resolve(), None)
    return sorted(seen, key=lambda p: (p.name, str(p)))


def load_runs(paths: list[Path]) -> list[RunRecord]:
    return sorted((load_run(p) for p in paths), key=lambda r: (r.run_id, str(r.path)))
