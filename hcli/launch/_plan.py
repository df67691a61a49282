"""From CLI arguments to the runs they mean: sweeps expand into a cartesian product of specs."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

from hcli.errors import SpecError
from hcli.identity import run_id
from hcli.spec import Spec, load_spec, resolve_paths

__all__ = ["PlannedRun", "expand_sweep", "plan_adapt", "plan_runs", "split_top_level"]


@dataclass(frozen=True)
class PlannedRun:
    run_id: str
    spec: Spec


def split_top_level(value: str) -> list[str]:
    """Split on commas outside brackets/quotes: `0,1,2` sweeps, `[0.5,1.5]` stays one value."""
    parts: list[str] = []
    current: list[str] = []
    depth, quote = 0, ""
    for ch in value:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append("".join(current))
            current = []
            continue
        current.append(ch)
    parts.append("".join(current))
    return parts


def expand_sweep(overrides: list[str]) -> list[list[str]]:
    """`-o a=1,2 -o b=x` → [[a=1, b=x], [a=2, b=x]] (cartesian product, order kept)."""
    axes: list[list[str]] = []
    for text in overrides:
        key, sep, raw = text.partition("=")
        if not sep:
            axes.append([text])  # load_spec reports the malformed override
            continue
        values = split_top_level(raw)
        if any(v.strip() == "" for v in values) and len(values) > 1:
            raise SpecError(
                f"override {text!r} has an empty value in its list; e.g. -o {key}=0,1,2"
            )
        axes.append([f"{key}={v.strip()}" for v in values])
    return [list(combo) for combo in itertools.product(*axes)] if axes else [[]]


def plan_runs(
    kind: str,
    *,
    config: str | None = None,
    backbones: list[str] | None = None,
    overrides: list[str] | None = None,
    base_dir: Path | None = None,
) -> list[PlannedRun]:
    """Every run the arguments describe, each validated and resolved, duplicates dropped."""
    planned: dict[str, PlannedRun] = {}
    for backbone in backbones or [None]:  # type: ignore[list-item]
        for combo in expand_sweep(overrides or []):
            flags = {"model.backbone": backbone} if backbone else {}
            spec = resolve_paths(
                load_spec(config, kind=kind, flags=flags, overrides=combo), base_dir
            )
            rid = run_id(spec)
            planned.setdefault(rid, PlannedRun(rid, spec))
    return list(planned.values())


def plan_adapt(
    sources: list[str], root: Path, *, overrides: list[str] | None = None
) -> list[PlannedRun]:
    """One adaptation run per source × sweep combination (`-o adapt.shots=0,5 -o seed=0,1`).

    Each spec is the source's own (same data, fold, model, loss and batch settings) with
    `kind: adapt` and `adapt.source_run` naming it; a source that held out no domain is refused.
    """
    from jobs.adapt.support import source_of

    if any(o.partition("=")[0].strip() == "adapt.source_run" for o in overrides or []):
        raise SpecError("adapt.source_run is set by --from; drop -o adapt.source_run")
    planned: dict[str, PlannedRun] = {}
    for ref in sources:
        run, _ = source_of(ref, root)
        for combo in expand_sweep(overrides or []):
            spec = resolve_paths(load_spec(
                run.path / "spec.yaml", kind="adapt",
                overrides=[f"adapt.source_run={run.run_id}", *combo],
            ))
            rid = run_id(spec)
            planned.setdefault(rid, PlannedRun(rid, spec))
    return list(planned.values())
