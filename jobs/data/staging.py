"""Node-local staging of a prepared dataset (`data.stage_to_local`; docs/staging.md).

At job start the shards and `manifest.json` are copied once per node to scratch
(`data.stage_dir`, else `$SLURM_TMPDIR`, `$TMPDIR`, /tmp) and the job reads them there: shared
filesystems are slowest at what a training loader does most, many small random reads.

The copy lives under `<scratch>/hcli-stage-<uid>/<folder>-<key>/`, `key` the sha256 of
`manifest.json`, which lists every shard's sha256: two jobs on one node with the same data share
one copy, a re-prepared dataset gets a new one. Each shard's sha256 is checked against the
manifest, while copying (what was read from the shared path) and again by every job that reuses
the copy (what is on the node's disk now). Copies are made under an exclusive lock into a
temporary folder renamed into place, so a killed copy never looks finished; reuse checks run
under a shared lock, so the ranks of one job verify side by side. Anything that goes wrong (a
sha256 mismatch, a full disk, an unwritable scratch) leaves the job reading the shared path, with
a warning in the job log: never a silent fallback, never a half-checked copy.

`origin_of(path)` tells `jobs.provenance` where a staged folder came from, so provenance.json
records both the shared path and the folder the job read.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import shutil
import socket
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from hcli.data.manifest import MANIFEST_NAME, load_manifest
from hcli.fsutil import fsync_dir, sha256_file
from hcli.spec import Spec

__all__ = [
    "StageResult",
    "StagingError",
    "origin_of",
    "scratch_root",
    "sha256_file",
    "stage_dataset",
    "stage_spec",
]

_CHUNK = 8 << 20  # large reads: one round trip per 8 MiB on a network filesystem
_MARGIN = 64 << 20  # free space kept beyond the copy, so staging never fills a node's disk
_STAGED: dict[Path, StageResult] = {}  # staged (or fallen-back) folder -> how, this process


class StagingError(Exception):
    """Why a staged copy cannot be used; the job reads the shared path instead."""


@dataclass
class StageResult:
    root: Path  # spec.data.root: the shared folder
    read_from: Path  # the folder the job reads: the staged copy, or `root` after a fallback
    staged: bool
    reused: bool = False  # an earlier job's copy on this node, verified
    bytes: int = 0
    copy_s: float | None = None
    verify_s: float | None = None
    note: str | None = None  # why staging fell back
    host: str = field(default_factory=socket.gethostname)


def scratch_root(stage_dir: Path | None = None, env: Mapping[str, str] | None = None) -> Path:
    """`stage_dir` ($VARS expanded here, on the node), else $SLURM_TMPDIR, $TMPDIR, /tmp."""
    env = os.environ if env is None else env
    if stage_dir is not None:
        text = str(stage_dir)
        for name, value in sorted(env.items(), key=lambda kv: -len(kv[0])):
            text = text.replace(f"${{{name}}}", value).replace(f"${name}", value)
        return Path(text).expanduser()
    for name in ("SLURM_TMPDIR", "TMPDIR"):
        if env.get(name):
            return Path(env[name])
    return Path("/tmp")


def origin_of(path: Path) -> StageResult | None:
    """How `path` came to be the data folder of this process's job, if staging chose it."""
    return _STAGED.get(Path(path).resolve())


@contextmanager
def _locked(path: Path, exclusive: bool, say: Callable[[str], None]) -> Iterator[None]:
    with open(path, "a+") as fh:
        mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
        try:
            fcntl.flock(fh, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            say(f"staging: waiting for another job's copy in {path.parent}")
            fcntl.flock(fh, mode)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _verify(folder: Path, shards: Mapping[str, tuple[int, str]]) -> None:
    for name, (size, digest) in shards.items():
        path = folder / name
        try:
            actual = path.stat().st_size
        except FileNotFoundError:
            raise StagingError(f"{path} is missing") from None
        if actual != size:
            raise StagingError(f"{path} has {actual} bytes, manifest.json's copy has {size}")
        if sha256_file(path) != digest:
            raise StagingError(f"{path} does not match its sha256 in manifest.json")


def _copy_hashed(src: Path, dst: Path) -> str:
    """Copy `src` to `dst` and return the sha256 of the bytes read (one pass over the shared
    file: its content is checked as it is copied)."""
    h = hashlib.sha256()
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        while block := fin.read(_CHUNK):
            h.update(block)
            fout.write(block)
        fout.flush()
        os.fsync(fout.fileno())
    return h.hexdigest()


def _copy(root: Path, tmp: Path, shards: Mapping[str, tuple[int, str]]) -> None:
    tmp.mkdir(parents=True)
    for name, (_size, digest) in shards.items():
        if _copy_hashed(root / name, tmp / name) != digest:
            raise StagingError(
                f"{root / name} does not match its sha256 in {root / MANIFEST_NAME} (the shared "
                "copy changed after prepare); re-run hcli data prepare"
            )
    shutil.copyfile(root / MANIFEST_NAME, tmp / MANIFEST_NAME)
    fsync_dir(tmp)


def _remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def stage_dataset(
    root: Path, scratch: Path, *, say: Callable[[str], None] | None = None
) -> StageResult:
    """The node-local copy of the prepared folder `root` under `scratch` (made, or reused after
    its sha256 check), or `root` itself with a warning when that fails."""
    say = say or (lambda msg: print(msg, file=sys.stderr, flush=True))
    root = Path(root).resolve()
    try:
        result = _stage(root, Path(scratch), say)
    except (StagingError, OSError) as exc:
        reason = str(exc)
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            reason = f"{scratch} ran out of space ({exc.strerror})"
        say(f"warning: data.stage_to_local: {reason}; reading the data from the shared path "
            f"{root} instead")
        result = StageResult(root=root, read_from=root, staged=False, note=reason)
    _STAGED[result.read_from.resolve()] = result
    return result


def _stage(root: Path, scratch: Path, say: Callable[[str], None]) -> StageResult:
    manifest_bytes = (root / MANIFEST_NAME).read_bytes()
    manifest = load_manifest(root)
    shards = {
        s.file: ((root / s.file).stat().st_size, s.sha256) for s in manifest.shards
    }
    total = sum(size for size, _ in shards.values()) + len(manifest_bytes)
    key = hashlib.sha256(manifest_bytes).hexdigest()[:16]
    base = scratch / f"hcli-stage-{os.getuid()}"
    base.mkdir(parents=True, exist_ok=True)
    dest = base / f"{root.name}-{key}"
    lock = base / f"{root.name}-{key}.lock"

    if dest.is_dir():
        with _locked(lock, exclusive=False, say=say):
            t0 = time.perf_counter()
            try:
                _verify(dest, shards)
            except StagingError as exc:
                say(f"staging: the copy on this node failed its check ({exc}); copying again")
            else:
                return StageResult(root=root, read_from=dest, staged=True, reused=True,
                                   bytes=total, verify_s=time.perf_counter() - t0)

    with _locked(lock, exclusive=True, say=say):
        if dest.is_dir():  # another job may have copied while this one waited for the lock
            t0 = time.perf_counter()
            try:
                _verify(dest, shards)
            except StagingError:
                pass
            else:
                return StageResult(root=root, read_from=dest, staged=True, reused=True,
                                   bytes=total, verify_s=time.perf_counter() - t0)
        for leftover in base.glob(f".{dest.name}.*"):  # killed copies; the lock says none runs
            _remove(leftover)
        free = shutil.disk_usage(base).free
        if free < total + _MARGIN:
            raise StagingError(
                f"not enough space in {base} ({free / 2**30:.2f} GiB free, the data needs "
                f"{total / 2**30:.2f} GiB); set data.stage_dir to a larger node-local folder"
            )
        tmp = base / f".{dest.name}.{os.getpid()}.tmp"
        t0 = time.perf_counter()
        try:
            _copy(root, tmp, shards)
        except BaseException:
            _remove(tmp)
            raise
        copy_s = time.perf_counter() - t0
        if dest.is_dir():  # a copy that failed its check: readers keep their open files
            stale = base / f".{dest.name}.{os.getpid()}.stale"
            os.rename(dest, stale)
            _remove(stale)
        os.rename(tmp, dest)
        fsync_dir(base)
    say(f"staging: copied {total / 2**20:.1f} MiB of {root} to {dest} in {copy_s:.1f} s")
    return StageResult(root=root, read_from=dest, staged=True, bytes=total, copy_s=copy_s)


def stage_spec(spec: Spec, *, say: Callable[[str], None] | None = None) -> tuple[Spec, StageResult]:
    """A copy of `spec` whose data.root is the node-local copy (or the shared path after a
    fallback). The run folder's spec.json, and so the run id, keep the shared path."""
    result = stage_dataset(spec.data.root, scratch_root(spec.data.stage_dir), say=say)
    staged = spec.model_copy(deep=True)
    staged.data.root = result.read_from
    return staged, result
