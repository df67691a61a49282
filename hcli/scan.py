"""The run folders under a runs root, and what their small JSON files say.

The one scanner of run folders: `hcli status`, `hcli collect`'s run list and `hcli.runs`
(`find_run`, `iter_runs`: resume, cancel, logs) list them here, and the run states are named
here once. Imports neither pydantic, typer nor torch: `hcli status` reads through it on its fast
path.

`scan` keeps an index beside the run folders (`<runs root>/.cache/index.json`): per run, one flat
row: the signature of its `state.json` and `progress.json` (size and mtime in ns; -1 and 0 when
absent) followed by what status shows of them (`SUMMARY_KEYS`). A row is used only while both
signatures are unchanged, so a run resumed, cancelled, requeued or edited is read again at the
next call. The signature covers exactly the files a row is made of (`summarize` reads nothing
else; tests/test_index.py checks it): `results.json` is not read by status, and collect reads it
afresh from the run folder. A finished run's files never change, which is why the index pays: two
`stat` calls instead of opening and parsing two files. The run folder's own mtime would be one
call (at 5,000 runs 13 ms against 28 ms, benchmarks/bench_cli.py), and every writer in hcli and
jobs replaces these files by rename, which does change it; but a file rewritten in place (an
editor, a script's `write_text`) leaves the folder's mtime alone, so it is not a sound signal.

Filesystem timestamps are coarse (a clock tick, 1-10 ms; seconds on some NFS servers), so a file
rewritten in place within the same tick at the same size keeps its signature; rows whose files
changed less than `_SETTLE_NS` before the scan are therefore used but not stored (git's "racy
clean" rule). The index is a cache: deleting it, or finding it corrupt, costs one full read.
It is written atomically (temp file, rename) and only when a row changed; two writers racing
leave one of two valid indexes, each of whose rows is checked again on use. Flat rows decode
a fifth faster than the former nested ones (8 against 10 ms for 5,000 runs).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

from hcli.fsutil import read_json

__all__ = [
    "ACTIVE_STATES",
    "ENDED_STATES",
    "FIELD",
    "INDEX",
    "STATES",
    "SUMMARY_KEYS",
    "read_json",
    "run_folders",
    "WATCHED",
    "scan",
    "scan_rows",
    "summarize",
]

# What a run's state.json may say. Active: the run folder expects a job to move it on.
ACTIVE_STATES = ("PENDING", "RUNNING", "REQUEUED")
# BLOCKED: a pipeline run that never started because a run it waits for failed or was cancelled.
ENDED_STATES = ("COMPLETED", "FAILED", "CANCELLED", "BLOCKED")
STATES = ACTIVE_STATES + ENDED_STATES

# Relative to the runs root; `.cache` is no run folder (names starting with a dot are skipped).
INDEX = os.path.join(".cache", "index.json")
_VERSION = 4  # 4: flat rows, signature of state.json and progress.json only
# The files a summary is made of, in signature order: state.json first (a run has one).
WATCHED = ("state.json", "progress.json")
_SETTLE_NS = 2_000_000_000

# What status needs of a run, from state.json and progress.json (hcli.contract_keys names the
# same fields; tests/test_scan.py holds them within the contract). `changed_at`: when state.json
# last changed (its `updated_at`, else its mtime), in epoch seconds: when an ended run ended.
# A filter on another recorded field (a pipeline's name, say) adds the field here, to
# `summarize`, and bumps _VERSION; `hcli.status.select_rows` then reads it by `FIELD[...]`.
SUMMARY_KEYS = (
    "run_id", "kind", "backbone", "name", "state", "restarts", "message", "job_id", "pid",
    "host", "changed_at", "step", "total_steps", "latest_metric", "eta_s", "heartbeat", "stage",
)
# Position of each field in a row's values (`scan_rows`), for filters that build no dict.
FIELD = {key: i for i, key in enumerate(SUMMARY_KEYS)}

_SIG_LEN = 2 * len(WATCHED)
_ROW_LEN = _SIG_LEN + len(SUMMARY_KEYS)
Values = list[Any]


def run_folders(root: str | os.PathLike[str]) -> list[str]:
    """Names of the folders directly under `root` that may be runs (not hidden), sorted."""
    try:
        with os.scandir(root) as entries:
            names = [e.name for e in entries if e.name[:1] != "." and e.is_dir()]
    except (FileNotFoundError, NotADirectoryError):
        return []
    names.sort()
    return names


def _epoch(iso: Any) -> float | None:
    try:
        return datetime.fromisoformat(iso).timestamp() if isinstance(iso, str) else None
    except ValueError:
        return None


def summarize(state: dict[str, Any], progress: dict[str, Any],
              state_mtime: float | None = None) -> dict[str, Any]:
    """What status shows of a run, from its state.json and progress.json as plain dicts."""
    jobs = state.get("jobs") or [{}]
    last = jobs[-1] if isinstance(jobs[-1], dict) else {}
    latest = progress.get("latest")
    latest = latest if isinstance(latest, dict) else {}
    return {
        "run_id": state.get("run_id"),
        "kind": state.get("kind"),
        "backbone": state.get("backbone"),
        "name": state.get("name"),
        "state": state.get("state", "UNKNOWN"),
        "restarts": state.get("restarts", 0),
        "message": state.get("message"),
        "job_id": last.get("job_id"),
        "pid": state.get("pid"),
        "host": state.get("host"),
        "changed_at": _epoch(state.get("updated_at")) or state_mtime,
        "step": progress.get("step"),
        "total_steps": progress.get("total_steps"),
        # A pretraining run (mae) validates by its reconstruction loss, shown as "loss 0.123".
        "latest_metric": latest.get("val_miou", latest.get("miou", latest.get("val_loss"))),
        "eta_s": progress.get("eta_s"),
        "heartbeat": progress.get("heartbeat"),
        "stage": _stage(progress.get("curriculum")),
    }


def _stage(cur: Any) -> str | None:
    """A curriculum run's stage as status shows it, "coarse 2/3" (contract_keys.CURRICULUM_KEYS)."""
    try:
        return f"{cur['stage']} {cur['number']}/{len(cur['stages'])}"
    except (KeyError, TypeError):
        return None


class _RootStat:
    """`stat` of paths relative to the runs root, through a descriptor of the root where the
    platform allows (the kernel then walks two path components instead of the whole path: a
    tenth of the stat time at 5,000 runs); else of the joined path."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.fd: int | None = None

    def __enter__(self) -> Callable[[str], os.stat_result]:
        if os.stat in os.supports_dir_fd:
            try:
                self.fd = os.open(self.root, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
            except OSError:
                self.fd = None
        if self.fd is not None:
            return partial(os.stat, dir_fd=self.fd)
        prefix = f"{self.root}{os.sep}"
        return lambda rel: os.stat(prefix + rel)

    def __exit__(self, *exc: object) -> None:
        if self.fd is not None:
            os.close(self.fd)


def _load_index(root: str) -> dict[str, list[Any]]:
    doc = read_json(os.path.join(root, INDEX))
    if (
        not isinstance(doc, dict)
        or doc.get("version") != _VERSION
        or doc.get("fields") != list(SUMMARY_KEYS)
        or doc.get("watched") != list(WATCHED)
        or not isinstance(doc.get("runs"), dict)
    ):
        return {}  # missing, corrupt or from another version: rebuilt by this call
    return doc["runs"]


def _write_index(root: str, rows: dict[str, list[Any]]) -> None:
    import contextlib
    import json

    from hcli.fsutil import atomic_write_bytes

    doc = {"version": _VERSION, "fields": list(SUMMARY_KEYS), "watched": list(WATCHED),
           "runs": rows}
    data = json.dumps(doc, separators=(",", ":")).encode()
    # A cache: a read-only study folder, or a full disk, must not break status.
    with contextlib.suppress(OSError):
        atomic_write_bytes(Path(root, INDEX), data, durable=False)


def _read(folder: str, state_mtime_ns: int, progress_size: int) -> Values | None:
    """A run's summary values from its files; None when state.json is no readable object."""
    state = read_json(f"{folder}/{WATCHED[0]}")
    if not isinstance(state, dict):
        return None
    progress = read_json(f"{folder}/{WATCHED[1]}") if progress_size >= 0 else None
    summary = summarize(state, progress if isinstance(progress, dict) else {}, state_mtime_ns / 1e9)
    return [summary[k] for k in SUMMARY_KEYS]


def scan_rows(root: str | os.PathLike[str], *, index: bool = True) -> list[tuple[str, Values]]:
    """(folder name, summary values in `SUMMARY_KEYS` order) of every run folder under `root`
    with a readable state.json, sorted by name; through the index unless `index=False` (then
    nothing is read from it or written)."""
    root = os.fspath(root)
    names = run_folders(root)
    cached = _load_index(root) if index and names else {}
    settled = time.time_ns() - _SETTLE_NS
    keep: dict[str, list[Any]] = {}
    changed = False
    found: list[tuple[str, Values]] = []
    state_name, progress_name = WATCHED
    with _RootStat(root) as stat:
        for name in names:
            # Signature before content: a file replaced in between leaves an old signature
            # beside new content, which the next call reads again; never the other way round.
            try:
                st = stat(f"{name}/{state_name}")
            except OSError:
                continue  # not a run folder (yet): a run is created whole, then renamed in
            try:
                pt = stat(f"{name}/{progress_name}")
                p_size, p_mtime = pt.st_size, pt.st_mtime_ns
            except OSError:
                p_size, p_mtime = -1, 0
            s_size, s_mtime = st.st_size, st.st_mtime_ns
            row = cached.get(name)
            if (
                type(row) is list and len(row) == _ROW_LEN
                and row[0] == s_size and row[1] == s_mtime
                and row[2] == p_size and row[3] == p_mtime
            ):
                keep[name] = row
                found.append((name, row[_SIG_LEN:]))
                continue
            changed = changed or row is not None
            values = _read(f"{root}{os.sep}{name}", s_mtime, p_size)
            if values is None:
                continue  # unreadable or half-written: no run to show until it is whole
            if index and s_mtime < settled and p_mtime < settled:
                keep[name] = [s_size, s_mtime, p_size, p_mtime, *values]
                changed = True
            found.append((name, values))
    if index and (changed or len(keep) != len(cached)):
        _write_index(root, keep)
    return found


def scan(root: str | os.PathLike[str], *, index: bool = True) -> list[tuple[str, dict[str, Any]]]:
    """(folder, summary) of every run folder under `root` with a readable state.json, sorted by
    name: `scan_rows` with each folder's path and each summary as a dict."""
    base = os.fspath(root)
    return [(f"{base}{os.sep}{name}", dict(zip(SUMMARY_KEYS, values, strict=True)))
            for name, values in scan_rows(root, index=index)]
