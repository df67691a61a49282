"""Building a spec from its sources: defaults < config file < CLI flags < `-o key=value`.

Each source is a nested dict merged into the one below it; pydantic validates the result once,
and its errors are turned into lines that name the key and say how to fix it.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from hcli.errors import SpecError
from hcli.spec._schema import Spec
from hcli.spec._sweep import SWEEP_KEY

__all__ = [
    "CONFIGS_DIR",
    "fill_defaults",
    "load_spec",
    "parse_override",
    "read_config",
    "spec_to_yaml",
    "format_validation_error",
]

CONFIGS_DIR = Path(__file__).resolve().parents[2] / "configs"

# Keys users reach for that live elsewhere in the tree (documented in the README).
_ALIASES = {"train.seed": "seed"}


def find_config(config: str | Path) -> Path:
    """A config given as a path or as a name in configs/ (`quickstart`: configs/quickstart.yaml)."""
    path = Path(config)
    if path.is_file():
        return path
    for candidate in (CONFIGS_DIR / f"{config}.yaml", CONFIGS_DIR / str(config)):
        if candidate.is_file():
            return candidate
    names = sorted(p.stem for p in CONFIGS_DIR.glob("*.yaml")) if CONFIGS_DIR.is_dir() else []
    raise SpecError(
        f"config file {str(config)!r} not found; give a path to a YAML file or one of: "
        f"{', '.join(names) or '(no configs/ folder)'}"
    )


def read_config(config: str | Path) -> dict[str, Any]:
    path = find_config(config)
    try:
        text = path.read_text()
    except OSError as exc:
        raise SpecError(f"cannot read config file {path}: {exc.strerror}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise SpecError(
            f"config file {path}: broken YAML{where}: {problem}; fix the syntax"
        ) from exc
    if data is None:
        raise SpecError(f"config file {path} is empty; write at least `kind: multiclass`")
    if not isinstance(data, dict):
        raise SpecError(
            f"config file {path} holds a {type(data).__name__}, not a mapping of keys; "
            "write `key: value` lines such as `seed: 0`"
        )
    return data


def parse_override(text: str) -> tuple[str, Any]:
    """`train.lr=3e-4` → ("train.lr", "3e-4" typed later by the schema); YAML values allowed."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise SpecError(
            f"override {text!r} is not of the form key.sub=value; e.g. -o train.lr=3e-4"
        )
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return _ALIASES.get(key, key), value


def _set_path(tree: dict[str, Any], key: str, value: Any) -> None:
    node = tree
    parts = key.split(".")
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise SpecError(
                f"override {key}: {'.'.join(parts[: i + 1])} is a value, not a section; "
                f"set {'.'.join(parts[: i + 1])}=... instead"
            )
        node = child
    node[parts[-1]] = value


def _merge(base: dict[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in top.items():
        if (
            isinstance(value, Mapping)
            and isinstance(out.get(key), dict)
            and key != "encoder_kwargs"
        ):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def format_validation_error(exc: ValidationError, source: str) -> str:
    """One line per problem: `source: key.path: message (got value)`."""
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key; remove it or check its spelling (`hcli spec show` lists every key)"
        elif msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        got = err.get("input")
        shown = (
            ""
            if err["type"] in ("extra_forbidden", "missing") or isinstance(got, dict)
            else f" (got {got!r})"
        )
        if loc == "(top level)":
            # Cross-field rules name their keys in the message itself.
            lines.append(f"{source}: {msg}")
        else:
            lines.append(f"{source}: {loc}: {msg}{shown}")
    return "\n".join(lines)


def load_spec(
    config: str | Path | None = None,
    *,
    kind: str | None = None,
    flags: Mapping[str, Any] | None = None,
    overrides: Iterable[str] = (),
) -> Spec:
    """Resolve a spec from its sources. `flags` are dotted keys set by CLI options (--backbone)."""
    tree: dict[str, Any] = {}
    source = "spec"
    if config is not None:
        tree = read_config(config)
        tree.pop(SWEEP_KEY, None)  # the runs a config plans: hcli.launch reads it (_sweep.py)
        source = str(find_config(config))
    layer: dict[str, Any] = {}
    if kind is not None:
        layer["kind"] = kind
    for key, value in (flags or {}).items():
        if value is not None:
            _set_path(layer, key, value)
    tree = _merge(tree, layer)
    layer = {}
    for text in overrides:
        key, value = parse_override(text)
        _set_path(layer, key, value)
    tree = _merge(tree, layer)
    try:
        return Spec.model_validate(tree)
    except ValidationError as exc:
        raise SpecError(format_validation_error(exc, source)) from None


def resolve_paths(spec: Spec, base: Path | None = None) -> Spec:
    """Make the spec's relative paths absolute so a job started elsewhere finds the same files."""
    base = base or Path(os.getcwd())
    out = spec.model_copy(deep=True)
    if not out.data.root.is_absolute():
        out.data.root = (base / out.data.root).resolve()
    if out.data.groups_file is not None and not out.data.groups_file.is_absolute():
        out.data.groups_file = (base / out.data.groups_file).resolve()
    if isinstance(out.model.pretrained, Path) and not out.model.pretrained.is_absolute():
        out.model.pretrained = (base / out.model.pretrained).resolve()
    if out.slurm.container is not None and not out.slurm.container.is_absolute():
        out.slurm.container = (base / out.slurm.container).resolve()
    return out


def spec_to_yaml(spec: Spec) -> str:
    # libyaml's emitter when present: the same text, five times faster (a sweep writes one per run).
    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    return yaml.dump(spec.model_dump(mode="json"), Dumper=dumper, sort_keys=False, width=100)


def spec_from_yaml_file(path: Path) -> Spec:
    """Read back a resolved spec (a run folder's spec.yaml)."""
    try:
        data = yaml.safe_load(path.read_text())
        return Spec.model_validate(data)
    except FileNotFoundError:
        raise SpecError(f"{path} does not exist; is this a run folder?") from None
    except (yaml.YAMLError, ValidationError) as exc:
        raise SpecError(
            f"{path} is not a valid spec ({exc.__class__.__name__}); re-submit the run"
        ) from None


def fill_defaults(tree: Mapping[str, Any]) -> dict[str, Any]:
    """A raw spec tree (an older run's spec.yaml) with each field it lacks set to its default.

    Not validated, so a reader of many run folders (collect) can compare old and new runs by the
    same keys without refusing one whose spec no longer validates; keys the schema does not know
    are kept. Dicts that are values (`model.encoder_kwargs`) are not merged into their default.
    """
    return _fill(tree, Spec, Spec().model_dump(mode="json"))


def _fill(
    tree: Mapping[str, Any], model: type[BaseModel], default: dict[str, Any]
) -> dict[str, Any]:
    out = copy.deepcopy(dict(tree))
    for name, field in model.model_fields.items():
        ann = field.annotation
        if name not in out:
            out[name] = copy.deepcopy(default[name])
        elif isinstance(ann, type) and issubclass(ann, BaseModel) and isinstance(out[name], dict):
            out[name] = _fill(out[name], ann, default[name])
    return out
