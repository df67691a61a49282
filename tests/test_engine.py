"""The engine's step on its own: accumulation under DDP's no_sync, the task's learning-rate scale,
the training state's round trip, and the events a task announces (the whole loop runs in
tests/test_train.py)."""

from __future__ import annotations

import contextlib
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from hcli.spec import load_spec
from jobs.engine import Engine
from jobs.optim import build_scheduler
from jobs.task import Task, TrainState


class _Linear(Task):
    """One weight, loss w·x for x = 1, 2, 3, ... (gradient of a micro-step: its x)."""

    def __init__(self) -> None:
        self.model = torch.nn.Linear(1, 1, bias=False)
        self.x = 0.0

    def micro_step(self, fetch: Any, forward: Any) -> torch.Tensor:
        self.x += 1
        return forward(torch.tensor([[self.x]])).sum()


class _FakeDDP:
    """Counts the micro-steps run under no_sync (a real DDP needs a process group)."""

    def __init__(self) -> None:
        self.unsynced = 0

    @contextlib.contextmanager
    def no_sync(self) -> Any:
        self.unsynced += 1
        yield


def _engine(accum: int, ddp: Any = None) -> Engine:
    spec = load_spec(None, overrides=[f"train.accum_steps={accum}", "train.warmup_steps=0",
                                      "train.clip_grad=null", "train.steps=10"])
    task = _Linear()
    engine = Engine.__new__(Engine)  # the step alone: no run folder, no data
    engine.spec, engine.task, engine.model, engine.ddp = spec, task, task.model, ddp
    engine.train_spec = spec.train
    engine.forward = task.model
    engine.dist = SimpleNamespace(world_size=2 if ddp else 1)
    engine.optimizer = torch.optim.SGD(task.model.parameters(), lr=1.0)
    engine.scheduler = build_scheduler(engine.optimizer, spec.train)
    engine.scaler = torch.amp.GradScaler("cuda", enabled=False)
    engine.fetch = lambda name: {}  # type: ignore[method-assign]
    return engine


@pytest.mark.parametrize("accum", [1, 3])
def test_accumulation_syncs_gradients_once_per_step(accum: int):
    ddp = _FakeDDP()
    engine = _engine(accum, ddp)
    before = engine.model.weight.item()
    losses, _ = engine.train_step()
    assert len(losses) == accum
    assert ddp.unsynced == accum - 1  # every micro-step but the last skips the all-reduce
    # The mean gradient of x = 1..accum, one SGD step at lr 1.
    assert before - engine.model.weight.item() == pytest.approx(sum(range(1, accum + 1)) / accum)


def test_train_state_round_trips_and_judges_improvement():
    s = TrainState(step=7, samplers={"train": {"epoch": 1, "position": 3, "seed": 0}},
                   best_metric=0.5, best_step=5, last_metric=0.4, bad_validations=1)
    back = TrainState()
    back.load_state_dict(s.state_dict())
    assert back == s
    assert back.improves(0.6, "max", 0.05) and not back.improves(0.52, "max", 0.05)
    assert back.improves(0.4, "min", 0.05) and not back.improves(0.47, "min", 0.05)
    assert TrainState().improves(float("-inf"), "max", 0.0)  # nothing to beat yet


def test_task_events_reach_metrics_progress_and_the_log(tmp_path, capsys):
    import json

    from tqdm import tqdm

    from jobs.progress import ProgressWriter
    from jobs.task import TaskEvent

    engine = _engine(1)
    engine.ctx = SimpleNamespace(is_main=True, run=SimpleNamespace(run_id="r1"))
    engine.progress = ProgressWriter(tmp_path, 10, tensorboard=False, interval=3600)
    task = engine.task
    stage = {"stage": "coarse", "number": 2, "stages": ["binary", "coarse", "fine"],
             "began": [0, 3]}
    task.emit(TaskEvent(3, "stage", "stage coarse begins", fields={"stage": "coarse",
                                                                   "reason": "plateau"},
                        progress={"curriculum": stage}, tag="coarse 2/3"))
    task.emit(TaskEvent(3, None, "only a note", progress={"curriculum": stage}))
    bar = tqdm(total=10, disable=True)
    engine._task_events(bar)
    assert task.pop_events() == []  # written once
    engine.progress.close()
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert lines == [{"step": 3, "time": lines[0]["time"], "event": "stage", "reason": "plateau",
                      "stage": "coarse"}]
    assert json.loads((tmp_path / "progress.json").read_text())["curriculum"] == stage
    out = capsys.readouterr().out
    assert "step 3: stage coarse begins" in out and "step 3: only a note" in out
    assert bar.desc.startswith("r1 coarse 2/3")
    # Off the main rank the events are dropped, not kept: nothing grows, nothing is written.
    engine.ctx.is_main = False
    task.emit(TaskEvent(4, "stage", "x"))
    engine._task_events(bar)
    assert task.pop_events() == []
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 1


class _OwnSchedule(_Linear):
    """_Linear with a schedule of its own (as adapt has): 3 steps at a constant 0.5, validated
    after the third, whatever the spec's `train` section says."""

    metric, mode = "loss", "min"

    def __init__(self, env: Any) -> None:
        super().__init__()
        Task.__init__(self, env)
        self.validated: list[int] = []

    def build_feeds(self) -> dict:
        return {}

    def build_model(self) -> torch.nn.Module:
        return self.model

    def param_groups(self, model: torch.nn.Module) -> list[dict[str, Any]]:
        return [{"params": list(model.parameters())}]

    def train_spec(self) -> Any:
        return self.spec.train.model_copy(update={
            "steps": 3, "lr": 0.5, "warmup_steps": 0, "poly_power": 0.0, "schedule": "poly",
            "val_every_steps": 3, "accum_steps": 1})

    def validate(self, model: torch.nn.Module) -> dict[str, Any]:
        self.validated.append(len(self.validated))
        return {"loss": float(model.weight.detach().abs().sum())}


def test_the_engine_runs_the_schedule_the_task_declares(tmp_path):
    import json

    from hcli.runs import create_run
    from jobs.runtime import JobContext
    from jobs.signals import StopFlag

    spec = load_spec(None, overrides=["train.steps=10", "train.lr=0.001", "train.warmup_steps=2",
                                      "train.val_every_steps=5", "train.accum_steps=2"])
    given = spec.train.model_dump()
    run = create_run(tmp_path, "multiclass-convnext-0badcafe", spec, snapshot=False)
    engine = Engine(JobContext(run, spec, "test", StopFlag()), _OwnSchedule)
    lrs: list[float] = []
    engine.after_step.append(lambda step: lrs.append(engine.optimizer.param_groups[0]["lr"]))
    engine.finish = lambda stopped_early: None  # type: ignore[method-assign]  # no results model
    try:
        outcome = engine.train()
    finally:
        engine.close()
    assert outcome.step == 3 and engine.task.x == 3  # 3 steps of one micro-batch, not 10 of 2
    assert lrs == [0.5, 0.5, 0.5]  # constant, no warmup: the task's rate, not the spec's
    assert engine.task.validated == [0]  # once, after step 3 (its cadence, not every 5)
    assert json.loads((run.path / "progress.json").read_text())["total_steps"] == 3
    assert spec.train.model_dump() == given  # the spec's own section is left as given
