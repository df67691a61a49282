"""`hcli data prepare`: hub-format parquet (or the hub itself) → HDF5 shards + manifest.json.

One output shard per source shard, so source shards are the unit of parallelism (`--workers`, and
later one SLURM array task each) and of resumption. A shard is written as `.shard-NNNNN.h5.tmp`,
fsynced and renamed, then its sidecar `shard-NNNNN.json` (samples, skipped rows, sha256, the key
of the source file it came from) is written atomically; only a shard with a matching sidecar
counts as finished. `manifest.json` is merged from the sidecars at the end. HDF5 output is
deterministic (fixed creation order, no timestamps), so a resumed run yields the same bytes.
Layout and policy: docs/data-format.md.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from hcli.classes import CLASS_NAMES
from hcli.data.imageio import (
    RowError,
    class_pixels,
    decode_mask,
    decode_rgb,
    open_image,
    target_size,
)
from hcli.data.manifest import (
    MANIFEST_NAME,
    Manifest,
    ResizePolicy,
    SampleEntry,
    ShardEntry,
    SkippedRow,
    load_manifest,
)
from hcli.errors import DataError, UserError
from hcli.fsutil import atomic_write_json, fsync_dir, read_json, sha256_file

__all__ = [
    "REQUIRED_COLUMNS",
    "CHUNK",
    "HUB_DOWNLOAD_HINT",
    "SourceShard",
    "ShardResult",
    "PrepareReport",
    "find_parquet_files",
    "resolve_source",
    "prepare_source_shard",
    "run_source_shard",
    "merge_manifest",
    "prepare",
    "format_summary",
    "shard_file",
]

REQUIRED_COLUMNS: tuple[str, ...] = ("id", "image", "annotation", "material", "content")
OPTIONAL_COLUMNS: tuple[str, ...] = ("type",)
CHUNK = 256  # an unaligned 512 crop touches ~9 chunks; see MEASURED.md
SIDECAR_VERSION = 1
THIN_CLASSES: tuple[str, ...] = ("Hair", "Scratch", "Dust", "Cracks")
HUB_DOWNLOAD_HINT = (
    "download it once with `huggingface-cli download {hub} --repo-type dataset --local-dir DIR` "
    "and pass --source DIR"
)
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def shard_file(index: int) -> str:
    return f"shard-{index:05d}.h5"


def _sidecar(out_dir: Path, index: int) -> Path:
    return out_dir / f"shard-{index:05d}.json"


def _tmp(out_dir: Path, index: int) -> Path:
    return out_dir / f".{shard_file(index)}.tmp"


# ---------------------------------------------------------------------------------------------
# sources


@dataclass(frozen=True)
class SourceShard:
    """One unit of work: a local parquet file or one shard of a hub dataset's stream."""

    index: int
    name: str  # ShardEntry.source: path relative to the source folder, or "hub_id#i"
    key: dict[str, Any]  # identity of the input, compared on resume
    path: str | None = None
    hub_id: str | None = None
    hub_shards: int = 0


def find_parquet_files(root: Path) -> list[Path]:
    files = sorted(p for p in Path(root).rglob("*.parquet") if not p.name.startswith("."))
    if not files:
        raise DataError(
            f"no parquet files under {root}; point --source at the downloaded dataset folder "
            "(it holds data/train-*.parquet)"
        )
    return files


def _columns_to_read(path: Path) -> list[str]:
    import pyarrow.parquet as pq

    try:
        names = set(pq.ParquetFile(path).schema_arrow.names)
    except Exception as exc:  # pyarrow raises ArrowInvalid/OSError for non-parquet files
        raise DataError(f"{path} is not a readable parquet file ({exc}); re-download it") from None
    missing = [c for c in REQUIRED_COLUMNS if c not in names]
    if missing:
        raise DataError(
            f"{path} has no column {missing[0]!r} (needs {', '.join(REQUIRED_COLUMNS)}); "
            "is this an ARTeFACT-format dataset?"
        )
    return [*REQUIRED_COLUMNS, *(c for c in OPTIONAL_COLUMNS if c in names)]


def _offline() -> bool:
    return any(
        os.environ.get(v, "").lower() in ("1", "true", "yes", "on")
        for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    )


def _load_hub(hub_id: str):  # -> datasets.IterableDataset
    hint = HUB_DOWNLOAD_HINT.format(hub=hub_id)
    if _offline():
        raise DataError(f"--source {hub_id} is a hub id but the hub is offline (HF_HUB_OFFLINE); "
                        f"{hint}")
    from datasets import Image, load_dataset

    try:
        ds = load_dataset(hub_id, split="train", streaming=True)
    except Exception as exc:  # connection errors come in many types (requests, hub, datasets)
        raise DataError(
            f"cannot reach {hub_id} on the Hugging Face hub ({type(exc).__name__}); {hint}"
        ) from None
    cols = set(ds.column_names or [])
    missing = [c for c in REQUIRED_COLUMNS if cols and c not in cols]
    if missing:
        raise DataError(f"hub dataset {hub_id} has no column {missing[0]!r}")
    for c in ("image", "annotation"):
        ds = ds.cast_column(c, Image(decode=False))  # we decode ourselves, one row at a time
    return ds


def resolve_source(source: str) -> tuple[str, list[SourceShard]]:
    """The work list for --source: a folder of parquet files, or a hub id (online only)."""
    path = Path(source).expanduser()
    if path.is_dir():
        root = path.resolve()
        shards = []
        for i, f in enumerate(find_parquet_files(root)):
            _columns_to_read(f)  # dataset-level problems stop the run before any work
            st = f.stat()
            rel = f.relative_to(root).as_posix()
            key = {"name": rel, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
            shards.append(SourceShard(i, rel, key, path=str(f)))
        return str(root), shards
    if path.exists():
        raise DataError(
            f"--source {source} is a file; pass the folder that holds the parquet files"
        )
    if not _HUB_ID.fullmatch(source) or source.startswith((".", "~", "/")):
        raise DataError(f"--source {source}: no such folder (and not a hub id like owner/name)")
    ds = _load_hub(source)
    n = int(getattr(ds, "num_shards", None) or getattr(ds, "n_shards", None) or 1)
    shards = [
        SourceShard(i, f"{source}#{i}", {"name": f"{source}#{i}", "of": n}, hub_id=source,
                    hub_shards=n)
        for i in range(n)
    ]
    return source, shards


def _iter_rows(src: SourceShard) -> Iterator[tuple[int, dict[str, Any]]]:
    """(row number, row) one at a time; the previous row is garbage before the next is read."""
    if src.path is not None:
        import pyarrow.parquet as pq

        cols = _columns_to_read(Path(src.path))
        # buffered reads without pre-buffering keep only the current row's pages in memory
        pf = pq.ParquetFile(src.path, buffer_size=1 << 20, pre_buffer=False)
        try:
            for i, batch in enumerate(pf.iter_batches(batch_size=1, columns=cols)):
                row = {c: _cell(batch.column(c)) for c in cols}
                del batch
                yield i, row
        except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
            raise DataError(f"{src.path}: parquet read failed ({exc}); re-download it") from None
        return
    ds = _load_hub(str(src.hub_id)).shard(num_shards=src.hub_shards, index=src.index)
    yield from enumerate(ds)


# ---------------------------------------------------------------------------------------------
# one row


@dataclass
class _Row:
    id: str
    image: np.ndarray
    mask: np.ndarray
    material: str
    content: str
    type: str
    orig: tuple[int, int]
    counts: list[int]
    counts_orig: list[int]


def _cell(arr: Any) -> Any:
    """The value of a one-row arrow column; image structs become readers over arrow's memory.

    Not `to_pylist()` or scalars: both copy the encoded image (150 MB for the largest ARTeFACT
    PNG), which matters when the budget is one decoded image.
    """
    import pyarrow as pa

    if arr.null_count:
        return None
    if pa.types.is_struct(arr.type):
        arr = arr.field("bytes") if arr.type.get_field_index("bytes") >= 0 else None
        if arr is None or arr.null_count:
            return None
    if pa.types.is_binary(arr.type) or pa.types.is_large_binary(arr.type):
        _, offsets, data = arr.buffers()
        width = np.int64 if pa.types.is_large_binary(arr.type) else np.int32
        start, end = np.frombuffer(offsets, dtype=width)[arr.offset : arr.offset + 2].tolist()
        return pa.BufferReader(data.slice(start, end - start))
    return arr[0].as_py()


def _blob(cell: Any) -> Any:
    """Encoded bytes, or a file-like reader over them, or None."""
    if isinstance(cell, dict):
        cell = cell.get("bytes")
    if isinstance(cell, bytes | bytearray):
        return bytes(cell)
    return cell if hasattr(cell, "read") else None


def _process_row(row: dict[str, Any], max_side: int) -> _Row:
    sid = row.get("id")
    if not isinstance(sid, str) or not sid.strip():
        raise RowError("id is empty")
    if "/" in sid or sid in (".", ".."):
        raise RowError(f"id {sid!r} cannot name an HDF5 group")
    material, content = row.get("material"), row.get("content")
    if not material or not content:
        raise RowError(f"{'material' if not material else 'content'} is empty")
    im = open_image(_blob(row.get("image")), "image")
    mk = open_image(_blob(row.get("annotation")), "annotation")
    if im.size != mk.size:
        raise RowError(
            f"annotation is {mk.size[0]}x{mk.size[1]} px but the image is "
            f"{im.size[0]}x{im.size[1]}"
        )
    w, h = im.size
    tw, th = target_size(w, h, max_side)
    # mask first: a bad label is found before the expensive image decode
    counts_orig, mask = decode_mask(mk, (tw, th))
    del mk
    counts = class_pixels(mask)
    image, _ = decode_rgb(im, max_side)
    return _Row(sid, image, np.ascontiguousarray(mask), str(material), str(content),
                str(row.get("type") or ""), (h, w), counts, counts_orig)


# ---------------------------------------------------------------------------------------------
# one shard


@dataclass
class ShardResult:
    index: int
    entry: ShardEntry
    samples: list[SampleEntry]
    skipped: list[SkippedRow]
    reused: bool = False  # finished by an earlier run


def _chunks(shape: tuple[int, ...]) -> tuple[int, ...]:
    return (min(CHUNK, shape[0]), min(CHUNK, shape[1]), *shape[2:])



def run_source_shard(src: SourceShard, out_dir: str | Path, max_side: int) -> ShardResult:
    """Convert one source shard; safe to kill at any point (see the module docstring)."""
    import h5py

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    name = shard_file(src.index)
    tmp, final = _tmp(out, src.index), out / name
    samples: list[SampleEntry] = []
    skipped: list[SkippedRow] = []
    seen: set[str] = set()
    # libver 'earliest' and track_times=False: no timestamps, so identical input → identical bytes
    with h5py.File(tmp, "w", libver=("earliest", "v110")) as f:
        for i, raw in _iter_rows(src):
            rid = raw.get("id") if isinstance(raw.get("id"), str) else None
            try:
                if rid in seen:
                    raise RowError("duplicate id within the shard")
                r = _process_row(raw, max_side)
            except RowError as exc:
                skipped.append(SkippedRow(id=rid, source=src.name, row=i, reason=str(exc)))
                continue
            except MemoryError:
                skipped.append(SkippedRow(id=rid, source=src.name, row=i,
                                          reason="out of memory while decoding"))
                continue
            finally:
                del raw
            seen.add(r.id)
            g = f.create_group(r.id)
            g.create_dataset("image", data=r.image, chunks=_chunks(r.image.shape),
                             track_times=False)
            g.create_dataset("mask", data=r.mask, chunks=_chunks(r.mask.shape), track_times=False)
            for k, v in (("material", r.material), ("content", r.content), ("type", r.type),
                         ("orig_height", r.orig[0]), ("orig_width", r.orig[1])):
                g.attrs[k] = v
            samples.append(SampleEntry(
                id=r.id, shard=name, material=r.material, content=r.content, type=r.type,
                height=r.image.shape[0], width=r.image.shape[1], orig_height=r.orig[0],
                orig_width=r.orig[1], class_pixels=r.counts, class_pixels_orig=r.counts_orig))
            del r
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    entry = ShardEntry(file=name, source=src.name, samples=len(samples), sha256=sha256_file(tmp))
    os.replace(tmp, final)
    fsync_dir(out)
    atomic_write_json(_sidecar(out, src.index), {
        "version": SIDECAR_VERSION,
        "key": src.key,
        "max_side": max_side,
        "size": final.stat().st_size,
        "shard": entry.model_dump(),
        "samples": [s.model_dump() for s in samples],
        "skipped": [s.model_dump() for s in skipped],
    })
    return ShardResult(src.index, entry, samples, skipped)


def prepare_source_shard(
    source_file: str | Path,
    out_dir: str | Path,
    max_side: int,
    index: int,
    source_name: str | None = None,
) -> ShardResult:
    """Convert one local parquet file into OUT/shard-<index>.h5 + its sidecar (array-task entry).

    `source_name` is what the manifest records as the shard's source (default: the file name);
    `hcli data prepare` passes the path relative to --source.
    """
    f = Path(source_file)
    _columns_to_read(f)
    st = f.stat()
    rel = source_name or f.name
    src = SourceShard(index, rel, {"name": rel, "size": st.st_size, "mtime_ns": st.st_mtime_ns},
                      path=str(f))
    return run_source_shard(src, out_dir, max_side)


def _finished(out: Path, src: SourceShard, max_side: int) -> ShardResult | None:
    """The recorded result if shard `src.index` is complete for exactly this input, else None."""
    rec = read_json(_sidecar(out, src.index))
    h5 = out / shard_file(src.index)
    if not isinstance(rec, dict) or rec.get("version") != SIDECAR_VERSION:
        return None
    if rec.get("key") != src.key or rec.get("max_side") != max_side:
        return None
    if not h5.is_file() or h5.stat().st_size != rec.get("size"):
        return None
    try:
        return ShardResult(
            src.index,
            ShardEntry.model_validate(rec["shard"]),
            [SampleEntry.model_validate(s) for s in rec["samples"]],
            [SkippedRow.model_validate(s) for s in rec["skipped"]],
            reused=True,
        )
    except Exception:  # a sidecar from another version: redo the shard
        return None


# ---------------------------------------------------------------------------------------------
# manifest


def merge_manifest(
    out_dir: str | Path, source: str, max_side: int, results: list[ShardResult] | None = None,
    n_shards: int | None = None,
) -> Manifest:
    """Write OUT/manifest.json from finished shards (given, or read from the sidecars 0..n-1).

    A sample id seen in an earlier shard is listed once; later copies become skipped rows.
    """
    out = Path(out_dir)
    if results is None:
        if n_shards is None:
            n_shards = len(list(out.glob("shard-*.json")))
        results = []
        for i in range(n_shards):
            rec = read_json(_sidecar(out, i))
            if not isinstance(rec, dict) or not (out / shard_file(i)).is_file():
                raise DataError(f"{out / shard_file(i)} is not finished; re-run hcli data prepare")
            results.append(ShardResult(
                i, ShardEntry.model_validate(rec["shard"]),
                [SampleEntry.model_validate(s) for s in rec["samples"]],
                [SkippedRow.model_validate(s) for s in rec["skipped"]], reused=True))
    results = sorted(results, key=lambda r: r.index)
    samples: list[SampleEntry] = []
    skipped: list[SkippedRow] = []
    first: dict[str, str] = {}
    for r in results:
        skipped.extend(r.skipped)
        for s in r.samples:
            if s.id in first:
                skipped.append(SkippedRow(id=s.id, source=r.entry.source, row=-1,
                                          reason=f"duplicate id (kept the copy in {first[s.id]})"))
                continue
            first[s.id] = s.shard
            samples.append(s)
    manifest = Manifest(
        source=source,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        resize=ResizePolicy(max_side=max_side),
        shards=[r.entry for r in results],
        samples=samples,
        skipped=skipped,
    )
    atomic_write_json(out / MANIFEST_NAME, manifest.model_dump())
    return manifest


# ---------------------------------------------------------------------------------------------
# the command


@dataclass
class PrepareReport:
    out: Path
    manifest: Manifest
    shards_written: int
    shards_reused: int
    up_to_date: bool = False
    notes: list[str] = field(default_factory=list)


def _clean(out: Path, n: int) -> list[str]:
    """Remove leftovers of killed runs and shards of sources that no longer exist."""
    notes = []
    for p in out.glob(".shard-*.h5.tmp"):
        p.unlink(missing_ok=True)
    for p in list(out.glob("shard-*.h5")) + list(out.glob("shard-*.json")):
        m = re.fullmatch(r"shard-(\d+)\.(h5|json)", p.name)
        if m and int(m.group(1)) >= n:
            p.unlink()
            notes.append(f"removed {p.name} (its source shard is gone)")
    return notes


def _manifest_current(out: Path, source: str, max_side: int, results: list[ShardResult]) -> bool:
    try:
        m = load_manifest(out)
    except DataError:
        return False
    return (m.source == source and m.resize.max_side == max_side
            and m.shards == [r.entry for r in sorted(results, key=lambda r: r.index)])


def prepare(
    source: str, out: str | Path, max_side: int = 2048, workers: int = 1, progress: bool = True
) -> PrepareReport:
    """Prepare (or finish preparing) OUT from --source; see the module docstring."""
    from filelock import FileLock, Timeout

    if max_side < 16:
        raise UserError(f"--max-side must be at least 16 pixels (got {max_side})")
    if workers < 1:
        raise UserError(f"--workers must be at least 1 (got {workers})")
    source_id, sources = resolve_source(source)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(out_dir / ".prepare.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise UserError(f"another hcli data prepare is writing {out_dir}; wait for it") from None
    try:
        notes = _clean(out_dir, len(sources))
        done = {s.index: r for s in sources if (r := _finished(out_dir, s, max_side)) is not None}
        pending = [s for s in sources if s.index not in done]
        if not pending and _manifest_current(out_dir, source_id, max_side, list(done.values())):
            return PrepareReport(out_dir, load_manifest(out_dir), 0, len(done), True, notes)
        results = list(done.values()) + _run(pending, out_dir, max_side, workers, progress)
        manifest = merge_manifest(out_dir, source_id, max_side, results)
        return PrepareReport(out_dir, manifest, len(pending), len(done), False, notes)
    finally:
        lock.release()


def _run(
    pending: list[SourceShard], out: Path, max_side: int, workers: int, progress: bool
) -> list[ShardResult]:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    results: list[ShardResult] = []
    if not pending:
        return results
    cols = ("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn())
    with Progress(*cols, console=Console(stderr=True), disable=not progress,
                  transient=True) as bar:
        task = bar.add_task("preparing shards", total=len(pending))
        if workers == 1 or len(pending) == 1:
            for s in pending:
                results.append(run_source_shard(s, out, max_side))
                bar.advance(task)
            return results
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor, as_completed

        # spawn, not fork: pyarrow and h5py keep thread pools and locks a fork would copy
        ctx = mp.get_context("spawn")
        with ProcessPoolExecutor(max_workers=min(workers, len(pending)), mp_context=ctx) as pool:
            futures = [pool.submit(run_source_shard, s, out, max_side) for s in pending]
            for fut in as_completed(futures):
                results.append(fut.result())
                bar.advance(task)
    return results


def format_summary(report: PrepareReport) -> str:
    """A few lines for people: counts, skip reasons, thin-class pixel loss from resizing."""
    m = report.manifest
    lines = []
    if report.up_to_date:
        lines.append(f"{report.out}: up to date with {m.source} (max side {m.resize.max_side}); "
                     "nothing to do")
    else:
        lines.append(f"{report.out}: wrote {report.shards_written} shard(s), reused "
                     f"{report.shards_reused} finished earlier")
    lines += report.notes
    lines.append(f"samples: {len(m.samples)} in {len(m.shards)} shard(s); "
                 f"skipped rows: {len(m.skipped)}")
    reasons = Counter(s.reason.split(" (")[0] for s in m.skipped)
    for reason, n in reasons.most_common(8):
        lines.append(f"  skipped {n}× {reason}")
    resized = sum(1 for s in m.samples if (s.height, s.width) != (s.orig_height, s.orig_width))
    if not m.samples:
        return "\n".join(lines)
    lines.append(f"resized to a long side of at most {m.resize.max_side}: {resized} image(s)")
    if resized:
        before = np.array([s.class_pixels_orig for s in m.samples], float)
        after = np.array([s.class_pixels for s in m.samples], float)
        share_b = before.sum(0) / before.sum()
        share_a = after.sum(0) / after.sum()
        for name in THIN_CLASSES:
            c = CLASS_NAMES.index(name)
            if share_b[c] == 0:
                continue
            vanished = int(((before[:, c] > 0) & (after[:, c] == 0)).sum())
            change = 100 * (share_a[c] / share_b[c] - 1)
            lines.append(f"  {name:8s} pixel share {100 * share_b[c]:.4f}% → "
                         f"{100 * share_a[c]:.4f}% ({change:+.1f}%), gone from {vanished} of "
                         f"{int((before[:, c] > 0).sum())} image(s)")
    return "\n".join(lines)
