"""The run folders under a runs root, and what their small JSON files say.

The one scanner of run folders: `hcli status`, `hcli collect`'s run list and `hcli.runs`
(`find_run`, `iter_runs`: resume, cancel, logs) list them here, and the run states are named
here once. Imports neither pydantic, typer nor torch: `hcli status` reads through it on its fast
path.

`scan` keeps an index beside the run folders (`<runs root>/.cache/index.json`): per run, the
signature of its `state.json`, `progress.json` and `results.json` (size and mtime in ns, -1
and 0 when absent) and a summary of what state.json and progress.json say. A row is used only while
all three signatures are unchanged, so a run resumed, cancelled, requeued or edited is read
again at the next call. A finished run's files never change, which is why the index pays: three
`stat` calls instead of opening and parsing two files (benchmarks/bench_cli.py: the run folder's
own mtime would be one call, but it misses a file rewritten in place, e.g. by an editor).

Filesystem timestamps are coarse (a clock tick, 1-10 ms; seconds on some NFS servers), so a file
rewritten in place within the same tick at the same size keeps its signature; rows whose files
changed less than `_SETTLE_NS` before the scan are therefore used but not stored (git's "racy
clean" rule). The index is a cache: deleting it, or finding it corrupt, costs one full read.
It is written atomically (temp file, rename) and only when a row changed; two writers racing
leave one of two valid indexes, each of whose rows is checked again on use.
"""

from __future__ import annotations

import os
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from hcli.fsutil import read_json

__all__ = [
    "ACTIVE_STATES",
    "ENDED_STATES",
    "INDEX",
    "STATES",
    "SUMMARY_KEYS",
    "read_json",
    "run_folders",
    "scan",
    "summarize",
]

# What a run's state.json may say. Active: the run folder expects a job to move it on.
ACTIVE_STATES = ("PENDING", "RUNNING", "REQUEUED")
ENDED_STATES = ("COMPLETED", "FAILED", "CANCELLED")
STATES = ACTIVE_STATES + ENDED_STATES

# Relative to the runs root; `.cache` is no run folder (names starting with a dot are skipped).
INDEX = os.path.join(".cache", "index.json")
_VERSION = 3  # 3: latest_metric falls back to val_loss (MAE)
_WATCHED = ("state.json", "progress.json", "results.json")
_SETTLE_NS = 2_000_000_000

# What status needs of a run, from state.json and progress.json (hcli.contract_keys names the
# same fields; tests/test_scan.py holds them within the contract). `changed_at`: when state.json
# last changed (its `updated_at`, else its mtime), in epoch seconds: when an ended run ended.
SUMMARY_KEYS = (
    "run_id", "kind", "backbone", "name", "state", "restarts", "message", "job_id", "pid",
    "host", "changed_at", "step", "total_steps", "latest_metric", "eta_s", "heartbeat",
)

_N_KEYS = len(SUMMARY_KEYS)
Signature = list[int]


def run_folders(root: str | os.PathLike[str]) -> list[str]:
    """Names of the folders directly under `root` that may be runs (not hidden), sorted."""
    try:
        with os.scandir(root) as entries:
            names = [e.name for e in entries if e.name[:1] != "." and e.is_dir()]
    except (FileNotFoundError, NotADirectoryError):
        return []
    names.sort()
    return names


def _signature(folder: str) -> Signature:
    """Size and mtime_ns of each watched file in turn, in one flat list (-1, 0 for an absent
    one), as the index stores it."""
    sig: Signature = []
    stat = os.stat
    for name in _WATCHED:
        try:
            st = stat(f"{folder}/{name}")  # f-string: os.path.join costs as much as the stat
        except OSError:
            sig += (-1, 0)
        else:
            sig += (st.st_size, st.st_mtime_ns)
    return sig


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
    }


def _load_index(root: str) -> dict[str, list[Any]]:
    doc = read_json(os.path.join(root, INDEX))
    if (
        not isinstance(doc, dict)
        or doc.get("version") != _VERSION
        or doc.get("fields") != list(SUMMARY_KEYS)
        or not isinstance(doc.get("runs"), dict)
    ):
        return {}  # missing, corrupt or from another version: rebuilt by this call
    return doc["runs"]


def _write_index(root: str, rows: dict[str, list[Any]]) -> None:
    import contextlib
    import json

    from hcli.fsutil import atomic_write_bytes

    doc = {"version": _VERSION, "fields": list(SUMMARY_KEYS), "runs": rows}
    data = json.dumps(doc, separators=(",", ":")).encode()
    # A cache: a read-only study folder, or a full disk, must not break status.
    with contextlib.suppress(OSError):
        atomic_write_bytes(Path(root, INDEX), data, durable=False)


def _matches(row: Any, sig: Signature) -> bool:
    """The index's row is whole and was taken from files with this signature."""
    return (
        type(row) is list and len(row) == 2 and row[0] == sig
        and type(row[1]) is list and len(row[1]) == _N_KEYS
    )


def scan(root: str | os.PathLike[str], *, index: bool = True) -> list[tuple[str, dict[str, Any]]]:
    """(folder, summary) of every run folder under `root` with a readable state.json, sorted by
    name; through the index unless `index=False` (then nothing is read from it or written)."""
    root = os.fspath(root)
    names = run_folders(root)
    cached = _load_index(root) if index and names else {}
    settled = time.time_ns() - _SETTLE_NS
    keep: dict[str, list[Any]] = {}
    changed = False
    found = []
    for name in names:
        folder = f"{root}{os.sep}{name}"
        # Signature before content: a file replaced in between leaves an old signature beside
        # new content, which the next call reads again; never the other way round.
        sig = _signature(folder)
        row = cached.get(name)
        if row is not None and _matches(row, sig):
            keep[name] = row
            found.append((folder, dict(zip(SUMMARY_KEYS, row[1], strict=False))))  # len checked
            continue
        changed = changed or row is not None
        state = read_json(f"{folder}/state.json") if sig[0] >= 0 else None
        if not isinstance(state, dict):
            continue  # not a run folder (yet): a run is created whole, then renamed into place
        progress = read_json(f"{folder}/progress.json") if sig[2] >= 0 else None
        summary = summarize(state, progress if isinstance(progress, dict) else {}, sig[1] / 1e9)
        if index and sig[1] < settled and sig[3] < settled and sig[5] < settled:
            keep[name] = [sig, [summary[k] for k in SUMMARY_KEYS]]
            changed = True
        found.append((folder, summary))
    if index and (changed or len(keep) != len(cached)):
        _write_index(root, keep)
    return found
