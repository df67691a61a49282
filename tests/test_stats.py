"""hcli.data.stats against hand-computed numbers, and the `hcli data stats|splits` commands."""

from __future__ import annotations

import json

import pytest
import yaml

from hcli.classes import CLASS_NAMES, MATERIALS
from hcli.cli import main
from hcli.data.splits import make_splits
from hcli.data.stats import (
    class_table,
    class_weights,
    domain_counts,
    fold_report,
    plot_stats,
    protocol_feasibility,
    rare_classes,
    summarize,
    weights_from_counts,
)
from tests.data_fixtures import build_dataset, manifest_only


def counts(**by_id: int) -> list[int]:
    c = [0] * 17
    for k, v in by_id.items():
        c[int(k[1:])] = v
    return c


# Two classes present, shares f = 0.9 and 0.1 (counts 90 and 10):
#   inverse:      raw 1/0.9 = 1.1111, 1/0.1 = 10;          mean 5.5556 -> 0.2, 1.8
#   inverse_sqrt: raw 1.05409, 3.16228;                     mean 2.10819 -> 0.5, 1.5
#   log:          raw 1/ln(1.92) = 1.53298, 1/ln(1.12) = 8.82385; mean 5.17842 -> 0.29603, 1.70397
@pytest.mark.parametrize(
    ("policy", "expected"),
    [("inverse", (0.2, 1.8)), ("inverse_sqrt", (0.5, 1.5)), ("log", (0.29603, 1.70397))],
)
def test_weights_by_hand(policy, expected):
    w = weights_from_counts(counts(c0=90, c1=10), policy, clip=10)
    assert len(w) == 16
    assert w[0] == pytest.approx(expected[0], abs=1e-4)
    assert w[1] == pytest.approx(expected[1], abs=1e-4)
    assert w[2:] == [1.0] * 14  # absent classes: neutral


def test_weights_clipped_and_mean_one():
    # clip c = 1.5: bounds [0.6667, 1.5]. Scaling inverse raw (1.1111, 10) by s: for s < 0.15 the
    # first is pinned at 1/c = 0.6667 and the second, 10 s, must make the mean 1: 10 s = 1.3333.
    w = weights_from_counts(counts(c0=90, c1=10), "inverse", clip=1.5)
    assert w[0] == pytest.approx(2 / 3, abs=1e-6)
    assert w[1] == pytest.approx(4 / 3, abs=1e-6)


def test_background_never_counts():
    a = weights_from_counts(counts(c0=90, c1=10), "inverse")
    b = weights_from_counts(counts(c0=90, c1=10, c16=10_000), "inverse")
    assert a == b


def test_weights_from_manifest_use_selected_ids():
    m = manifest_only(["Paper", "Glass"], class_pixels=[counts(c0=90, c1=10), counts(c0=50, c2=50)])
    w = class_weights(m, "inverse", ids=["s0000"])
    assert w[:3] == pytest.approx([0.2, 1.8, 1.0], abs=1e-6)
    # all samples: Clean 140, Material loss 10, Peel 50 of 200 -> raw 1.4286, 20, 4; mean 8.4762
    w_all = class_weights(m, "inverse")
    assert w_all[:3] == pytest.approx([0.16854, 2.35955, 0.47191], abs=1e-4)


def test_class_table_rare_and_domains():
    m = manifest_only(
        ["Paper", "Paper", "Glass"],
        ["Line art", "Artistic depiction"],
        class_pixels=[counts(c0=990, c5=5, c3=5, c16=100), counts(c0=500, c9=500), counts(c0=1000)],
    )
    table = class_table(m)
    assert [t.name for t in table] == list(CLASS_NAMES)
    # annotated pixels: 990+5+5 + 500+500 + 1000 = 3000 (Background's 100 excluded)
    assert table[0].pixels == 2490 and table[0].share == pytest.approx(0.83)
    assert table[5].share == pytest.approx(5 / 3000) and table[5].images == 1
    assert table[9].share == pytest.approx(500 / 3000)
    assert table[0].images == 3
    assert rare_classes(table, 0.01) == ["Dust", "Hair"]  # equal shares keep class order
    assert rare_classes(table, 0.001) == []
    assert domain_counts(m) == {
        "material": {"Paper": 2, "Glass": 1},
        "content": {"Line art": 2, "Artistic depiction": 1},
    }
    s = summarize(m, protocols=("lomo",), min_fold_size=1)
    assert s["background_share"] == pytest.approx(100 / 3100)
    assert "Hair" in s["rare"] and "Cracks" not in s["rare"]
    assert "Lightleak" in s["absent"]
    assert s["class_weights"]["inverse"]["Clean"] == pytest.approx(
        weights_from_counts([t.pixels for t in table], "inverse")[0]
    )


def test_fold_report_missing_classes():
    # Cracks only on Ceramic: leaving Ceramic out means training never sees it; Hair only on
    # Paper: the Paper test set holds it, the others cannot test it.
    m = manifest_only(
        ["Paper", "Paper", "Ceramic", "Glass"],
        class_pixels=[counts(c0=10, c5=1), counts(c0=10), counts(c0=10, c9=3), counts(c0=10)],
    )
    reports = {f.held_out: fold_report(m, f) for f in make_splits(m, "lomo", min_fold_size=1)}
    assert reports["Ceramic"].missing_in_train == ["Cracks"]
    assert reports["Ceramic"].missing_in_test == ["Hair"]
    assert reports["Paper"].missing_in_train == ["Hair"]
    assert reports["Glass"].missing_in_test == ["Hair", "Cracks"]
    assert reports["Paper"].test == 2 and reports["Paper"].train + reports["Paper"].val == 2


def test_plot_writes_png(tmp_path):
    m = manifest_only(["Paper", "Glass"], class_pixels=[counts(c0=90, c1=10), counts(c0=5, c14=1)])
    out = plot_stats(m, tmp_path / "sub" / "stats.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert out.stat().st_size > 10_000


def hcli(args: list[str]) -> int:
    """Run the CLI in-process (faster than a subprocess); returns the exit code."""
    with pytest.raises(SystemExit) as info:
        main(args)
    return info.value.code


def test_cli_stats_and_splits(tmp_path, capsys):
    data = tmp_path / "data"
    build_dataset(data, ["Paper", "Glass", "Wood"] * 4, labels=[(0,), (0, 3)], sizes=[(32, 40)])
    assert hcli(["data", "stats", str(data), "--json", "--protocol", "lomo"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["samples"] == 12
    assert list(out["protocols"]) == ["lomo"]
    assert [f["test"] for f in out["protocols"]["lomo"]] == [4, 4, 4]
    assert hcli(["data", "splits", str(data), "--protocol", "kfold", "--k", "3", "--json"]) == 0
    folds = json.loads(capsys.readouterr().out)
    assert sorted(i for f in folds for i in f["test"]) == [f"s{i:04d}" for i in range(12)]
    assert hcli(["data", "splits", str(data), "--protocol", "lomo"]) == 0
    assert "Glass" in capsys.readouterr().out
    plot = tmp_path / "stats.png"
    assert hcli(["data", "stats", str(data), "--plot", str(plot)]) == 0
    assert plot.is_file() and "Dust" in capsys.readouterr().out
    bad = tmp_path / "g.yaml"
    bad.write_text("groups:\n  a: [Paper]\n")
    assert (
        hcli(["data", "splits", str(data), "--protocol", "lomo-grouped", "--groups", str(bad)]) == 2
    )
    assert "materials in no group" in capsys.readouterr().err
    assert hcli(["data", "stats", str(tmp_path / "missing")]) == 2
    assert hcli(["data", "splits", str(data), "--protocol", "nope"]) == 2


def test_stats_and_splits_judge_folds_the_same_way(tmp_path, capsys):
    # Glass has 1 image: as a lomo-grouped test group it is small; Paper alone leaves a group empty.
    data = tmp_path / "data"
    build_dataset(
        data, ["Paper"] * 6 + ["Wood"] * 4 + ["Glass"], labels=[(0,), (0, 3)], sizes=[(32, 40)]
    )
    groups = tmp_path / "groups.yaml"
    others = [m for m in MATERIALS if m not in ("Paper", "Wood", "Glass")]
    groups.write_text(
        yaml.safe_dump(
            {
                "groups": {
                    "paper": ["Paper"],
                    "wood+glass": ["Wood", "Glass"],
                    "rest": others,
                }
            }
        )
    )
    options = ["--groups", str(groups), "--val-fraction", "0.2", "--min-fold-size", "3"]
    assert hcli(["data", "stats", str(data), "--json", "--protocol", "lomo-grouped", *options]) == 0
    from_stats = json.loads(capsys.readouterr().out)["protocols"]["lomo-grouped"]
    args = ["data", "splits", str(data), "--protocol", "lomo-grouped", *options, "--json"]
    assert hcli(args) == 0
    from_splits = json.loads(capsys.readouterr().out)
    judged = [(f["held_out"], f["flags"], f["feasible"]) for f in from_stats]
    assert judged == [(f["held_out"], f["flags"], f["feasible"]) for f in from_splits]
    assert [h for h, _, ok in judged if not ok] == ["rest"]  # nothing to test on
    assert hcli(["data", "splits", str(data), "--protocol", "lomo-grouped", *options]) == 0
    table = capsys.readouterr().out
    assert "empty-test" in table and "rest" in table
    # --groups on stats only makes sense when lomo-grouped is among the protocols shown.
    assert hcli(["data", "stats", str(data), "--protocol", "lomo", "--groups", str(groups)]) == 2


def test_protocol_feasibility_is_the_folds_jobs_use():
    m = manifest_only(["Paper"] * 5 + ["Glass"] * 2)
    reports = protocol_feasibility(m, "lomo", val_fraction=0.0, min_fold_size=3)
    folds = make_splits(m, "lomo", val_fraction=0.0, min_fold_size=3)
    assert [(r.held_out, r.train, r.val, r.test, r.flags) for r in reports] == [
        (f.held_out, len(f.train), len(f.val), len(f.test), f.flags) for f in folds
    ]
    assert [(r.held_out, r.flags, r.feasible) for r in reports] == [
        ("Glass", ["small-test(<3)"], True),  # small sets are warnings, not blockers
        ("Paper", ["small-train(<3)"], True),
    ]
