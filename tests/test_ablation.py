"""configs/ablation.yaml: its scenarios × seeds as runs, and collect's ablation table by value."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from hcli.errors import SpecError
from hcli.identity import run_id
from hcli.launch import plan_runs
from hcli.report import collect
from hcli.spec import load_spec, resolve_paths
from tests.conftest import run_cli
from tests.test_collect import make_run

CURRICULUM = "train.curriculum=[binary, coarse, fine]"
SCENARIOS = {
    "baseline": [],
    "hierarchical": ["model.hierarchical=true"],
    "prototypes": ["model.attention=prototypes"],
    "curriculum": ["model.hierarchical=true", CURRICULUM],
    "all": ["model.hierarchical=true", "model.attention=prototypes", CURRICULUM],
}


def _expected(scenarios: dict[str, list[str]]) -> list[tuple[str, str]]:
    """The ids the same runs get when each is written out with plain -o overrides."""
    out = []
    for name, sets in scenarios.items():
        for seed in (0, 1, 2):
            spec = load_spec("ablation", overrides=[f"seed={seed}", *sets])
            out.append((run_id(resolve_paths(spec)), f"ablation-{name}"))
    return out


def test_ablation_config_expands_to_scenarios_times_seeds() -> None:
    planned = plan_runs("multiclass", config="ablation")
    assert [(p.run_id, p.spec.name) for p in planned] == _expected(SCENARIOS)
    assert len({p.run_id for p in planned}) == 15
    assert {p.spec.model.backbone for p in planned} == {"convnext"}


def test_naming_an_mae_run_adds_its_scenarios() -> None:
    mae = "/data/mae-run/checkpoints/best.pt"
    planned = plan_runs("multiclass", config="ablation",
                        overrides=[f"sweep.vars.mae_run={mae}"])
    with_mae = {**SCENARIOS, "mae": [f"model.init_from={mae}"],
                "all+mae": [*SCENARIOS["all"], f"model.init_from={mae}"]}
    assert sorted(p.run_id for p in planned) == sorted(r for r, _ in _expected(with_mae))
    assert sum(p.spec.model.init_from == mae for p in planned) == 6


def test_command_line_overrides_apply_over_every_scenario() -> None:
    planned = plan_runs("multiclass", config="ablation", overrides=["train.steps=1000,2000"])
    assert len(planned) == 30 and {p.spec.train.steps for p in planned} == {1000, 2000}


def test_sweep_errors_say_what_to_do() -> None:
    with pytest.raises(SpecError, match="declares no such var; use one of mae_run"):
        plan_runs("multiclass", config="ablation", overrides=["sweep.vars.nope=1"])
    with pytest.raises(SpecError, match="only sweep.vars.NAME=VALUE"):
        plan_runs("multiclass", config="ablation", overrides=["sweep.axes.seed=1"])
    with pytest.raises(SpecError, match="has no `sweep:`"):
        plan_runs("multiclass", config="quickstart", overrides=["sweep.vars.mae_run=x"])


def test_spec_show_reads_a_config_with_a_sweep() -> None:
    shown = run_cli(["spec", "show", "ablation"]).stdout
    assert "name: ablation" in shown and "sweep" not in shown


def test_collect_ablation_table_by_value(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    base = [0.40, 0.42, 0.44]
    protos = [0.45, 0.46, 0.50]  # differences 0.05, 0.04, 0.06
    paths = []
    for seed in range(3):
        paths.append(make_run(root, f"multiclass-convnext-b{seed}", seed=seed, miou=base[seed]))
        paths.append(make_run(root, f"multiclass-convnext-p{seed}", seed=seed, miou=protos[seed],
                              extra={"model.attention": "prototypes"}))
    # One seed only: a difference without a test.
    paths.append(make_run(root, "multiclass-convnext-c0", seed=0, miou=0.38, node_hours=2.0,
                          extra={"model.hierarchical": True,
                                 "train.curriculum": ["binary", "coarse", "fine"]}))
    result = collect(sorted(paths), tmp_path / "report", {"md", "json"}, None)
    table = {t.name: t for t in result.tables}["ablation_study"]
    rows = {r["scenario"]: r for r in table.rows}
    assert list(rows) == ["baseline", "attention=prototypes",
                          "hierarchical=true, curriculum=[binary, coarse, fine]"]
    b, p, c = rows.values()
    assert b["miou"].mean == pytest.approx(0.42) and b["miou"].std == pytest.approx(0.02)
    assert b["delta_miou"] is None and b["node_hours"] == pytest.approx(1.5)
    assert p["delta_miou"].mean == pytest.approx(0.05)
    assert p["delta_miou"].std == pytest.approx(0.01) and p["pairs"] == 3
    # Paired t over 3 pairs: t = 0.05 / (0.01 / sqrt 3), and with 2 degrees of freedom the
    # two-sided p has the closed form 1 - t / sqrt(2 + t^2).
    t = 0.05 / (0.01 / math.sqrt(3))
    assert float(p["p_value"]) == pytest.approx(1 - t / math.sqrt(2 + t * t), abs=1e-3)
    assert c["delta_miou"].mean == pytest.approx(-0.02) and c["pairs"] == 1
    assert c["p_value"] is None and c["node_hours"] == pytest.approx(2.0)
    assert "Ablation study" in (tmp_path / "report" / "report.md").read_text()


def test_no_study_table_without_an_all_defaults_baseline(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    paths = [make_run(root, "multiclass-convnext-x", miou=0.4, lr=3e-4),
             make_run(root, "multiclass-convnext-y", miou=0.5, lr=5e-4)]
    result = collect(paths, tmp_path / "report", {"md"}, None)
    assert "ablation_study" not in {t.name for t in result.tables}
