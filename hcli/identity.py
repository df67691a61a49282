"""Deterministic run identity: `<kind>-<backbone>-<8 hex>` from the canonical resolved spec.

Only what changes results counts (kind, seed, data, model, train, loss, and the kind's own
section); fields marked `identity=False` in the schema (the slurm section, worker counts, logging
cadence) do not, so moving a run to another partition keeps its id. As in dora's `_get_sig`: sha1
of the sorted JSON.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pydantic import BaseModel

from hcli.spec import Spec

__all__ = [
    "KIND_SECTIONS",
    "OPTIONAL_SECTIONS",
    "execution_only_keys",
    "identity_payload",
    "run_id",
]

# The sections a kind reads beyond data/model/train/loss; elsewhere they are inert defaults.
KIND_SECTIONS: dict[str, tuple[str, ...]] = {
    "mae": ("mae",),
    "meta": ("meta",),
    "adapt": ("meta", "adapt"),
}
OPTIONAL_SECTIONS = ("mae", "meta", "adapt")


def _counts(model: BaseModel, field: str) -> bool:
    extra = type(model).model_fields[field].json_schema_extra
    return not (isinstance(extra, dict) and extra.get("identity") is False)


def _payload(model: BaseModel) -> dict[str, Any]:
    dumped = model.model_dump(mode="json")
    out: dict[str, Any] = {}
    for field in type(model).model_fields:
        if not _counts(model, field):
            continue
        value = getattr(model, field)
        out[field] = _payload(value) if isinstance(value, BaseModel) else dumped[field]
    return out


def execution_only_keys(model: type[BaseModel] = Spec, prefix: str = "") -> tuple[str, ...]:
    """Dotted keys left out of the run id; a whole section ends with "." (`slurm.`)."""
    keys: list[str] = []
    for name, field in model.model_fields.items():
        extra = field.json_schema_extra
        ann = field.annotation
        is_section = isinstance(ann, type) and issubclass(ann, BaseModel)
        if isinstance(extra, dict) and extra.get("identity") is False:
            keys.append(f"{prefix}{name}." if is_section else f"{prefix}{name}")
        elif is_section:
            keys.extend(execution_only_keys(ann, f"{prefix}{name}."))  # type: ignore[arg-type]
    return tuple(keys)


def identity_payload(spec: Spec) -> dict[str, Any]:
    payload = _payload(spec)
    wanted = KIND_SECTIONS.get(spec.kind, ())
    for section in OPTIONAL_SECTIONS:
        if section not in wanted:
            payload.pop(section, None)
    return payload


def run_id(spec: Spec) -> str:
    canonical = json.dumps(identity_payload(spec), sort_keys=True, separators=(",", ":"))
    digest = hashlib.sha1(canonical.encode()).hexdigest()[:8]
    return f"{spec.kind}-{spec.backbone_short}-{digest}"
