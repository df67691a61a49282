"""The binary → coarse → fine curriculum: which heads carry loss, and when a stage ends.

A stage names the finest head that is trained: in `binary` only the damage/clean head, in
`coarse` the coarse head with the binary head as its auxiliary, in `fine` the usual loss of all
heads (loss.coarse_weight, loss.binary_weight). Every head's loss is still computed in every
stage (weight 0 where it carries none), so a step costs the same with or without a curriculum and
every parameter stays in the graph (DDP needs that).

A stage ends at its share of train.steps (cumulative `curriculum_fractions`), or earlier after
`curriculum_plateau` validations without improvement of the stage's own figure (binary, coarse
or fine mIoU). The position (stage, the step each stage began, the plateau count) is training
state: it is saved in every checkpoint through the task's state_dict, so a run killed in any
stage resumes in that stage at the right step. `progress()` is what progress.json shows of it
(hcli.contract.CurriculumProgress; `hcli status` prints "coarse 2/3").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hcli.spec import LossSpec, TrainSpec

__all__ = ["Curriculum", "stage_head_weights", "STAGE_METRIC"]

# The validation figure that tells whether a stage still improves.
STAGE_METRIC = {"binary": "binary_miou", "coarse": "coarse_miou", "fine": "miou"}


def stage_head_weights(stage: str, loss: LossSpec) -> dict[str, float]:
    """The loss weight of each head in `stage`."""
    if stage == "binary":
        return {"fine": 0.0, "coarse": 0.0, "binary": 1.0}
    if stage == "coarse":
        return {"fine": 0.0, "coarse": 1.0, "binary": loss.binary_weight}
    return {"fine": 1.0, "coarse": loss.coarse_weight, "binary": loss.binary_weight}


@dataclass
class Curriculum:
    stages: tuple[str, ...]
    ends: tuple[int, ...]  # the step at which each stage ends at the latest (cumulative)
    lr_mults: tuple[float, ...]
    freeze: frozenset[str]
    plateau: int | None
    index: int = 0
    start_step: int = 0
    best: float | None = None
    bad: int = 0
    # The step each stage so far began at, and what began it: start, schedule or plateau.
    began: list[int] = field(default_factory=lambda: [0])
    causes: list[str] = field(default_factory=lambda: ["start"])

    @classmethod
    def from_spec(cls, train: TrainSpec) -> Curriculum | None:
        stages = tuple(train.curriculum)
        if not stages:
            return None
        n = len(stages)
        fractions = train.curriculum_fractions or tuple(1 / n for _ in stages)
        ends, total = [], 0.0
        for f in fractions:
            total += f
            ends.append(round(total * train.steps))
        ends[-1] = train.steps
        return cls(stages, tuple(ends), tuple(train.curriculum_lr_mults or (1.0,) * n),
                   frozenset(train.curriculum_freeze_encoder), train.curriculum_plateau)

    @property
    def stage(self) -> str:
        return self.stages[self.index]

    @property
    def lr_mult(self) -> float:
        return self.lr_mults[self.index]

    @property
    def encoder_frozen(self) -> bool:
        return self.stage in self.freeze

    def head_weights(self, loss: LossSpec) -> dict[str, float]:
        return stage_head_weights(self.stage, loss)

    def advance(self, step: int) -> bool:
        """Move to the stage `step` (optimizer steps done) falls in; True when it changed."""
        changed = False
        while self.index < len(self.stages) - 1 and step >= self.ends[self.index]:
            self._next(step, "schedule")
            changed = True
        return changed

    def plateaued(self, metrics: dict[str, Any]) -> bool:
        """Record a validation; True when the stage has stopped improving (plateau mode)."""
        if self.plateau is None or self.index == len(self.stages) - 1:
            return False
        value = metrics.get(STAGE_METRIC[self.stage])
        value = 0.0 if value is None else float(value)
        if self.best is None or value > self.best:
            self.best, self.bad = value, 0
        else:
            self.bad += 1
        return self.bad >= self.plateau

    def end_stage(self, step: int) -> None:
        if self.index < len(self.stages) - 1:
            self._next(step, "plateau")

    def _next(self, step: int, cause: str) -> None:
        self.index += 1
        self.start_step, self.best, self.bad = step, None, 0
        self.began.append(step)
        self.causes.append(cause)

    @property
    def cause(self) -> str:
        """What began the current stage: start, schedule (its share of steps) or plateau."""
        return self.causes[self.index]

    def progress(self) -> dict[str, Any]:
        """progress.json's `curriculum` (hcli.contract.CurriculumProgress)."""
        return {"stage": self.stage, "number": self.index + 1, "stages": list(self.stages),
                "began": list(self.began)}

    def state_dict(self) -> dict[str, Any]:
        return {"index": self.index, "start_step": self.start_step, "best": self.best,
                "bad": self.bad, "began": list(self.began), "causes": list(self.causes)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.index, self.start_step = int(state["index"]), int(state["start_step"])
        self.best, self.bad = state["best"], int(state["bad"])
        # Checkpoints from before the stage history kept only the current stage's start.
        self.began = [int(s) for s in state.get("began", [])]
        self.causes = [str(c) for c in state.get("causes", [])]
        if len(self.began) != self.index + 1:
            self.began = [0, *self.ends[:max(self.index - 1, 0)]][:self.index] + [self.start_step]
            self.causes = ["start"] + ["schedule"] * self.index
