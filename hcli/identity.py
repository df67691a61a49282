"""Deterministic run identity: `<kind>-<backbone>-<8 hex>` from what a spec changes.

Only what changes results counts (kind, seed, data, model, train, loss, and the kind's own
section); fields marked `identity=False` in the schema (the slurm section, worker counts, logging
cadence) do not, so moving a run to another partition keeps its id. As dora's `_get_sig` does,
the hash covers only the identity fields whose value differs from the schema's default (each leaf
compared whole: a dict such as `model.encoder_kwargs` or a list is one value), plus
`SPEC_SCHEMA_VERSION`. A new field with a default therefore leaves every existing id alone;
changing a default changes what old specs compute, so it comes with a version bump (CHANGELOG.md).
"""

from __future__ import annotations

import functools
import hashlib
import json
from typing import Any

from pydantic import BaseModel

from hcli.kinds import all_kinds
from hcli.spec import SPEC_SCHEMA_VERSION, Spec

__all__ = [
    "KIND_SECTIONS",
    "OPTIONAL_SECTIONS",
    "execution_only_keys",
    "identity_changes",
    "identity_payload",
    "run_id",
]

# The sections a kind reads beyond data/model/train/loss (declared in hcli/kinds); elsewhere
# they are inert defaults.
KIND_SECTIONS: dict[str, tuple[str, ...]] = {k.name: k.sections for k in all_kinds().values()}
OPTIONAL_SECTIONS = tuple(dict.fromkeys(s for k in all_kinds().values() for s in k.sections))


def _counts(model: type[BaseModel], field: str) -> bool:
    extra = model.model_fields[field].json_schema_extra
    return not (isinstance(extra, dict) and extra.get("identity") is False)


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _leaves(model: BaseModel, prefix: str = "") -> dict[str, Any]:
    """Identity fields as dotted keys → JSON values; sections recurse, everything else is a leaf."""
    dumped = model.model_dump(mode="json")
    out: dict[str, Any] = {}
    for field in type(model).model_fields:
        if not _counts(type(model), field):
            continue
        value = getattr(model, field)
        if isinstance(value, BaseModel):
            out.update(_leaves(value, f"{prefix}{field}."))
        else:
            out[f"{prefix}{field}"] = dumped[field]
    return out


@functools.cache
def _default_leaves(spec_type: type[Spec]) -> dict[str, str]:
    return {key: _canonical(value) for key, value in _leaves(spec_type()).items()}


def execution_only_keys(model: type[BaseModel] = Spec, prefix: str = "") -> tuple[str, ...]:
    """Dotted keys left out of the run id; a whole section ends with "." (`slurm.`)."""
    keys: list[str] = []
    for name, field in model.model_fields.items():
        ann = field.annotation
        is_section = isinstance(ann, type) and issubclass(ann, BaseModel)
        if not _counts(model, name):
            keys.append(f"{prefix}{name}." if is_section else f"{prefix}{name}")
        elif is_section:
            keys.extend(execution_only_keys(ann, f"{prefix}{name}."))  # type: ignore[arg-type]
    return tuple(keys)


def identity_changes(spec: Spec) -> dict[str, Any]:
    """The identity fields that differ from the schema's defaults, as dotted keys → JSON values.

    Sections of other kinds are dropped first (a multiclass run ignores `mae.*`).
    """
    wanted = KIND_SECTIONS.get(spec.kind, ())
    inert = tuple(f"{s}." for s in OPTIONAL_SECTIONS if s not in wanted)
    defaults = _default_leaves(type(spec))
    return {
        key: value
        for key, value in _leaves(spec).items()
        # Compared as JSON text: in Python `True == 1`, and a dict holding either would match.
        if not key.startswith(inert) and _canonical(value) != defaults.get(key)
    }


def identity_payload(spec: Spec) -> dict[str, Any]:
    """What the id hashes: the schema version and the changes to the defaults."""
    return {"schema": SPEC_SCHEMA_VERSION, "changes": identity_changes(spec)}


def run_id(spec: Spec) -> str:
    digest = hashlib.sha1(_canonical(identity_payload(spec)).encode()).hexdigest()[:8]
    return f"{spec.kind}-{spec.backbone_short}-{digest}"
