"""Hierarchical targets from fine masks: coarse/binary ids by table lookup, 255 kept."""

from __future__ import annotations

import pytest
import torch

from hcli.classes import CLASS_NAMES, DEFAULT_COARSE_GROUPS
from hcli.errors import SpecError
from jobs.hierarchy import coarse_names, derive_targets, fine_to_coarse_lut


def test_lut_maps_each_class_to_its_group() -> None:
    lut = fine_to_coarse_lut(DEFAULT_COARSE_GROUPS)
    assert lut.dtype == torch.long and lut.shape == (256,)
    assert lut[0] == 0 and lut[255] == 255
    for g, names in enumerate(DEFAULT_COARSE_GROUPS.values(), start=1):
        for name in names:
            assert lut[CLASS_NAMES.index(name)] == g
    assert set(lut[1:16].tolist()) == set(range(1, len(DEFAULT_COARSE_GROUPS) + 1))
    assert (lut[16:] == 255).all()
    assert coarse_names(DEFAULT_COARSE_GROUPS) == ["Clean", *DEFAULT_COARSE_GROUPS]


def test_derive_targets_by_hand_and_255_preserved() -> None:
    groups = {"a": ["Material loss", "Peel"], "b": [n for n in CLASS_NAMES[3:]]}
    lut = fine_to_coarse_lut(groups)
    mask = torch.tensor([[0, 1, 2, 3], [15, 255, 0, 20]], dtype=torch.uint8)
    t = derive_targets(mask, lut)
    assert t["fine"].tolist() == [[0, 1, 2, 3], [15, 255, 0, 255]]
    assert t["coarse"].tolist() == [[0, 1, 1, 2], [2, 255, 0, 255]]
    assert t["binary"].tolist() == [[0, 1, 1, 1], [1, 255, 0, 255]]
    assert all(v.dtype == mask.dtype and v.shape == mask.shape for v in t.values())
    # One block (what a loader worker ships), and the same ids from an int64 mask.
    assert len({v.untyped_storage().data_ptr() for v in t.values()}) == 1
    wide = derive_targets(mask.long(), lut)
    assert all(wide[k].dtype == torch.long and torch.equal(wide[k], t[k].long()) for k in t)


def test_derive_targets_batch_consistent_with_lut() -> None:
    lut = fine_to_coarse_lut(DEFAULT_COARSE_GROUPS)
    g = torch.Generator().manual_seed(0)
    mask = torch.randint(0, 16, (2, 8, 8), generator=g)
    mask[0, :2] = 255
    t = derive_targets(mask, lut)
    ignored = mask == 255
    for key in ("fine", "coarse", "binary"):
        assert (t[key][ignored] == 255).all()
        assert (t[key][~ignored] != 255).all()
    assert torch.equal(t["binary"][~ignored], (mask[~ignored] > 0).long())
    assert torch.equal(t["coarse"][~ignored], lut[mask[~ignored]])


@pytest.mark.parametrize(
    "groups, match",
    [
        ({"a": list(CLASS_NAMES[1:-1])}, "leaves out"),
        ({"a": list(CLASS_NAMES[1:]), "b": ["Peel"]}, "twice"),
        ({"a": list(CLASS_NAMES[1:]) + ["Mould"]}, "not a damage class"),
        ({"a": list(CLASS_NAMES)}, "not a damage class"),
    ],
)
def test_bad_groups_rejected(groups: dict[str, list[str]], match: str) -> None:
    with pytest.raises(SpecError, match=match):
        fine_to_coarse_lut(groups)
