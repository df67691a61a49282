"""`manifest.json` of a prepared dataset: the contract between `hcli data prepare` and every reader.

Documented in docs/data-format.md. `class_pixels` lists 17 counts: ids 0..15, then 255
(Background) last.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from hcli.classes import CLASS_NAMES
from hcli.errors import DataError

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "MANIFEST_NAME",
    "Manifest",
    "SampleEntry",
    "ShardEntry",
    "SkippedRow",
    "ResizePolicy",
    "load_manifest",
]

FORMAT = "hcli-artefact-h5"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ResizePolicy(_Model):
    max_side: int
    image_filter: str = "area"
    mask_filter: str = "nearest"


class ShardEntry(_Model):
    file: str  # shard-NNNNN.h5, relative to the dataset folder
    source: str  # the parquet file (or hub shard) it came from
    samples: int
    sha256: str


class SampleEntry(_Model):
    id: str
    shard: str
    material: str
    content: str
    type: str = ""
    height: int
    width: int
    orig_height: int
    orig_width: int
    class_pixels: list[int] = Field(min_length=17, max_length=17)
    class_pixels_orig: list[int] = Field(min_length=17, max_length=17)


class SkippedRow(_Model):
    id: str | None
    source: str
    row: int
    reason: str


class Manifest(_Model):
    format: str = FORMAT
    version: int = FORMAT_VERSION
    source: str
    created_at: str
    class_names: list[str] = Field(default_factory=lambda: list(CLASS_NAMES))
    ignore_index: int = 255
    resize: ResizePolicy
    shards: list[ShardEntry]
    samples: list[SampleEntry]
    skipped: list[SkippedRow] = Field(default_factory=list)

    def by_id(self) -> dict[str, SampleEntry]:
        return {s.id: s for s in self.samples}


def load_manifest(root: Path) -> Manifest:
    """Read DATA/manifest.json with errors that name the file and the fix."""
    path = Path(root) / MANIFEST_NAME
    if not path.is_file():
        raise DataError(
            f"{path} not found; prepare the data first: hcli data prepare --source DIR --out {root}"
            " (or hcli data synth for synthetic data)"
        )
    try:
        return Manifest.model_validate(json.loads(path.read_text()))
    except (json.JSONDecodeError, ValidationError) as exc:
        raise DataError(
            f"{path} is not a valid manifest ({type(exc).__name__}); re-run hcli data prepare"
        ) from None
