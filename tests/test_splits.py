"""Split protocols: cover, disjoint, partition, deterministic; grouped YAML validation; get_fold."""

from __future__ import annotations

from collections import Counter

import pytest

from hcli.classes import CONTENTS, MATERIALS
from hcli.data.splits import (
    BLOCKING_FLAGS,
    PROTOCOLS,
    fold_flags,
    get_fold,
    held_out_ids,
    load_material_groups,
    make_splits,
    validate_material_groups,
)
from hcli.errors import DataError, SpecError
from hcli.spec import DataSpec
from tests.data_fixtures import manifest_only

# A scaled-down ARTeFACT: the real per-material counts (186, 42, 39, 30, 26, 23, 23, 22, 16, 10)
# divided by about six, so the folds are as unequal as the real ones.
COUNTS = dict(zip(MATERIALS, (30, 8, 7, 6, 5, 5, 4, 4, 3, 2), strict=True))


@pytest.fixture(scope="module")
def manifest():
    materials = [m for m, n in COUNTS.items() for _ in range(n)]
    contents = [CONTENTS[i % 3] if i % 7 else CONTENTS[3] for i in range(len(materials))]
    return manifest_only(materials, contents)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_every_id_in_exactly_one_part_per_fold(manifest, protocol):
    all_ids = {s.id for s in manifest.samples}
    folds = make_splits(manifest, protocol, seed=3)
    assert folds
    for f in folds:
        train, val, test = set(f.train), set(f.val), set(f.test)
        assert not train & test and not train & val and not val & test, f.name
        assert train | val | test == all_ids, f.name
        assert len(f.train) + len(f.val) + len(f.test) == len(all_ids)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_test_sets_partition_the_data(manifest, protocol):
    folds = make_splits(manifest, protocol, seed=1)
    tests = Counter(i for f in folds for i in f.test)
    assert set(tests) == {s.id for s in manifest.samples}
    assert set(tests.values()) == {1}


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_deterministic_in_seed(manifest, protocol):
    a = make_splits(manifest, protocol, seed=7)
    b = make_splits(manifest, protocol, seed=7)
    assert [f.to_dict() for f in a] == [f.to_dict() for f in b]


def test_manifest_order_does_not_matter(manifest):
    shuffled = manifest.model_copy(update={"samples": list(reversed(manifest.samples))})
    for protocol in PROTOCOLS:
        a = make_splits(manifest, protocol, seed=2)
        b = make_splits(shuffled, protocol, seed=2)
        assert [f.to_dict() for f in a] == [f.to_dict() for f in b]


def test_kfold_changes_with_seed_and_is_stratified(manifest):
    a = make_splits(manifest, "kfold", k=5, seed=0)
    b = make_splits(manifest, "kfold", k=5, seed=1)
    assert [f.test for f in a] != [f.test for f in b]
    material = {s.id: s.material for s in manifest.samples}
    for m, n in COUNTS.items():
        per_fold = [sum(material[i] == m for i in f.test) for f in a]
        assert sum(per_fold) == n
        assert max(per_fold) - min(per_fold) <= 1, (m, per_fold)
    sizes = [len(f.test) for f in a]
    assert max(sizes) - min(sizes) <= 1


def test_lomo_folds_sorted_by_material_with_domain_recorded(manifest):
    folds = make_splits(manifest, "lomo", seed=0)
    assert [f.held_out for f in folds] == sorted(COUNTS)
    material = {s.id: s.material for s in manifest.samples}
    for f in folds:
        assert f.held_out_domain == "material" and f.held_out_values == [f.held_out]
        assert {material[i] for i in f.test} == {f.held_out}
        assert len(f.test) == COUNTS[f.held_out]


def test_locontent_one_fold_per_content(manifest):
    folds = make_splits(manifest, "locontent", seed=0)
    content = {s.id: s.content for s in manifest.samples}
    assert [f.held_out for f in folds] == sorted(set(content.values()))
    for f in folds:
        assert {content[i] for i in f.test} == {f.held_out}
        assert f.held_out_domain == "content"


def test_validation_carved_from_train_and_stratified(manifest):
    material = {s.id: s.material for s in manifest.samples}
    fold = make_splits(manifest, "lomo", seed=0, val_fraction=0.2)[0]  # Canvas held out
    pool = len(fold.train) + len(fold.val)
    assert len(fold.val) == round(pool * 0.2)
    val_counts = Counter(material[i] for i in fold.val)
    # Paper is 30 of 69 ids left; proportional share of 14 val ids is 6.1
    assert 5 <= val_counts["Paper"] <= 7
    assert "Canvas" not in val_counts
    no_val = make_splits(manifest, "lomo", seed=0, val_fraction=0.0)[0]
    assert no_val.val == [] and "no-val" not in no_val.flags


def test_small_folds_flagged(manifest):
    folds = {f.held_out: f for f in make_splits(manifest, "lomo", min_fold_size=5)}
    assert any(flag.startswith("small-test") for flag in folds["Ceramic"].flags)
    assert any(flag.startswith("small-test") for flag in folds["Wood"].flags) is False
    assert folds["Paper"].flags == []
    loose = {f.held_out: f for f in make_splits(manifest, "lomo", min_fold_size=2)}
    assert loose["Ceramic"].flags == []


@pytest.mark.parametrize(
    ("sizes", "val_fraction", "expected"),
    [
        ((50, 8, 12), 0.15, []),
        ((50, 0, 12), 0.0, []),  # no validation asked for: nothing missing
        ((50, 0, 12), 0.15, ["no-val"]),
        ((0, 0, 12), 0.15, ["empty-train", "no-val"]),
        ((50, 8, 0), 0.15, ["empty-test"]),
        ((50, 8, 3), 0.15, ["small-test(<10)"]),
        ((4, 1, 30), 0.15, ["small-train(<10)"]),
    ],
)
def test_fold_flags_decide_feasibility(sizes, val_fraction, expected):
    train, val, test = sizes
    flags = fold_flags(train, val, test, min_fold_size=10, val_fraction=val_fraction)
    assert flags == expected
    blocking = any(f in BLOCKING_FLAGS for f in flags)
    assert blocking == (0 in (train, test) or (val_fraction > 0 and val == 0))


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_every_fold_is_judged_by_fold_flags(manifest, protocol):
    for f in make_splits(manifest, protocol, seed=1, min_fold_size=6):
        sizes = f.sizes
        assert f.flags == fold_flags(
            sizes["train"], sizes["val"], sizes["test"], min_fold_size=6, val_fraction=0.15
        )
        assert f.feasible == (not f.blocking) and f.to_dict()["feasible"] == f.feasible


def test_a_fold_with_nothing_to_train_on_is_infeasible():
    one_material = manifest_only(["Paper"] * 6)
    (fold,) = make_splits(one_material, "lomo")
    assert fold.blocking == ["empty-train", "no-val"] and not fold.feasible
    grouped = {f.held_out: f for f in make_splits(one_material, "lomo-grouped")}
    assert sum(f.feasible for f in grouped.values()) == 0
    assert all("empty-test" in f.flags for f in grouped.values() if f.test == [])


def test_shipped_groups_cover_every_material_once():
    groups = load_material_groups(None)
    assert len(groups) == 5
    members = [m for ms in groups.values() for m in ms]
    assert sorted(members) == sorted(MATERIALS)


def test_grouped_folds_follow_file_order(manifest, tmp_path):
    path = tmp_path / "g.yaml"
    path.write_text(
        "groups:\n  rest: [Paper, Parchment, Glass, Tesserae, Wood, Canvas, Lime plaster]\n"
        "  few: [Film emulsion, Textile, Ceramic]\n"
    )
    folds = make_splits(manifest, "lomo-grouped", groups=load_material_groups(path))
    assert [f.held_out for f in folds] == ["rest", "few"]
    assert len(folds[1].test) == 4 + 3 + 2
    assert folds[1].held_out_values == ["Film emulsion", "Textile", "Ceramic"]


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("groups:\n  a: [Paper]\n", "materials in no group"),
        ("groups:\n  a: [Paper, Papyrus]\n", "'Papyrus', which is not a material"),
        ("groups:\n  a: [Paper, Glass]\n  b: [Glass]\n", "'Glass' is in both 'a' and 'b'"),
        ("groups:\n  a: []\n", "non-empty list"),
        ("- Paper\n", "expected a mapping"),
        ("groups: [unclosed\n", "not valid YAML"),
    ],
)
def test_grouped_yaml_validation_errors(tmp_path, text, needle):
    path = tmp_path / "groups.yaml"
    path.write_text(text)
    with pytest.raises(DataError, match="groups.yaml") as info:
        load_material_groups(path)
    assert needle in str(info.value)


def test_grouped_missing_file(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_material_groups(tmp_path / "nope.yaml")


def test_validate_groups_accepts_a_complete_mapping():
    groups = {"all": list(MATERIALS)}
    assert validate_material_groups({"groups": groups}, "x") == groups


def test_get_fold_and_range_error(manifest):
    data = DataSpec(protocol="lomo", fold=2)
    fold = get_fold(manifest, data, seed=0)
    assert fold.held_out == sorted(COUNTS)[2]
    with pytest.raises(SpecError) as info:
        get_fold(manifest, DataSpec(protocol="lomo", fold=10), seed=0)
    msg = str(info.value)
    assert "data.fold=10" in msg and "from 0 to 9" in msg


def test_get_fold_grouped_uses_groups_file(manifest, tmp_path):
    path = tmp_path / "g.yaml"
    path.write_text("groups:\n  one: " + str(list(MATERIALS)).replace("'", '"') + "\n")
    data = DataSpec(protocol="lomo-grouped", groups_file=path, fold=0)
    fold = get_fold(manifest, data, seed=0)
    assert fold.held_out == "one" and len(fold.test) == len(manifest.samples)
    with pytest.raises(SpecError, match="from 0 to 0"):
        get_fold(manifest, DataSpec(protocol="lomo-grouped", groups_file=path, fold=1), seed=0)


def test_held_out_ids(manifest):
    data = DataSpec(protocol="lomo", fold=sorted(COUNTS).index("Glass"))
    ids = held_out_ids(manifest, data, seed=0)
    assert ids == {s.id for s in manifest.samples if s.material == "Glass"}
    kf = DataSpec(protocol="kfold", k=4, fold=1)
    fold = get_fold(manifest, kf, seed=5)
    assert held_out_ids(manifest, kf, seed=5) == set(fold.test)
    assert not held_out_ids(manifest, kf, seed=5) & set(fold.train)
