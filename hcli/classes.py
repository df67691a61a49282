"""ARTeFACT's label set: the single source of class ids, names, colours and damage groups.

Ids come from the dataset card's class-name list, not from its colour dictionary (which lists
Background between Puncture and Burn marks); see docs/data-format.md.
"""

from __future__ import annotations

__all__ = [
    "CLASS_NAMES",
    "CLASS_COLOURS",
    "NUM_CLASSES",
    "IGNORE_INDEX",
    "BACKGROUND_COLOUR",
    "DEFAULT_COARSE_GROUPS",
    "MATERIALS",
    "CONTENTS",
    "palette",
]

CLASS_NAMES: tuple[str, ...] = (
    "Clean",
    "Material loss",
    "Peel",
    "Dust",
    "Scratch",
    "Hair",
    "Dirt",
    "Fold",
    "Writing",
    "Cracks",
    "Staining",
    "Stamp",
    "Sticker",
    "Puncture",
    "Burn marks",
    "Lightleak",
)
CLASS_COLOURS: tuple[str, ...] = (
    "#000000",
    "#1CE6FF",
    "#FF34FF",
    "#FF4A46",
    "#008941",
    "#006FA6",
    "#A30059",
    "#FFA500",
    "#7A4900",
    "#0000A6",
    "#63FFAC",
    "#004D43",
    "#8FB0FF",
    "#997D87",
    "#809693",
    "#F6FF1B",
)
NUM_CLASSES = len(CLASS_NAMES)
IGNORE_INDEX = 255
BACKGROUND_COLOUR = "#5A0007"

# Coarse damage groups for the hierarchical head (documented in docs/hierarchy.md). A spec may
# replace them; `hcli.spec` checks that every damage class lands in exactly one group.
DEFAULT_COARSE_GROUPS: dict[str, list[str]] = {
    "structural loss": ["Material loss", "Peel", "Cracks", "Puncture", "Fold", "Scratch"],
    "surface deposits": ["Dust", "Dirt", "Hair"],
    "additions": ["Writing", "Stamp", "Sticker"],
    "optical/chemical": ["Staining", "Burn marks", "Lightleak"],
}

# Domain values as they appear in the `material` / `content` columns of the real data.
MATERIALS: tuple[str, ...] = (
    "Paper",
    "Parchment",
    "Glass",
    "Tesserae",
    "Wood",
    "Canvas",
    "Lime plaster",
    "Film emulsion",
    "Textile",
    "Ceramic",
)
CONTENTS: tuple[str, ...] = (
    "Artistic depiction",
    "Photographic depiction",
    "Geometric patterns",
    "Line art",
)


def palette() -> list[tuple[int, int, int]]:
    """RGB triples for ids 0..15 (index 255 → Background colour is handled by callers)."""
    return [tuple(int(c[i : i + 2], 16) for i in (1, 3, 5)) for c in CLASS_COLOURS]  # type: ignore[misc]
