"""Run folders: where runs live, how one is created (atomically, once), and its `state.json`.

The layout is a contract documented in docs/run-folder.md; `status`, `collect` and the jobs read it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hcli.errors import RunError
from hcli.fsutil import atomic_write_json, atomic_write_text, read_json
from hcli.runs_dir import resolve_runs_dir
from hcli.scan import ACTIVE_STATES, STATES, run_folders

# Imported where used: pydantic models, yaml and filelock cost ~45 ms, which the light commands
# (`hcli logs`, `hcli cancel`) need not pay (benchmarks/bench_cli.py).
if TYPE_CHECKING:
    from filelock import FileLock

    from hcli.spec import Spec

__all__ = [
    "ACTIVE_STATES",
    "STATES",
    "Run",
    "create_run",
    "find_run",
    "iter_runs",
    "now_iso",
    "resolve_runs_dir",
    "run_lock",
    "snapshot_code",
]

REPO_ROOT = Path(__file__).resolve().parents[1]
_SNAPSHOT_DIRS = ("hcli", "jobs", "configs")


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def run_lock(root: Path, run_id: str) -> FileLock:
    """One lock per run id, beside the run folders (a run folder may not exist yet)."""
    from filelock import FileLock

    locks = root / ".locks"
    locks.mkdir(parents=True, exist_ok=True)
    return FileLock(str(locks / f"{run_id}.lock"), timeout=60)


@dataclass(frozen=True)
class Run:
    """A run folder. Cheap to construct; every accessor reads from disk."""

    path: Path

    @property
    def run_id(self) -> str:
        return self.path.name

    @property
    def spec_path(self) -> Path:
        return self.path / "spec.yaml"

    @property
    def state_path(self) -> Path:
        return self.path / "state.json"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def logs(self) -> Path:
        return self.path / "logs"

    def spec(self) -> Spec:
        from hcli.spec import spec_from_yaml_file

        return spec_from_yaml_file(self.spec_path)

    def state(self) -> dict[str, Any]:
        state = read_json(self.state_path)
        if not isinstance(state, dict):
            raise RunError(f"{self.state_path} is missing or unreadable; the run folder is damaged")
        return state

    def progress(self) -> dict[str, Any]:
        return read_json(self.path / "progress.json", {}) or {}

    def results(self) -> dict[str, Any] | None:
        return read_json(self.path / "results.json")

    def update_state(self, **changes: Any) -> dict[str, Any]:
        """Read-modify-write of state.json; callers that race hold `run_lock`."""
        state = self.state()
        state.update(changes)
        state["updated_at"] = now_iso()
        atomic_write_json(self.state_path, state)
        return state

    def add_job(self, job_id: str, executor: str, **extra: Any) -> dict[str, Any]:
        from hcli.contract import JobRecord, dump

        state = self.state()
        record = JobRecord.new(job_id, executor, state.get("attempt", 1), **extra)
        state.setdefault("jobs", []).append(dump(record))
        state["executor"] = executor
        state["updated_at"] = now_iso()
        atomic_write_json(self.state_path, state)
        return state

    @property
    def job_id(self) -> str | None:
        jobs = self.state().get("jobs") or []
        return jobs[-1]["job_id"] if jobs else None


def snapshot_code(dest: Path) -> None:
    """Copy the tracked code so a queued job runs what was submitted, not the working tree."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard", *_SNAPSHOT_DIRS],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout.split()
        files = [REPO_ROOT / f for f in listed]
    except (OSError, subprocess.SubprocessError):
        # Not a git checkout (an installed wheel): copy the package folders as they are.
        files = [
            p
            for d in _SNAPSHOT_DIRS
            for p in (REPO_ROOT / d).rglob("*")
            if p.is_file() and "__pycache__" not in p.parts
        ]
    for src in files:
        if not src.is_file():
            continue
        target = dest / src.relative_to(REPO_ROOT)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target)


def create_run(root: Path, run_id: str, spec: Spec, *, snapshot: bool = True) -> Run:
    """Create a run folder completely or not at all (built aside, then renamed into place)."""
    from hcli.spec import spec_to_yaml

    root.mkdir(parents=True, exist_ok=True)
    final = root / run_id
    if final.exists():
        raise RunError(f"run folder {final} already exists")
    tmp = root / f".tmp-{run_id}-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir()
        (tmp / "logs").mkdir()
        (tmp / "checkpoints").mkdir()
        atomic_write_text(tmp / "spec.yaml", spec_to_yaml(spec))
        stamp = now_iso()
        atomic_write_json(
            tmp / "state.json",
            {
                "run_id": run_id,
                "kind": spec.kind,
                "backbone": spec.backbone_short,
                "name": spec.name,
                "state": "PENDING",
                "attempt": 1,
                "restarts": 0,
                "executor": None,
                "jobs": [],
                "requeues": [],
                "created_at": stamp,
                "updated_at": stamp,
                "message": None,
            },
        )
        if snapshot:
            snapshot_code(tmp / "code")
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Run(final)


def find_run(root: Path, ref: str) -> Run:
    """A run by id, unique id prefix, or path."""
    as_path = Path(ref)
    if (as_path / "state.json").is_file():
        return Run(as_path.resolve())
    if (root / ref / "state.json").is_file():
        return Run(root / ref)
    # Names first, state.json only for the few that match: one listing of the runs root.
    matches = [
        Run(root / name) for name in run_folders(root)
        if (name.startswith(ref) or name.endswith(ref)) and (root / name / "state.json").is_file()
    ]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise RunError(f"no run {ref!r} under {root}; `hcli status --runs-dir {root}` lists runs")
    raise RunError(f"{ref!r} matches {len(matches)} runs; give more of the run id")


def iter_runs(root: Path) -> Iterator[Run]:
    """Every run folder (one with a state.json) under `root`, by name (`hcli.scan` lists them)."""
    for name in run_folders(root):
        if os.path.isfile(os.path.join(root, name, "state.json")):
            yield Run(root / name)
