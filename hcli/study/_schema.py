"""A study file: named stages, each a job kind with a config, overrides and a sweep, and the
stages it needs. Validated like a spec: every mistake is one line naming the key.

    study: poc6
    defaults: {data.root: data/artefact}          # dotted spec keys, applied to every stage
    stages:
      mae:      {kind: mae, config: mae_then_finetune, backbones: [convnext, swin]}
      finetune: {kind: multiclass, init_from: mae}  # each run starts from its matching MAE run
      meta:     {kind: meta, config: dg_lomo, sweep: {data.fold: [0, 1, 2]}}
      adapt:    {kind: adapt, from: meta, sweep: {adapt.shots: [0, 5], seed: [0, 1]}}

`needs` orders stages (a stage's jobs wait for every job of the stages it needs: `afterok` on
whole arrays); `init_from` and `from` name an earlier stage and imply `needs` on it.
"""

from __future__ import annotations

import graphlib
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from hcli.errors import SpecError

__all__ = ["DEFAULT_MATCH", "Stage", "Study", "dependants", "load_study"]

#: Fields on which a run and the upstream run it starts from (`init_from`) must agree.
DEFAULT_MATCH = ("model.backbone", "data.protocol", "data.k", "data.fold")
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")


class Stage(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    kind: str
    config: str | None = None
    backbones: list[str] = Field(default_factory=list)
    overrides: dict[str, Any] = Field(default_factory=dict)
    sweep: dict[str, list[Any]] = Field(default_factory=dict)
    needs: list[str] = Field(default_factory=list)
    init_from: str | None = None
    from_: str | None = Field(None, alias="from")
    match: list[str] = Field(default_factory=lambda: list(DEFAULT_MATCH))
    max_parallel: int | None = Field(None, gt=0)

    @field_validator("sweep")
    @classmethod
    def _non_empty_axes(cls, v: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for key, values in v.items():
            if not values:
                raise ValueError(f"sweep axis {key!r} has no values; give at least one")
        return v

    def upstream(self) -> list[str]:
        """Every stage this one waits for: `needs`, and what `init_from` / `from` name."""
        names = [*self.needs, self.init_from, self.from_]
        return list(dict.fromkeys(n for n in names if n))


class Study(BaseModel):
    model_config = ConfigDict(extra="forbid")

    study: str
    defaults: dict[str, Any] = Field(default_factory=dict)
    stages: dict[str, Stage]

    @field_validator("study")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME.match(v):
            raise ValueError(f"{v!r} is not a study name; use lower-case letters, digits, - and _")
        return v

    def order(self) -> list[str]:
        """The stages in file order, except that a stage comes after every stage it needs
        (validated acyclic by load_study)."""
        placed: list[str] = []
        while len(placed) < len(self.stages):
            for name, stage in self.stages.items():
                if name not in placed and all(u in placed for u in stage.upstream()):
                    placed.append(name)
                    break
            else:
                raise ValueError("stages need each other in a cycle")
        return placed

    def dependants(self, stage: str) -> list[str]:
        """Stages that wait, directly or not, for `stage`, in order."""
        found = dependants({n: s.upstream() for n, s in self.stages.items()}, stage)
        return [n for n in self.order() if n in found]


def dependants(needs: Mapping[str, Iterable[str]], stage: str) -> list[str]:
    """Stages that wait, directly or not, for `stage`, given what each stage needs (a study's
    stages, or a submitted pipeline's record)."""
    out: list[str] = []
    frontier = [stage]
    while frontier:
        current = frontier.pop()
        for name, upstream in needs.items():
            if current in upstream and name not in out:
                out.append(name)
                frontier.append(name)
    return out


def _check_graph(study: Study, source: str) -> None:
    from hcli.kinds import all_kinds

    names = list(study.stages)
    if not names:
        raise SpecError(f"{source}: stages is empty; name at least one stage")
    for name, stage in study.stages.items():
        where = f"{source}: stages.{name}"
        if not _NAME.match(name):
            raise SpecError(f"{where}: not a stage name; use lower-case letters, digits, - and _")
        if stage.kind not in all_kinds():
            raise SpecError(f"{where}.kind: unknown kind {stage.kind!r}; use one of "
                            f"{', '.join(all_kinds())}")
        for ref in stage.needs:
            if ref not in study.stages:
                raise SpecError(f"{where}.needs: unknown stage {ref!r}; stages are "
                                f"{', '.join(names)}")
        earlier = names[: names.index(name)]
        for key, target in (("init_from", stage.init_from), ("from", stage.from_)):
            if target is not None and target not in earlier:
                raise SpecError(
                    f"{where}.{key}: {target!r} is not a stage defined before {name!r}; "
                    f"{key} names an earlier stage ({', '.join(earlier) or 'none here'})"
                )
        if (stage.kind == "adapt") != (stage.from_ is not None):
            raise SpecError(
                f"{where}: " + ("an adapt stage needs `from: <stage>` (the runs it adapts)"
                                if stage.kind == "adapt" else "`from` is for adapt stages; "
                                "use init_from to start from another stage's weights")
            )
        if stage.kind == "adapt" and (stage.backbones or stage.config):
            raise SpecError(f"{where}: an adapt stage takes its config and backbone from its "
                            "source runs; drop backbones/config")
    try:
        graphlib.TopologicalSorter({n: s.upstream() for n, s in study.stages.items()}).prepare()
    except graphlib.CycleError as exc:
        cycle = " -> ".join(exc.args[1])
        raise SpecError(f"{source}: stages need each other in a cycle ({cycle}); "
                        "remove one of these needs") from None


def load_study(path: str | Path) -> tuple[Study, Path]:
    """The study in `path` (or configs/<name>.yaml), validated; SpecError names the key."""
    from hcli.spec._load import find_config

    file = find_config(path)
    try:
        raw = yaml.safe_load(file.read_text())
    except (OSError, yaml.YAMLError) as exc:
        why = getattr(exc, "strerror", None) or str(exc).splitlines()[0]
        raise SpecError(f"cannot read study file {file}: {why}") from None
    if not isinstance(raw, dict) or "stages" not in raw:
        raise SpecError(f"{file}: not a study file (no `stages:`); see docs/study.md")
    try:
        study = Study.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"]).replace("from_", "from")
        msg = err["msg"].removeprefix("Value error, ")
        raise SpecError(f"{file}: {loc}: {msg}; see docs/study.md") from None
    _check_graph(study, str(file))
    return study, file
