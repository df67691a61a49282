"""From a study's stages to the runs they mean, before anything exists on disk.

Run ids are a function of specs, so a whole study's runs (the ids `init_from` and `adapt.source_run`
name included) are known before the first one is submitted: the dry run, the planner and the
submission all see the same list.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

from hcli.errors import SpecError
from hcli.launch._plan import PlannedRun, adapt_runs, plan_runs
from hcli.spec import Spec
from hcli.spec._sweep import _as_override
from hcli.study._schema import Stage, Study

__all__ = ["expand_study"]


def _value(spec: Spec, dotted: str) -> Any:
    node: Any = spec
    for part in dotted.split("."):
        node = getattr(node, part, None)
    return node


def _combos(study: Study, stage: Stage) -> list[list[str]]:
    base = [_as_override(k, v) for k, v in {**study.defaults, **stage.overrides}.items()]
    axes = [[_as_override(k, v) for v in vs] for k, vs in stage.sweep.items()]
    return [[*base, *combo] for combo in itertools.product(*axes)]


def _plain(study: Study, name: str, stage: Stage, done: dict[str, list[PlannedRun]],
           base_dir: Path | None) -> list[PlannedRun]:
    planned: dict[str, PlannedRun] = {}
    for combo in _combos(study, stage):
        for p in plan_runs(stage.kind, config=stage.config, backbones=stage.backbones or None,
                           overrides=combo, base_dir=base_dir):
            if stage.init_from is not None:
                source = _matching(p, stage, name, done[stage.init_from])
                (p,) = plan_runs(
                    stage.kind, config=stage.config,
                    backbones=[p.spec.model.backbone] if stage.backbones else None,
                    overrides=[*combo, f"model.init_from={source.run_id}"], base_dir=base_dir,
                )
            planned.setdefault(p.run_id, p)
    return list(planned.values())


def _matching(run: PlannedRun, stage: Stage, name: str, sources: list[PlannedRun]) -> PlannedRun:
    """The one run of the `init_from` stage that agrees with `run` on `stage.match`."""
    want = {k: _value(run.spec, k) for k in stage.match}
    found = [s for s in sources if all(_value(s.spec, k) == v for k, v in want.items())]
    if len(found) != 1:
        said = ", ".join(f"{k}={v}" for k, v in want.items())
        raise SpecError(
            f"stages.{name}.init_from={stage.init_from}: {len(found)} runs of that stage have "
            f"{said} (need exactly one); make the stages sweep the same values, or set "
            f"stages.{name}.match"
        )
    return found[0]


def _adapt(study: Study, stage: Stage, sources: list[PlannedRun]) -> list[PlannedRun]:
    """One adaptation run per source run × sweep combination, each spec the source's own with
    `kind: adapt` (as `hcli submit adapt --from` plans it, from specs instead of run folders)."""
    from jobs.adapt.support import LODO_PROTOCOLS

    planned: dict[str, PlannedRun] = {}
    for source in sources:
        if source.spec.data.protocol not in LODO_PROTOCOLS:
            raise SpecError(
                f"stages.{stage.from_}: its runs use data.protocol={source.spec.data.protocol}, "
                f"which holds out no domain to adapt to; use one of {', '.join(LODO_PROTOCOLS)}"
            )
        for p in adapt_runs(source.run_id, source.spec, _combos(study, stage)):
            planned.setdefault(p.run_id, p)
    return list(planned.values())


def expand_study(study: Study, base_dir: Path | None = None) -> dict[str, list[PlannedRun]]:
    """Every stage's runs, in dependency order; a stage error names the stage."""
    out: dict[str, list[PlannedRun]] = {}
    for name in study.order():
        stage = study.stages[name]
        try:
            if stage.kind == "adapt":
                assert stage.from_ is not None  # the schema requires it for adapt
                out[name] = _adapt(study, stage, out[stage.from_])
            else:
                out[name] = _plain(study, name, stage, out, base_dir)
        except SpecError as exc:
            text = str(exc)
            raise SpecError(text if text.startswith("stages.") else f"stages.{name}: {text}") \
                from None
    return out
