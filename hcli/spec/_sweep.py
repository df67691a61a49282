"""A config's own sweep: named scenarios (sets of overrides) × axes, for studies (an ablation).

`-o key=a,b` sweeps one key over values; a study compares *sets* of changes (baseline, + heads,
+ prototypes, ...), which a cartesian product cannot say. A config may therefore carry

    sweep:
      axes: {seed: [0, 1, 2]}              # cartesian product, like -o seed=0,1,2
      vars: {mae_run: null}                # set with -o sweep.vars.mae_run=RUN
      scenarios:
        - {name: baseline}
        - {name: prototypes, model.attention: prototypes}
        - {name: mae, model.init_from: $mae_run}   # planned only when mae_run is set

Each scenario's keys are dotted spec keys applied over the config; `-o` overrides apply last.
A value `$var` takes the var's value, and a scenario naming a var that is null is left out.
The `sweep` key is read here and removed before the spec is validated.
"""

from __future__ import annotations

import itertools
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from hcli.errors import SpecError

__all__ = ["Sweep", "Scenario", "parse_sweep"]

SWEEP_KEY = "sweep"


class Sweep(BaseModel):
    model_config = ConfigDict(extra="forbid")

    axes: dict[str, list[Any]] = Field(default_factory=dict)
    vars: dict[str, Any] = Field(default_factory=dict)
    scenarios: list[dict[str, Any]] = Field(default_factory=lambda: [{"name": "default"}])


class Scenario(BaseModel):
    name: str
    overrides: list[str]


def _as_override(key: str, value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, width=1 << 20).strip()
    return f"{key}={text.removesuffix('...').strip()}"


def parse_sweep(raw: Any, source: str, var_overrides: dict[str, Any]) -> list[Scenario]:
    """The runs' override sets a config's `sweep` describes (one set when it has none)."""
    if raw is None:
        if var_overrides:
            raise SpecError(f"-o sweep.vars.*: {source} has no `sweep:`; drop the override")
        return [Scenario(name="", overrides=[])]
    try:
        sweep = Sweep.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        raise SpecError(
            f"{source}: sweep.{loc}: {err['msg']}; see docs/specs.md (Sweeps in a config)"
        ) from None
    unknown = sorted(set(var_overrides) - set(sweep.vars))
    if unknown:
        raise SpecError(f"-o sweep.vars.{unknown[0]}: {source} declares no such var; use one of "
                        f"{', '.join(sorted(sweep.vars)) or '(none)'}")
    values = {**sweep.vars, **var_overrides}
    axes = [[_as_override(k, v) for v in vs] for k, vs in sweep.axes.items()]
    out = []
    for i, scenario in enumerate(sweep.scenarios):
        name = str(scenario.get("name", f"scenario{i}"))
        sets, skip = [], False
        for key, value in scenario.items():
            if key == "name":
                continue
            if isinstance(value, str) and value.startswith("$"):
                if value[1:] not in values:
                    raise SpecError(f"{source}: scenario {name!r} uses {value}, which "
                                    "sweep.vars does not declare; add it there")
                value = values[value[1:]]
                skip = skip or value is None
            sets.append(_as_override(key, value))
        if skip:
            continue
        for combo in itertools.product(*axes):
            out.append(Scenario(name=name, overrides=[*combo, *sets]))
    return out
