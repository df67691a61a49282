"""Small prepared datasets (HDF5 shards + manifest.json) following docs/data-format.md.

Tests build these instead of running synth + prepare, so they stay fast and can place exactly the
classes, domains and sizes a test needs. `manifest_only` gives a Manifest without any files, for
the pure functions (stats, splits).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import h5py
import numpy as np

from hcli.classes import CONTENTS, IGNORE_INDEX, NUM_CLASSES
from hcli.data.manifest import MANIFEST_NAME, Manifest

__all__ = [
    "FixtureSample",
    "make_samples",
    "write_dataset",
    "build_dataset",
    "manifest_only",
    "count_classes",
]

CHUNK = 256


@dataclass
class FixtureSample:
    id: str
    material: str
    content: str = CONTENTS[0]
    height: int = 64
    width: int = 80
    labels: tuple[int, ...] = (0,)  # the first fills the mask, the others get one rectangle each
    border: bool = False  # a 255 Background frame of 4 px
    mask: np.ndarray | None = field(default=None, repr=False)  # explicit mask overrides labels


def make_samples(
    materials: Sequence[str],
    contents: Sequence[str] | None = None,
    sizes: Sequence[tuple[int, int]] | None = None,
    labels: Sequence[tuple[int, ...]] | None = None,
    *,
    prefix: str = "s",
) -> list[FixtureSample]:
    """One sample per material entry; contents, sizes and labels are cycled over."""
    contents = list(contents or [CONTENTS[0]])
    sizes = list(sizes or [(64, 80)])
    labels = list(labels or [(0,)])
    return [
        FixtureSample(
            id=f"{prefix}{i:04d}",
            material=m,
            content=contents[i % len(contents)],
            height=sizes[i % len(sizes)][0],
            width=sizes[i % len(sizes)][1],
            labels=labels[i % len(labels)],
        )
        for i, m in enumerate(materials)
    ]


def _render_mask(s: FixtureSample, rng: np.random.Generator) -> np.ndarray:
    if s.mask is not None:
        return np.asarray(s.mask, dtype=np.uint8)
    mask = np.full((s.height, s.width), s.labels[0], dtype=np.uint8)
    for lab in s.labels[1:]:
        h = max(1, s.height // 4)
        w = max(1, s.width // 4)
        y = int(rng.integers(0, s.height - h + 1))
        x = int(rng.integers(0, s.width - w + 1))
        mask[y : y + h, x : x + w] = lab
    if s.border:
        mask[:4, :] = IGNORE_INDEX
        mask[-4:, :] = IGNORE_INDEX
    return mask


def count_classes(mask: np.ndarray) -> list[int]:
    """17 counts: ids 0..15 then 255, as in the manifest."""
    counts = np.bincount(mask.ravel(), minlength=256)
    return [int(c) for c in counts[:NUM_CLASSES]] + [int(counts[IGNORE_INDEX])]


def _entry(s: FixtureSample, shard: str, pixels: list[int]) -> dict:
    return {
        "id": s.id,
        "shard": shard,
        "material": s.material,
        "content": s.content,
        "type": "fixture",
        "height": s.height,
        "width": s.width,
        "orig_height": s.height,
        "orig_width": s.width,
        "class_pixels": pixels,
        "class_pixels_orig": pixels,
    }


def _manifest_dict(entries: list[dict], shards: list[dict]) -> dict:
    return {
        "source": "tests/data_fixtures.py",
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "resize": {"max_side": 2048},
        "shards": shards,
        "samples": entries,
    }


def write_dataset(
    root: Path, samples: Sequence[FixtureSample], *, seed: int = 0, per_shard: int = 8
) -> Manifest:
    """Write OUT/shard-NNNNN.h5 (chunked 256×256) and OUT/manifest.json; return the manifest."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    entries: list[dict] = []
    shards: list[dict] = []
    for first in range(0, len(samples), per_shard):
        name = f"shard-{first // per_shard:05d}.h5"
        group = samples[first : first + per_shard]
        with h5py.File(root / name, "w") as fh:
            for s in group:
                mask = _render_mask(s, rng)
                base = rng.integers(0, 256, size=3)
                noise = rng.integers(0, 64, size=(s.height, s.width, 3))
                image = ((base + noise) % 256).astype(np.uint8)
                g = fh.create_group(s.id)
                ch = (min(CHUNK, s.height), min(CHUNK, s.width))
                g.create_dataset("image", data=image, chunks=(*ch, 3))
                g.create_dataset("mask", data=mask, chunks=ch)
                g.attrs.update(
                    material=s.material,
                    content=s.content,
                    type="fixture",
                    orig_height=s.height,
                    orig_width=s.width,
                )
                entries.append(_entry(s, name, count_classes(mask)))
        sha = hashlib.sha256((root / name).read_bytes()).hexdigest()
        shards.append({"file": name, "source": "fixture", "samples": len(group), "sha256": sha})
    data = _manifest_dict(entries, shards)
    (root / MANIFEST_NAME).write_text(json.dumps(data, indent=2))
    return Manifest.model_validate(data)


def build_dataset(
    root: Path,
    materials: Sequence[str],
    contents: Sequence[str] | None = None,
    sizes: Sequence[tuple[int, int]] | None = None,
    labels: Sequence[tuple[int, ...]] | None = None,
    *,
    seed: int = 0,
    per_shard: int = 8,
) -> Manifest:
    """`make_samples` + `write_dataset` in one call."""
    return write_dataset(
        root, make_samples(materials, contents, sizes, labels), seed=seed, per_shard=per_shard
    )


def manifest_only(
    materials: Sequence[str],
    contents: Sequence[str] | None = None,
    class_pixels: Sequence[Sequence[int]] | None = None,
    *,
    prefix: str = "s",
) -> Manifest:
    """A Manifest with no files behind it; class_pixels (17 counts each) cycled over samples."""
    pixels = [list(p) for p in (class_pixels or [[100] + [0] * 16])]
    entries = []
    for i, s in enumerate(make_samples(materials, contents, prefix=prefix)):
        entries.append(_entry(s, "shard-00000.h5", pixels[i % len(pixels)]))
    return Manifest.model_validate(_manifest_dict(entries, []))
