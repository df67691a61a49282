"""Targets for the hierarchical heads, derived from fine masks by table lookup.

Coarse ids: 0 = Clean, 1..G = the damage groups in the order the spec lists them. Binary ids:
0 = Clean, 1 = any damage. 255 (Background, ignored) stays 255 in every target, and so does any
id outside the 16 classes, so a stray value is ignored rather than trained on as a wrong class.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from hcli.classes import CLASS_NAMES, IGNORE_INDEX
from hcli.errors import SpecError

__all__ = ["coarse_names", "fine_to_coarse_lut", "derive_targets"]


def coarse_names(coarse_groups: Mapping[str, Sequence[str]]) -> list[str]:
    """Names of the coarse classes by id: Clean, then the groups."""
    return [CLASS_NAMES[0], *coarse_groups]


def fine_to_coarse_lut(coarse_groups: Mapping[str, Sequence[str]]) -> torch.Tensor:
    """A LongTensor of 256 entries mapping each fine id to its coarse id (255 stays 255)."""
    lut = torch.full((256,), IGNORE_INDEX, dtype=torch.long)
    lut[0] = 0
    index = {name: i for i, name in enumerate(CLASS_NAMES)}
    for g, (group, names) in enumerate(coarse_groups.items(), start=1):
        for name in names:
            if name not in index or index[name] == 0:
                raise SpecError(
                    f"model.coarse_groups[{group!r}] names {name!r}, which is not a damage "
                    f"class; use one of {list(CLASS_NAMES[1:])}"
                )
            if lut[index[name]] != IGNORE_INDEX:
                raise SpecError(f"model.coarse_groups lists {name!r} twice; keep it in one group")
            lut[index[name]] = g
    missing = [n for i, n in enumerate(CLASS_NAMES) if lut[i] == IGNORE_INDEX]
    if missing:
        raise SpecError(f"model.coarse_groups leaves out {missing}; add each to one group")
    return lut


def derive_targets(mask: torch.Tensor, lut: torch.Tensor) -> dict[str, torch.Tensor]:
    """{"fine", "coarse", "binary"} shaped like `mask` and of its dtype (ids 0..15 or 255).

    The three are views of one (3, *mask.shape) tensor: a loader worker ships them to the
    training process as one shared-memory block, and as uint8 (the stored masks' dtype) it is an
    eighth of int64's size (benchmarks/bench_loop.py). The losses take any integer dtype.
    """
    out = torch.empty((3, *mask.shape), dtype=mask.dtype, device=mask.device)
    fine, coarse, binary = out.unbind(0)
    ignore = torch.full((), IGNORE_INDEX, dtype=mask.dtype, device=mask.device)
    torch.where((mask >= 0) & (mask < len(CLASS_NAMES)), mask, ignore, out=fine)
    torch.index_select(
        lut.to(mask.device, mask.dtype), 0, fine.reshape(-1).long(), out=coarse.view(-1)
    )
    # Binary follows from coarse (0 stays Clean, any group is damage), so no second table.
    torch.where(coarse == ignore, coarse, (coarse > 0).to(mask.dtype), out=binary)
    return {"fine": fine, "coarse": coarse, "binary": binary}
