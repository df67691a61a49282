"""Training-state checkpoints: atomic, verified, the newest k kept, optionally written in the
background, always readable with ``torch.load(weights_only=True)``, and bound to one experiment.

The training state (built by ``jobs.engine.Engine.state_dict``, one plain dict) holds::

    {
        "model": model.state_dict(),      # the bare module: not the DDP wrapper (`.module`) and
                                          # not torch.compile's wrapper (`._orig_mod`)
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),    # GradScaler (disabled, and so empty, unless fp16 on GPU)
        "train_state": TrainState.state_dict(),   # step, per-loader sampler positions
                                          # {"train": {"epoch", "position", "seed"}}, best metric
                                          # and its step, early-stopping counter, last metric
        "task": task.state_dict(),        # what the kind adds (empty for multiclass)
        "rng": capture_rng_state(),       # Python, NumPy global, torch CPU (+ CUDA) generators
        "identity": {"run_id": str, "spec_id": str},   # refuse another experiment's state
    }

Everything above is made of tensors, ints, floats, bools, strings, None, lists, tuples and dicts,
which the weights-only unpickler accepts. `to_weights_only_safe` converts what it would refuse
but has an obvious plain form (NumPy arrays and scalars, paths); anything else raises
`TypeError` naming the key, at save time rather than at resume time. `CheckpointManager.save`
applies it, so the loop does not have to.

On disk (``RUN/checkpoints``)::

    step-00001200.pt        the state, written to a temp file in the same folder, fsynced, renamed
    step-00001200.pt.done   completeness marker, JSON {"step", "size", "sha256", "identity"},
                            written last

A checkpoint counts only when its marker exists and the file's size and sha256 match it
(torchtitan's rule: valid only if its metadata exists; lingua's "done" marker). Resume takes the
newest one that verifies and loads, and warns (`DamagedCheckpointWarning`) about each newer one
it skips. The marker repeats the state's identity so that `hcli resume` can refuse a checkpoint of
another experiment without importing torch (`hcli.ckpt_identity`); loading refuses it too
(`CheckpointIdentityError`), because a damaged run folder must never silently continue someone
else's training.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import tempfile
import threading
import time
import warnings
from collections import OrderedDict
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path, PurePath
from typing import IO, Any, cast

import numpy as np
import torch

from hcli.ckpt_identity import CheckpointIdentityError, identity_mismatch
from hcli.fsutil import atomic_write_json, fsync_dir, sha256_file

__all__ = [
    "CheckpointIdentityError",
    "CheckpointManager",
    "DamagedCheckpointWarning",
    "capture_rng_state",
    "restore_rng_state",
    "to_weights_only_safe",
    "checkpoint_name",
]

_NAME_RE = re.compile(r"^step-(\d{8,})\.pt$")
_MARKER_SUFFIX = ".done"
_HASH_CHUNK = 1 << 22
# Small enough that two copy threads finish together, large enough that handing batches over
# costs nothing next to copying them (~1 ms of copying each).
_COPY_BATCH_BYTES = 8 << 20


class DamagedCheckpointWarning(UserWarning):
    """A checkpoint was skipped because it is incomplete or corrupt."""


def checkpoint_name(step: int) -> str:
    return f"step-{step:08d}.pt"


# --------------------------------------------------------------------------------------------
# RNG state


def capture_rng_state() -> dict[str, Any]:
    """Python `random`, NumPy's global generator, torch CPU and (when present) CUDA generators.

    Stored as tensors and plain numbers because the weights-only unpickler refuses NumPy arrays
    and would turn Python's 625-int state tuple into a slow list of objects.
    """
    py_version, py_state, py_gauss = random.getstate()
    np_kind, np_keys, np_pos, np_has_gauss, np_cached = np.random.get_state(legacy=True)
    return {
        "python": {
            "version": int(py_version),
            "state": torch.tensor(py_state, dtype=torch.int64),
            "gauss_next": py_gauss,
        },
        "numpy": {
            "kind": str(np_kind),
            "keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "cached_gaussian": float(np_cached),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Inverse of `capture_rng_state`; CUDA states are restored only where devices exist."""
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss_next"]))
    npst = state["numpy"]
    np.random.set_state(
        (
            npst["kind"],
            npst["keys"].numpy().astype(np.uint32),
            int(npst["pos"]),
            int(npst["has_gauss"]),
            float(npst["cached_gaussian"]),
        )
    )
    torch.set_rng_state(state["torch"])
    cuda_states = list(state.get("cuda") or [])
    if cuda_states and torch.cuda.is_available():
        n = min(len(cuda_states), torch.cuda.device_count())
        if n != len(cuda_states):
            warnings.warn(
                f"checkpoint holds CUDA RNG states for {len(cuda_states)} devices, this process "
                f"sees {torch.cuda.device_count()}; restoring the first {n}",
                stacklevel=2,
            )
        for i in range(n):
            torch.cuda.set_rng_state(cuda_states[i], device=i)


# --------------------------------------------------------------------------------------------
# Making a state weights-only loadable (and, optionally, a private CPU copy of it)

_PLAIN = (int, float, bool, str, bytes, type(None), torch.dtype, torch.device, torch.Size)


def to_weights_only_safe(obj: Any) -> Any:
    """Return `obj` in a form `torch.load(weights_only=True)` reads back.

    NumPy arrays become tensors, NumPy scalars Python numbers, paths strings; tensors, plain
    values, dicts, lists and tuples pass through (containers rebuilt, tensors shared). Anything
    else raises `TypeError` naming where it sits.
    """
    return _walk(obj, "state", None)


class _Slot:
    """One tensor's reused CPU buffer and the byte views the host copy works on.

    The views are kept between snapshots because building them (~730 of each for convnext-tiny
    with AdamW) took 15-18 ms, a third as long as the copy itself. A cached source view stays
    valid while the source's address and size are unchanged: the view holds the source's
    memory, so the address cannot be reused by another tensor while it is cached.
    """

    __slots__ = ("buf", "dst", "src", "src_ptr")

    def __init__(self, buf: torch.Tensor) -> None:
        self.buf = buf
        self.dst: np.ndarray | None = None
        self.src: np.ndarray | None = None
        self.src_ptr = -1

    def host_pair(self, t: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        if self.dst is None:
            self.dst = _bytes_view(self.buf)
        ptr = t.data_ptr()
        if self.src is None or ptr != self.src_ptr or self.src.nbytes != t.nbytes:
            self.src, self.src_ptr = _bytes_view(t), ptr
        return self.dst, self.src


class _Copier:
    """Copies tensors into CPU buffers kept from the previous snapshot (keyed by state path).

    Writing into memory already touched is several times faster than allocating (page faults).
    CPU tensors are copied as raw bytes by numpy in a few Python threads rather than with
    `Tensor.copy_`: torch spreads each copy over its OpenMP team, whose barriers stall when the
    cores are shared with other work (343 MB on the 2-core machine under load: 0.26-0.68 s with
    copy_, 0.06-0.13 s with numpy in two threads, which releases the GIL while copying).
    Copies are handed to the pool in batches while the state is still being walked, so the walk
    (5-7 ms for convnext-tiny with AdamW) can overlap the copy; only partly, as the copy threads
    need the GIL between two copies. The copies themselves run at the speed of one contiguous
    memcpy of as many bytes (benchmarks/bench_checkpoint.py prints that floor).
    """

    def __init__(self, slots: dict[str, _Slot], pool: ThreadPoolExecutor) -> None:
        self.slots = slots
        self.new_slots: dict[str, _Slot] = {}
        self.pool = pool
        self.batch: list[tuple[np.ndarray, np.ndarray]] = []
        self.batch_bytes = 0
        self.pending: list[Future[None]] = []
        self.device_copies = False

    def tensor(self, t: torch.Tensor, where: str) -> torch.Tensor:
        # Runs ~730 times per snapshot of convnext-tiny with AdamW: cheap checks come first,
        # and `detach` (a new tensor object) only where a copy needs it.
        if t.layout is not torch.strided or t.is_quantized:
            return t.detach().to("cpu", copy=True)
        slot = self.slots.get(where)
        if slot is None or slot.buf.dtype != t.dtype or slot.buf.shape != t.shape:
            # Pinned memory makes device-to-host copies asynchronous (GPU jobs).
            slot = _Slot(torch.empty(t.shape, dtype=t.dtype, pin_memory=t.is_cuda))
        if t.is_cpu and t.is_contiguous():
            self.batch.append(slot.host_pair(t))
            self.batch_bytes += t.nbytes
            if self.batch_bytes >= _COPY_BATCH_BYTES:
                self._submit()
        else:
            slot.buf.copy_(t.detach(), non_blocking=t.is_cuda)
            self.device_copies = self.device_copies or t.is_cuda
        self.new_slots[where] = slot
        return slot.buf

    def _submit(self) -> None:
        if self.batch:
            self.pending.append(self.pool.submit(_copy_bytes, self.batch))
            self.batch, self.batch_bytes = [], 0

    def finish(self) -> None:
        """Return once every copy has landed; re-raise a copy's error."""
        self._submit()
        for future in self.pending:
            future.result()
        if self.device_copies:
            torch.cuda.synchronize()  # the non_blocking device-to-host copies must have landed


def _bytes_view(t: torch.Tensor) -> np.ndarray:
    return t.detach().reshape(-1).view(torch.uint8).numpy()


def _copy_bytes(pairs: list[tuple[np.ndarray, np.ndarray]]) -> None:
    for dst, src in pairs:
        np.copyto(dst, src)


def _walk(obj: Any, where: str, copier: _Copier | None) -> Any:
    """Convert `obj` recursively; with a `copier`, also copy every tensor to CPU memory."""
    if isinstance(obj, torch.Tensor):
        return obj if copier is None else copier.tensor(obj, where)
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind not in "biuf?c":
            raise TypeError(f"{where}: NumPy array of dtype {obj.dtype} cannot be checkpointed")
        return torch.from_numpy(np.array(obj, copy=True))
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, _PLAIN):
        return obj
    if isinstance(obj, PurePath):
        return str(obj)
    if isinstance(obj, Mapping):
        items = ((k, _walk(v, f"{where}[{k!r}]", copier)) for k, v in obj.items())
        return OrderedDict(items) if isinstance(obj, OrderedDict) else dict(items)
    if isinstance(obj, list | tuple):
        out = [_walk(v, f"{where}[{i}]", copier) for i, v in enumerate(obj)]
        return out if isinstance(obj, list) else tuple(out)
    raise TypeError(
        f"{where}: {type(obj).__module__}.{type(obj).__qualname__} cannot be loaded with "
        "weights_only=True; store its state_dict() or plain values instead"
    )


# --------------------------------------------------------------------------------------------
# Writing and verifying files


class _HashingWriter:
    """File-like sink for torch.save that hashes the bytes as they are written (one pass)."""

    def __init__(self, fh: Any) -> None:
        self._fh = fh
        self.sha256 = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.sha256.update(data)
        self.size += len(data)
        return self._fh.write(data)

    def flush(self) -> None:
        self._fh.flush()



def _marker(path: Path) -> Path:
    return path.with_name(path.name + _MARKER_SUFFIX)


def _read_marker(path: Path) -> dict[str, Any] | None:
    """The marker's content, or None when missing or unreadable (even as text)."""
    try:
        meta = json.loads(_marker(path).read_bytes())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


class CheckpointManager:
    """Writes, prunes and finds the checkpoints of one run.

    ``save(state, step)`` writes ``step-{step:08d}.pt`` atomically and then its marker, and keeps
    the newest `keep` complete checkpoints. With ``blocking=False`` the call returns as soon as
    the state is copied to CPU memory (the loop may then change the model); a background thread
    writes it. At most one write is in flight: a new save first waits for the previous one, so
    the copy buffers, reused from one save to the next, are never overwritten while written.
    Only `rank` 0 writes; on other ranks save and wait do nothing.
    """

    def __init__(
        self,
        directory: Path,
        keep: int,
        rank: int = 0,
        reuse_buffers: bool = True,
        copy_threads: int = 2,
        identity: Mapping[str, str] | None = None,
    ) -> None:
        if keep < 1:
            raise ValueError(f"keep must be at least 1, got {keep}")
        self.directory = Path(directory)
        self.keep = keep
        self.rank = rank
        self.reuse_buffers = reuse_buffers
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._slots: dict[str, _Slot] = {}
        self.copy_threads = max(1, copy_threads)
        self._pool: ThreadPoolExecutor | None = None
        self.last_blocked_s = 0.0  # time the last save() call kept the caller waiting
        # {"run_id", "spec_id"} written into every marker and checked on every load.
        self.identity = dict(identity) if identity else None

    # -- writing ------------------------------------------------------------------------------

    def save(self, state: Mapping[str, Any], step: int, blocking: bool = False) -> Path | None:
        """Checkpoint `state` as step `step`; returns the final path (rank 0) or None."""
        if self.rank != 0:
            return None
        t0 = time.perf_counter()
        self.wait()
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / checkpoint_name(step)
        if blocking:
            self._write(to_weights_only_safe(state), step)
            self.last_blocked_s = time.perf_counter() - t0
            return path
        snapshot = self.snapshot(state)
        self._thread = threading.Thread(
            target=self._write_in_background,
            args=(snapshot, step),
            name=f"checkpoint-{step}",
            # Not a daemon: a normal interpreter exit (including submitit's sys.exit after a
            # requeue) finishes the write instead of cutting it off.
            daemon=False,
        )
        self._thread.start()
        self.last_blocked_s = time.perf_counter() - t0
        return path

    def snapshot(self, state: Mapping[str, Any]) -> dict[str, Any]:
        """A weights-only-safe copy of `state` whose tensors live in (reused) CPU memory.

        The next call writes into the same memory: keep a snapshot only until the next one.
        """
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.copy_threads, thread_name_prefix="ckpt-copy")
        copier = _Copier(self._slots, self._pool)
        try:
            snap = _walk(state, "state", copier)
        finally:
            copier.finish()  # also when the walk fails: no copy may outlive this call
        self._slots = copier.new_slots if self.reuse_buffers else {}
        return snap

    def wait(self) -> None:
        """Join the write in flight; re-raise its error, if it failed."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            err, self._error = self._error, None
            raise RuntimeError(f"background checkpoint write failed: {err}") from err

    def close(self) -> None:
        self.wait()
        self._slots = {}  # the cached views hold the model's memory alive
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def __enter__(self) -> CheckpointManager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _write_in_background(self, snapshot: dict[str, Any], step: int) -> None:
        try:
            self._write(snapshot, step)
        except BaseException as exc:  # surfaced by the next wait()/save() in the main thread
            self._error = exc

    def _write(self, state: Any, step: int) -> None:
        final = self.directory / checkpoint_name(step)
        fd, tmp_name = tempfile.mkstemp(dir=self.directory, prefix=f".{final.name}.", suffix=".tmp")
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as fh:
                writer = _HashingWriter(fh)
                torch.save(state, cast(IO[bytes], writer))  # torch needs only write()
                fh.flush()
                os.fsync(fh.fileno())
            _marker(final).unlink(missing_ok=True)  # an old marker must not vouch for new bytes
            os.replace(tmp, final)
            fsync_dir(self.directory)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        marker: dict[str, Any] = {
            "step": step, "size": writer.size, "sha256": writer.sha256.hexdigest()
        }
        if self.identity:
            marker["identity"] = self.identity
        atomic_write_json(_marker(final), marker)
        fsync_dir(self.directory)
        self._prune(step)

    def _prune(self, saved_step: int) -> None:
        """Keep the newest `keep` complete checkpoints up to `saved_step`; delete the rest.

        Checkpoints newer than the one just saved belong to a timeline that was abandoned (the
        run resumed from an older one because they were damaged), so they go too, as do files
        without a valid marker and temp files of interrupted writes.
        """
        complete: list[int] = []
        for step, path in self._steps():
            meta = _read_marker(path)
            ok = (
                step <= saved_step
                and meta is not None
                and path.exists()
                and meta.get("size") == path.stat().st_size
            )
            if ok:
                complete.append(step)
            else:
                self._delete(path)
        for step in sorted(complete, reverse=True)[self.keep :]:
            self._delete(self.directory / checkpoint_name(step))
        for tmp in self.directory.glob(".step-*.tmp"):
            tmp.unlink(missing_ok=True)

    @staticmethod
    def _delete(path: Path) -> None:
        # Marker first: a crash in between leaves an unmarked file (ignored), never a marker
        # vouching for a missing file.
        _marker(path).unlink(missing_ok=True)
        path.unlink(missing_ok=True)

    # -- reading ------------------------------------------------------------------------------

    def _steps(self) -> list[tuple[int, Path]]:
        """Every step with a checkpoint file or a marker, newest first."""
        steps: set[int] = set()
        if self.directory.is_dir():
            for entry in self.directory.iterdir():
                name = entry.name.removesuffix(_MARKER_SUFFIX)
                m = _NAME_RE.match(name)
                if m:
                    steps.add(int(m.group(1)))
        return [(s, self.directory / checkpoint_name(s)) for s in sorted(steps, reverse=True)]

    @staticmethod
    def verify(path: Path) -> str | None:
        """Why `path` is not a complete checkpoint, or None when its marker vouches for it."""
        if not path.exists():
            return "file missing"
        meta = _read_marker(path)
        if meta is None:
            return "completeness marker missing or unreadable (interrupted write?)"
        size = path.stat().st_size
        if meta.get("size") != size:
            return f"size {size} differs from the marker's {meta.get('size')} (truncated?)"
        if meta.get("sha256") != sha256_file(path):
            return "sha256 differs from the marker's (corrupt)"
        return None

    def _warn(self, path: Path, reason: str) -> None:
        warnings.warn(
            f"skipping damaged checkpoint {path}: {reason}; trying an older one",
            DamagedCheckpointWarning,
            stacklevel=3,
        )

    def latest(self) -> Path | None:
        """The newest checkpoint whose marker, size and sha256 check out."""
        for _, path in self._steps():
            reason = self.verify(path)
            if reason is None:
                return path
            self._warn(path, reason)
        return None

    def _check_identity(self, path: Path) -> None:
        if self.identity is None:
            return
        problem = identity_mismatch(_read_marker(path) or {}, self.identity, path)
        if problem:
            raise CheckpointIdentityError(problem)

    def load_latest(self, map_location: Any = "cpu") -> tuple[dict[str, Any], Path] | None:
        """Load the newest valid checkpoint with weights_only=True, skipping damaged ones."""
        self.wait()
        for _, path in self._steps():
            reason = self.verify(path)
            if reason is None:
                self._check_identity(path)
                try:
                    state = torch.load(path, map_location=map_location, weights_only=True)
                except Exception as exc:  # noqa: BLE001 - any unreadable file means "skip it"
                    reason = f"torch.load(weights_only=True) failed: {exc}".splitlines()[0]
                else:
                    return state, path
            self._warn(path, reason)
        return None
