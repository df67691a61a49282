"""From CLI arguments to the runs they mean: sweeps expand into a cartesian product of specs."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

from hcli.errors import SpecError
from hcli.identity import run_id
from hcli.spec import Spec, load_spec, resolve_paths

__all__ = ["PlannedRun", "adapt_runs", "expand_sweep", "plan_adapt", "plan_runs",
           "split_top_level"]


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
    """Every run the arguments describe, each validated and resolved, duplicates dropped.

    A config's own `sweep:` (scenarios × axes, hcli.spec._sweep) comes first, then `-o`."""
    planned: dict[str, PlannedRun] = {}
    scenarios, overrides = _config_sweep(config, overrides or [])
    for backbone in backbones or [None]:  # type: ignore[list-item]
        for scenario in scenarios:
            for combo in expand_sweep(overrides):
                flags = {"model.backbone": backbone} if backbone else {}
                spec = resolve_paths(load_spec(config, kind=kind, flags=flags,
                                               overrides=[*scenario, *combo]), base_dir)
                rid = run_id(spec)
                planned.setdefault(rid, PlannedRun(rid, spec))
    return list(planned.values())


def _config_sweep(config: str | None, overrides: list[str]) -> tuple[list[list[str]], list[str]]:
    """The override sets of the config's scenarios, and the `-o` overrides left for the spec."""
    from hcli.spec._load import parse_override, read_config
    from hcli.spec._sweep import SWEEP_KEY, parse_sweep

    var_values, rest = {}, []
    for text in overrides:
        if text.startswith(f"{SWEEP_KEY}."):
            key, value = parse_override(text)
            if not key.startswith(f"{SWEEP_KEY}.vars.") or key.count(".") != 2:
                raise SpecError(f"override {text!r}: only sweep.vars.NAME=VALUE can be set "
                                "from the command line")
            var_values[key.rsplit(".", 1)[1]] = value
        else:
            rest.append(text)
    tree = read_config(config) if config is not None else {}
    scenarios = parse_sweep(tree.get(SWEEP_KEY), str(config), var_values)
    base = str(tree.get("name", "default"))
    # Each scenario's runs are named for it (execution-only: the run ids stay as they are).
    return [[f"name={base}-{s.name}", *s.overrides] if s.name else [] for s in scenarios], rest


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
    combos = expand_sweep(overrides or [])
    for ref in sources:
        run, source = source_of(ref, root)
        for p in adapt_runs(run.run_id, source, combos):
            planned.setdefault(p.run_id, p)
    return list(planned.values())


def adapt_runs(source_id: str, source: Spec, combos: list[list[str]]) -> list[PlannedRun]:
    """The adaptation runs of one source: its spec with `kind: adapt`, `adapt.source_run` and
    each override set of `combos` (`hcli submit adapt --from` and pipeline stages alike)."""
    # The source's sections whole, as one layer (its spec.yaml is parsed once, not per run).
    base = {k: v for k, v in source.model_dump(mode="json").items() if k != "kind"}
    out = []
    for combo in combos:
        spec = resolve_paths(load_spec(
            kind="adapt", flags=base, overrides=[f"adapt.source_run={source_id}", *combo],
        ))
        out.append(PlannedRun(run_id(spec), spec))
    return out
