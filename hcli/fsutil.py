"""Atomic file writes (temporary file in the same folder, fsync, rename) and the one JSON reader.

A reader (status, collect, a resumed job) never sees half a file, and a crash leaves either the
old content or the new one.

Imported by `hcli status`'s fast path (through `hcli.scan`): `tempfile` (~5 ms: random, shutil)
is imported only when something is written.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = [
    "atomic_write_bytes", "atomic_write_text", "atomic_write_json", "fsync_dir", "read_json",
    "sha256_file",
]


def atomic_write_bytes(path: Path, data: bytes, *, durable: bool = True) -> None:
    """`durable=False` skips the fsync: for caches, which a crash may lose but never half-write
    as seen by a reader (the rename is still atomic)."""
    import tempfile

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def fsync_dir(path: Path) -> None:
    """Make a rename inside `path` durable (the directory entry itself is fsynced)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: str | os.PathLike[str], default: Any = None) -> Any:
    """The parsed file, or `default` when it is missing, unreadable (permissions, a directory),
    not UTF-8 or not JSON: run-folder files are written by jobs that may die mid-way on another
    node, and one damaged file must not stop `status` or `collect` from showing the others.

    Bytes straight to the parser, from a str path as well as a Path: a third faster than
    `Path.read_text()` over a thousand small files (benchmarks/bench_cli.py).
    """
    try:
        with open(path, "rb") as fh:
            return json.loads(fh.read())
    except (OSError, ValueError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        return default


def sha256_file(path: Path, chunk: int = 8 << 20) -> str:
    """The file's sha256 in hex, read in large blocks (one round trip per 8 MiB on a network
    filesystem): shard sidecars, checkpoint markers and staged copies all check with it."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()
