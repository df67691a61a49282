"""The registry of job kinds: one module per kind in this package declares everything the control
plane needs to know about it (its spec section, its workload, its results model, what `status`
and `collect` show), so adding a kind is one module here plus its task in `jobs/`.

Torch-free and cheap: a kind names its workload and results model as "module:attribute" strings,
imported only where they are used (the job, the results writer).
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from typing import Any

from hcli.kinds._info import KindInfo

__all__ = ["KindInfo", "all_kinds", "get_kind", "implemented_kinds", "load_attr"]


@functools.cache
def all_kinds() -> dict[str, KindInfo]:
    """Every declared kind by name, in the order of their `order` field."""
    found: list[KindInfo] = []
    for mod in pkgutil.iter_modules(__path__):
        if mod.name.startswith("_"):
            continue
        info = importlib.import_module(f"{__name__}.{mod.name}").KIND
        if info.name != mod.name:
            raise RuntimeError(f"hcli/kinds/{mod.name}.py declares kind {info.name!r}")
        found.append(info)
    return {k.name: k for k in sorted(found, key=lambda k: k.order)}


def get_kind(name: str) -> KindInfo:
    kinds = all_kinds()
    if name not in kinds:
        from hcli.errors import SpecError

        raise SpecError(f"kind={name!r} is not a job kind; choose one of {', '.join(kinds)}")
    return kinds[name]


def implemented_kinds() -> tuple[str, ...]:
    return tuple(k.name for k in all_kinds().values() if k.workload)


def load_attr(ref: str) -> Any:
    """`"package.module:attribute"` -> the attribute."""
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)
