"""Evaluation protocols: which ids train, validate and test in each fold.

Protocols and the order of their folds (`data.fold` indexes this order):
- `kfold`: k folds stratified by material; fold i tests the i-th part.
- `lomo`: leave one material out; one fold per material present in the data, sorted by name.
- `lomo-grouped`: leave one group of materials out; groups come from a YAML file
  (default `hcli/resources/material_groups.yaml`), one fold per group in the file's order.
- `locontent`: leave one content out; one fold per content present, sorted by name.

Every fold's validation set is carved from its training ids, stratified by material. Everything is
a pure function of (manifest ids and domains, protocol, k, seed, val_fraction, groups), so jobs and
`hcli data splits` agree. Random draws use `random.Random` seeded with a string (stable across
Python versions and platforms, unlike `hash()`).
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from hcli.classes import MATERIALS
from hcli.data.manifest import Manifest
from hcli.errors import DataError, SpecError, UserError

if TYPE_CHECKING:
    from hcli.spec import DataSpec

__all__ = [
    "PROTOCOLS",
    "Protocol",
    "Fold",
    "BLOCKING_FLAGS",
    "DEFAULT_GROUPS_FILE",
    "fold_flags",
    "load_material_groups",
    "validate_material_groups",
    "make_splits",
    "get_fold",
    "held_out_ids",
]

Protocol = Literal["kfold", "lomo", "lomo-grouped", "locontent"]
PROTOCOLS: tuple[str, ...] = ("kfold", "lomo", "lomo-grouped", "locontent")
DEFAULT_GROUPS_FILE = "material_groups.yaml"


@dataclass
class Fold:
    """One fold of a protocol. `held_out_domain`/`held_out_values` say which domain the test set
    is (e.g. material ["Ceramic"]), so pretraining and meta-training can exclude it; for kfold
    the domain is None and only the test ids are held out."""

    protocol: str
    index: int
    name: str  # e.g. "lomo:Ceramic", "kfold:2"
    held_out: str  # human label: material, content, group name, or "fold 2"
    held_out_domain: Literal["material", "content"] | None
    held_out_values: list[str]
    train: list[str]
    val: list[str]
    test: list[str]
    flags: list[str] = field(default_factory=list)

    @property
    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}

    @property
    def blocking(self) -> list[str]:
        """The flags that make this fold unusable (see `fold_flags`); empty when feasible."""
        return [f for f in self.flags if f in BLOCKING_FLAGS]

    @property
    def feasible(self) -> bool:
        return not self.blocking

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "feasible": self.feasible}


def _rng(seed: int, *parts: object) -> random.Random:
    return random.Random(":".join(str(p) for p in (seed, *parts)))


def _resource_groups_path() -> Path:
    return Path(str(resources.files("hcli") / "resources" / DEFAULT_GROUPS_FILE))


def validate_material_groups(raw: Any, source: str) -> dict[str, list[str]]:
    """Check a parsed groups file: `groups: {name: [material, ...]}`, every material once."""
    if not isinstance(raw, Mapping) or not isinstance(raw.get("groups"), Mapping):
        raise DataError(f"{source}: expected a mapping 'groups: {{name: [material, ...]}}'")
    groups: dict[str, list[str]] = {}
    seen: dict[str, str] = {}
    for name, members in raw["groups"].items():
        if not isinstance(members, list) or not members:
            raise DataError(f"{source}: group {name!r} must be a non-empty list of materials")
        for m in members:
            if m not in MATERIALS:
                raise DataError(
                    f"{source}: group {name!r} names {m!r}, which is not a material; "
                    f"use one of {list(MATERIALS)}"
                )
            if m in seen:
                raise DataError(f"{source}: {m!r} is in both {seen[m]!r} and {name!r}; keep one")
            seen[m] = str(name)
        groups[str(name)] = [str(m) for m in members]
    missing = [m for m in MATERIALS if m not in seen]
    if missing:
        raise DataError(f"{source}: materials in no group: {missing}; add each to one group")
    return groups


def load_material_groups(path: Path | str | None = None) -> dict[str, list[str]]:
    """Read and validate a material-groups YAML (None: the shipped default)."""
    import yaml

    file = Path(path) if path is not None else _resource_groups_path()
    if not file.is_file():
        raise DataError(f"{file}: groups file not found; pass an existing YAML (--groups FILE)")
    try:
        raw = yaml.safe_load(file.read_text())
    except yaml.YAMLError as exc:
        raise DataError(
            f"{file}: not valid YAML ({exc.__class__.__name__}); fix the syntax"
        ) from None
    return validate_material_groups(raw, str(file))


def _stratified_parts(
    ids_by_stratum: Mapping[str, Sequence[str]], k: int, seed: int
) -> list[list[str]]:
    """Split ids into k parts, each stratum spread evenly (hand-written because it is ten lines and
    scikit-learn's StratifiedKFold would be a heavy dependency for it). Strata are dealt
    round-robin, continuing the rotation from one stratum to the next so part sizes differ by at
    most one overall."""
    parts: list[list[str]] = [[] for _ in range(k)]
    offset = 0
    for stratum in sorted(ids_by_stratum):
        ids = sorted(ids_by_stratum[stratum])
        _rng(seed, "kfold", stratum).shuffle(ids)
        for j, sid in enumerate(ids):
            parts[(offset + j) % k].append(sid)
        offset += len(ids)
    return parts


def _carve_val(
    train: list[str], strata: Mapping[str, str], fraction: float, seed: int, tag: str
) -> tuple[list[str], list[str]]:
    """Take round(fraction·n) ids for validation, proportionally from each material: every id gets
    the key (rank within its shuffled stratum + a per-stratum offset) / stratum size, and the
    smallest keys go to validation, so each stratum contributes its share up to rounding."""
    n_val = round(len(train) * fraction)
    if n_val == 0:
        return sorted(train), []
    by: dict[str, list[str]] = defaultdict(list)
    for sid in train:
        by[strata[sid]].append(sid)
    keyed: list[tuple[float, str]] = []
    for stratum in sorted(by):
        ids = sorted(by[stratum])
        rng = _rng(seed, "val", tag, stratum)
        rng.shuffle(ids)
        u = rng.random()
        keyed.extend(((j + u) / len(ids), sid) for j, sid in enumerate(ids))
    keyed.sort()
    val = sorted(sid for _, sid in keyed[:n_val])
    val_set = set(val)
    return sorted(s for s in train if s not in val_set), val


# Flags that make a fold unusable: a job on it has nothing to train on, test on, or (when
# data.val_fraction asks for validation) validate on. The other flags are warnings.
BLOCKING_FLAGS: tuple[str, ...] = ("empty-train", "empty-test", "no-val")


def fold_flags(
    train: int, val: int, test: int, *, min_fold_size: int, val_fraction: float
) -> list[str]:
    """Whether a fold of these sizes is feasible: its blocking flags, then its warnings.

    The one judgement of feasibility: `hcli data splits`, `hcli data stats` and the checks before
    a submission all read it from `Fold.flags` / `Fold.blocking`.
    """
    flags = []
    if train == 0:
        flags.append("empty-train")
    if test == 0:
        flags.append("empty-test")
    if val_fraction > 0 and val == 0:
        flags.append("no-val")
    if 0 < test < min_fold_size:
        flags.append(f"small-test(<{min_fold_size})")
    if 0 < train < min_fold_size:
        flags.append(f"small-train(<{min_fold_size})")
    return flags


def make_splits(
    manifest: Manifest,
    protocol: str,
    *,
    k: int = 5,
    seed: int = 0,
    val_fraction: float = 0.15,
    groups: Mapping[str, Sequence[str]] | None = None,
    min_fold_size: int = 10,
) -> list[Fold]:
    """All folds of `protocol` over the manifest's samples, in the documented order."""
    if protocol not in PROTOCOLS:
        raise UserError(f"unknown protocol {protocol!r}; use one of {', '.join(PROTOCOLS)}")
    if not 0 <= val_fraction < 1:
        raise UserError(f"val_fraction={val_fraction} must be in [0, 1)")
    samples = manifest.samples
    if not samples:
        raise DataError("the manifest lists no samples; prepare the data first")
    material = {s.id: s.material for s in samples}
    content = {s.id: s.content for s in samples}
    all_ids = sorted(material)

    # (name, held_out label, domain, values, test ids)
    plans: list[tuple[str, str, Literal["material", "content"] | None, list[str], list[str]]] = []
    if protocol == "kfold":
        if k < 2:
            raise UserError(f"k={k}: kfold needs at least 2 folds")
        by_mat: dict[str, list[str]] = defaultdict(list)
        for sid in all_ids:
            by_mat[material[sid]].append(sid)
        for i, part in enumerate(_stratified_parts(by_mat, k, seed)):
            plans.append((f"kfold:{i}", f"fold {i}", None, [], sorted(part)))
    elif protocol in ("lomo", "locontent"):
        domain: Literal["material", "content"] = "material" if protocol == "lomo" else "content"
        value_of = material if protocol == "lomo" else content
        for v in sorted(set(value_of.values())):
            plans.append(
                (f"{protocol}:{v}", v, domain, [v], [s for s in all_ids if value_of[s] == v])
            )
    else:
        grouping = dict(groups) if groups is not None else load_material_groups(None)
        grouping = validate_material_groups({"groups": grouping}, "material groups")
        for gname, members in grouping.items():
            test = [s for s in all_ids if material[s] in members]
            plans.append((f"{protocol}:{gname}", gname, "material", list(members), test))

    folds = []
    for i, (name, label, domain_, values, test) in enumerate(plans):
        test_set = set(test)
        rest = [s for s in all_ids if s not in test_set]
        train, val = _carve_val(rest, material, val_fraction, seed, name)
        flags = fold_flags(
            len(train), len(val), len(test), min_fold_size=min_fold_size, val_fraction=val_fraction
        )
        folds.append(Fold(protocol, i, name, label, domain_, values, train, val, test, flags))
    return folds


def _folds_for(manifest: Manifest, data: DataSpec, seed: int) -> list[Fold]:
    groups = None
    if data.protocol == "lomo-grouped":
        groups = load_material_groups(data.groups_file)
    return make_splits(
        manifest,
        data.protocol,
        k=data.k,
        seed=seed,
        val_fraction=data.val_fraction,
        groups=groups,
        min_fold_size=data.min_fold_size,
    )


def get_fold(manifest: Manifest, data: DataSpec, seed: int) -> Fold:
    """The fold `data.fold` of `data.protocol`; SpecError when the index is out of range."""
    folds = _folds_for(manifest, data, seed)
    if not 0 <= data.fold < len(folds):
        names = ", ".join(f"{f.index}={f.held_out}" for f in folds)
        raise SpecError(
            f"data.fold={data.fold} is out of range for protocol {data.protocol} on this data: "
            f"{len(folds)} folds exist; use data.fold from 0 to {len(folds) - 1} ({names})"
        )
    return folds[data.fold]


def held_out_ids(manifest: Manifest, data: DataSpec, seed: int) -> set[str]:
    """Ids a run on this fold must never see for training (its test set), so that pretraining and
    meta-training on the same data stay fair. For domain protocols this is every sample of the
    held-out material(s) or content."""
    fold = get_fold(manifest, data, seed)
    if fold.held_out_domain is None:
        return set(fold.test)
    key = "material" if fold.held_out_domain == "material" else "content"
    values = set(fold.held_out_values)
    return {s.id for s in manifest.samples if getattr(s, key) in values}
