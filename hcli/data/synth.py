"""`hcli data synth`: a synthetic dataset in ARTeFACT's exact hub format.

The files look like a download of `danielaivanova/damaged-media`: `DIR/data/train-000NN-of-000MM
.parquet` with the ten hub columns, `image`/`annotation`/`annotation_rgb` as Hugging Face `Image`
features (PNG bytes), written by `datasets` so the `huggingface` schema metadata is present.
Domains and shapes are drawn from the real distribution (hcli/resources/domain_stats.json); the
pictures come from hcli.data.synth_render. Sample i depends only on (seed, i), so the output is
deterministic in the seed and independent of the shard count.
"""

from __future__ import annotations

import io
import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from hcli.classes import BACKGROUND_COLOUR, CLASS_NAMES, IGNORE_INDEX, palette
from hcli.data import synth_render as R
from hcli.errors import UserError

__all__ = [
    "HUB_COLUMNS",
    "DomainStats",
    "domain_stats",
    "label_lut",
    "render_sample",
    "iter_samples",
    "hub_features",
    "write_parquet_shard",
    "synthesize",
    "shard_name",
]

HUB_COLUMNS: tuple[str, ...] = (
    "id",
    "image",
    "annotation",
    "annotation_rgb",
    "material",
    "content",
    "type",
    "damage_description",
    "llava_description",
    "verified_description",
)
ROWS_PER_SHARD = 15  # like the hub: 418 rows in 28 shards
_ID_ALPHABET = np.array(list("0123456789abcdefghijklmnopqrstuvwxyz"))
BORDER_PROBABILITY = 0.18


@dataclass(frozen=True)
class DomainStats:
    pairs: list[tuple[str, str]]
    pair_p: np.ndarray
    sizes: np.ndarray  # (k, 2) width, height at a 512 px long side
    size_p: np.ndarray
    types: dict[str, list[str]]


@cache
def domain_stats() -> DomainStats:
    raw = json.loads(
        resources.files("hcli").joinpath("resources/domain_stats.json").read_text("utf-8")
    )
    pairs, counts = [], []
    for material, by_content in raw["material_content_counts"].items():
        for content, n in by_content.items():
            pairs.append((material, content))
            counts.append(n)
    c = np.asarray(counts, float)
    sz = np.asarray(raw["sizes_512"], float)
    return DomainStats(pairs, c / c.sum(), sz[:, :2], sz[:, 2] / sz[:, 2].sum(), raw["types"])


def label_lut() -> np.ndarray:
    """(256, 3) uint8: class id → the colour of `annotation_rgb` (255 → Background)."""
    lut = np.zeros((256, 3), np.uint8)
    lut[: len(CLASS_NAMES)] = palette()
    lut[IGNORE_INDEX] = [int(BACKGROUND_COLOUR[i : i + 2], 16) for i in (1, 3, 5)]
    return lut


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    # compress_level 3: within a few percent of the default size at about half the time
    Image.fromarray(arr).save(buf, format="PNG", compress_level=3)
    return buf.getvalue()


def _describe(classes: list[int]) -> str:
    names = [CLASS_NAMES[c] for c in classes if 0 < c < len(CLASS_NAMES)]
    if not names:
        return "No visible damage."
    if len(names) == 1:
        return f"{names[0]}."
    return f"{', '.join(names[:-1])} and {names[-1]}."


def render_sample(seed: int, index: int, size: int) -> dict[str, Any]:
    """Row `index` of the synthetic dataset for `seed`: a dict with the ten hub columns."""
    rng = np.random.default_rng([seed, index])
    st = domain_stats()
    material, content = st.pairs[int(rng.choice(len(st.pairs), p=st.pair_p))]
    w512, h512 = st.sizes[int(rng.choice(len(st.sizes), p=st.size_p))]
    scale = size / 512 * rng.uniform(0.85, 1.15)
    w, h = max(16, round(w512 * scale)), max(16, round(h512 * scale))
    sid = "c" + "".join(rng.choice(_ID_ALPHABET, 24))

    img = R.render_substrate(rng, material, content, h, w)
    R.render_content(rng, img, material, content)
    mask = np.zeros((h, w), np.uint8)
    present = {c for c, plan in R.DAMAGE_PLAN.items() if rng.random() < plan.p}
    present.add(1 + index % 15)  # every class appears in at least n/15 images
    for cls in R.PAINT_ORDER:
        if cls in present:
            R.render_damage(rng, cls, img, mask, material)
    if rng.random() < BORDER_PROBABILITY:
        R.add_background_border(rng, img, mask)
    rgb = (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)

    classes = [int(c) for c in np.unique(mask)]
    damage = _describe(classes)
    kind = str(rng.choice(st.types.get(material, ["Artwork"])))
    return {
        "id": sid,
        "image": {"bytes": _png(rgb), "path": None},
        "annotation": {"bytes": _png(mask), "path": None},
        "annotation_rgb": {"bytes": _png(label_lut()[mask]), "path": None},
        "material": material,
        "content": content,
        "type": kind,
        "damage_description": damage,
        "llava_description": f"A {content.lower()} on {material.lower()} ({kind.lower()}).",
        "verified_description": f"{kind} on {material.lower()}. Damage: {damage}",
    }


def iter_samples(seed: int, start: int, stop: int, size: int) -> Iterator[dict[str, Any]]:
    for i in range(start, stop):
        yield render_sample(seed, i, size)


def hub_features():  # -> datasets.Features (imported lazily: datasets is slow to import)
    from datasets import Features, Image, Value

    feats: dict[str, Any] = {c: Value("string") for c in HUB_COLUMNS}
    for c in ("image", "annotation", "annotation_rgb"):
        feats[c] = Image()
    return Features({c: feats[c] for c in HUB_COLUMNS})


def shard_name(index: int, total: int) -> str:
    return f"train-{index:05d}-of-{total:05d}.parquet"


def write_parquet_shard(rows: list[dict[str, Any]], path: Path) -> None:
    """Write rows in the hub schema through `datasets` (atomic: temporary file, then rename)."""
    from datasets import Dataset
    from datasets.utils.logging import disable_progress_bar

    disable_progress_bar()
    ds = Dataset.from_dict({c: [r[c] for r in rows] for c in HUB_COLUMNS}, features=hub_features())
    tmp = path.with_name(f".{path.name}.tmp")
    ds.to_parquet(str(tmp))
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def synthesize(
    out: Path, n: int = 120, seed: int = 0, size: int = 384, shards: int | None = None
) -> list[Path]:
    """Write DIR/data/train-*.parquet; one shard's rows in memory at a time."""
    if n < 1:
        raise UserError(f"--n must be at least 1 (got {n})")
    if size < 32:
        raise UserError(f"--size must be at least 32 pixels (got {size})")
    total = shards if shards is not None else max(1, math.ceil(n / ROWS_PER_SHARD))
    if not 1 <= total <= n:
        raise UserError(f"--shards must be between 1 and --n={n} (got {total})")
    data = Path(out) / "data"
    data.mkdir(parents=True, exist_ok=True)
    names = [shard_name(i, total) for i in range(total)]
    foreign = sorted(p.name for p in data.glob("*.parquet") if p.name not in names)
    if foreign:
        raise UserError(
            f"{data} already holds other parquet files ({foreign[0]}, ...); "
            "pass an empty --out or delete them, so the dataset is not a mixture"
        )
    bounds = np.linspace(0, n, total + 1).round().astype(int)
    paths = []
    for i in range(total):
        path = data / names[i]
        write_parquet_shard(list(iter_samples(seed, bounds[i], bounds[i + 1], size)), path)
        paths.append(path)
    return paths
