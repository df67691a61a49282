"""What a job kind supplies to the training engine, and the state the engine keeps for it.

A kind is a `Task`: how to build its data feeds and model, its optimizer groups, one micro-step's
loss, validation, and what to write at the end. Everything generic (seeding, device, autocast,
channels_last, compile, DDP, accumulation, clipping, the grad scaler, checkpoints, resume, early
stopping, progress and metrics) belongs to `jobs.engine.Engine`, so a new kind is a small module
and the loop stays one tested copy (lingua's `TrainState`, torchtitan's trainer).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from hcli.spec import Spec, TrainSpec

__all__ = ["Env", "Feed", "Task", "TaskEvent", "TrainState", "Fetch"]

# `fetch(name)` returns the next batch of the named feed and records its sampler position.
Fetch = Callable[[str], dict[str, Any]]


@dataclass
class Env:
    """What the engine has set up before the task builds anything."""

    spec: Spec
    device: torch.device
    rank: int
    world_size: int
    run_dir: Path
    run_id: str
    autocast: Callable[[], contextlib.AbstractContextManager[Any]]

    @property
    def is_main(self) -> bool:
        return self.rank == 0


@dataclass
class Feed:
    """A training data loader and its resumable sampler (`state_dict`/`load_state_dict`)."""

    loader: torch.utils.data.DataLoader
    sampler: Any


@dataclass
class TrainState:
    """The loop's own state, saved in every checkpoint beside the modules and RNGs."""

    step: int = 0
    samplers: dict[str, dict[str, int]] = field(default_factory=dict)  # feed -> position
    best_metric: float | None = None
    best_step: int | None = None
    last_metric: float | None = None
    bad_validations: int = 0  # validations without improvement (early stopping)

    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "samplers": {k: dict(v) for k, v in self.samplers.items()},
            "best_metric": self.best_metric,
            "best_step": self.best_step,
            "last_metric": self.last_metric,
            "bad_validations": self.bad_validations,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])
        self.samplers = {k: dict(v) for k, v in state["samplers"].items()}
        self.best_metric = state["best_metric"]
        self.best_step = state["best_step"]
        self.last_metric = state["last_metric"]
        self.bad_validations = int(state["bad_validations"])

    def improves(self, value: float, mode: Literal["max", "min"], min_delta: float) -> bool:
        best = self.best_metric
        if best is None or math.isnan(best):
            return True
        return value > best + min_delta if mode == "max" else value < best - min_delta


@dataclass
class TaskEvent:
    """Something a task announces during training (a curriculum stage began). The engine, on
    the main rank after the step: appends `event` with `fields` to metrics.jsonl (None: no line,
    e.g. a stage re-entered on resume), sets `progress` in progress.json, prints `message` to
    the log, and puts `tag` after the run id on the progress bar."""

    step: int
    event: str | None  # a name of hcli.contract.EventName
    message: str
    fields: dict[str, Any] = field(default_factory=dict)  # fields of hcli.contract.EventLine
    progress: dict[str, Any] = field(default_factory=dict)  # fields of hcli.contract.Progress
    tag: str | None = None


class Task:
    """Base class of a job kind. Subclasses override what they need; the engine calls, in order:

    `train_spec()` (the section it runs with), `build_feeds()` then `build_model()` (this
    order fixes how the seeded RNG is consumed),
    `provenance()` (written to provenance.json before the first step), `param_groups(model)`,
    `load_state_dict(...)` on resume, `on_start(model, resumed)`, `micro_step(fetch, forward)`
    for every micro-batch,
    `validate(model)` every `train.val_every_steps`, `finish(model, state)` once at the end on
    the main rank, and `report(results)` to print it.
    """

    #: The validation figure that selects the best checkpoint and drives early stopping.
    metric: str = "miou"
    mode: Literal["max", "min"] = "max"
    #: The feed whose epoch the progress shows.
    main_feed: str = "train"
    #: False when the task differentiates through its own functional copies of the weights
    #: (meta-learning): the engine then averages gradients across ranks itself.
    ddp_wrap: bool = True

    def __init__(self, env: Env) -> None:
        self.env = env
        self.spec = env.spec

    def build_feeds(self) -> dict[str, Feed]:
        raise NotImplementedError

    def build_model(self) -> torch.nn.Module:
        raise NotImplementedError

    def param_groups(self, model: torch.nn.Module) -> list[dict[str, Any]] | None:
        """Optimizer parameter groups, or None for the engine's default (jobs.optim)."""
        return None

    def micro_step(self, fetch: Fetch, forward: Callable[..., Any]) -> torch.Tensor:
        """The loss of one micro-batch (the engine scales it and calls backward)."""
        raise NotImplementedError

    def provenance(self) -> dict[str, Any] | None:
        """The data this run sees, for provenance.json: `train_ids`, `val_ids`, `test_ids`,
        `init_from` (run ids or paths), keyword arguments of `jobs.provenance.record_start`.
        None for a kind that trains on no data (the probe)."""
        return None

    def on_start(self, model: torch.nn.Module, resumed: bool) -> None:
        """Called once the state is restored (`resumed`) or known to be fresh, before the first
        step: where a task initialises what a resumed run has in its checkpoint already."""

    def lr_scale(self) -> float:
        """A multiplier on every group's learning rate for this optimizer step (a curriculum
        stage's); the schedule sets the rates afresh after each step, so it never compounds."""
        return 1.0

    def train_spec(self) -> TrainSpec:
        """The `train` section the engine runs with, read once after `__init__`: the optimizer
        and schedule (steps, lr, warmup, decay), accumulation, clipping, and the validation,
        logging, checkpoint and early-stopping cadence. The spec's own by default. A task with
        a schedule of its own (adapt: `adapt.steps` at `adapt.lr`) returns a changed copy
        (`self.spec.train.model_copy(update=...)`), so the spec, spec.yaml and the run id keep
        the section as given. Seeding, device and amp come from the spec's section (they are
        set before the task exists)."""
        return self.spec.train

    def emit(self, event: TaskEvent) -> None:
        """Announce `event`; the engine writes it out after the current step."""
        self.__dict__.setdefault("_events", []).append(event)

    def pop_events(self) -> list[TaskEvent]:
        """The events announced since the last call (the engine's)."""
        events: list[TaskEvent] = self.__dict__.pop("_events", [])
        return events

    def train_logs(self) -> dict[str, Any]:
        """Extra figures for the training line of metrics.jsonl (averaged since the last log)."""
        return {}

    def validate(self, model: torch.nn.Module) -> dict[str, Any]:
        """Validation figures, with `self.metric` among them (main rank only)."""
        raise NotImplementedError

    def finish(self, model: torch.nn.Module, state: TrainState) -> dict[str, Any]:
        """The kind's part of results.json, computed with the selected weights loaded."""
        return {}

    def report(self, results: dict[str, Any]) -> None:
        """Print the results for the job's log."""

    def state_dict(self) -> dict[str, Any]:
        """Whatever the task adds to the training state (a curriculum stage, prototypes...)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


def iterate(feed: Feed) -> Iterator[dict[str, Any]]:
    """Batches of a feed; with workers and no pin-memory thread (CPU), received in a thread.

    Receiving a batch from workers would otherwise be the training thread's work
    (jobs/data/prefetch.py). Without workers the loading itself would move into the thread and
    contend for the GIL, so it stays in line.
    """
    from jobs.data.prefetch import ThreadPrefetcher

    loader = feed.loader
    if loader.num_workers and not loader.pin_memory:
        return ThreadPrefetcher(loader)
    return iter(loader)
