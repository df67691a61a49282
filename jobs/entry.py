"""The job entry point handed to submitit or a local process: small, picklable, torch-free.

Kept deliberately tiny and stable: a requeued job unpickles this class from whatever checkout the
node sees, then switches to the run's code snapshot (`RUN/code`) before importing anything else,
so editing the checkout never changes a queued or requeued job (submitit's tip; dora git_save).
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any

__all__ = ["JobTarget", "main"]

_OWN_PACKAGES = ("hcli", "jobs")


class JobTarget:
    """`JobTarget(run_dir)()` runs the run's job; `checkpoint()` is submitit's requeue hook."""

    def __init__(self, run_dir: str | Path, *, use_snapshot: bool = True) -> None:
        self.run_dir = str(run_dir)
        # In-process (--foreground) runs keep the caller's modules: swapping them would give the
        # job's exceptions classes the CLI edge no longer recognises.
        self.use_snapshot = use_snapshot

    def __call__(self) -> Any:
        if self.use_snapshot:
            _use_snapshot(Path(self.run_dir) / "code")
        runtime = importlib.import_module("jobs.runtime")
        return runtime.run_job(Path(self.run_dir))

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        # Called by submitit when it requeues. The job has already saved at a step boundary
        # (jobs.runtime hands the signal on only after saving), so this only says what to rerun.
        import submitit

        return submitit.helpers.DelayedSubmission(JobTarget(self.run_dir))

    def __repr__(self) -> str:
        return f"JobTarget({self.run_dir!r})"


def _use_snapshot(code: Path) -> None:
    if not code.is_dir() or (sys.path and sys.path[0] == str(code)):
        return
    sys.path.insert(0, str(code))
    for name in list(sys.modules):
        if name.split(".")[0] in _OWN_PACKAGES and name != __name__:
            del sys.modules[name]
    importlib.invalidate_caches()


def main(argv: list[str] | None = None) -> None:
    """`python -m jobs.entry RUN_DIR [RUN_DIR ...]`: local background runs, one after another."""
    args = sys.argv[1:] if argv is None else argv
    failed = 0
    for run_dir in args:
        _redirect_output(Path(run_dir) / "logs")
        try:
            JobTarget(run_dir)()
        except Exception:  # the run folder records the failure; go on to the next run
            import traceback

            traceback.print_exc()
            failed += 1
    raise SystemExit(1 if failed else 0)


def _redirect_output(log_dir: Path) -> None:
    """Each run of a local chain writes its own logs/job.out and job.err, as a SLURM job would."""
    import os

    log_dir.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    for name, fd in (("job.out", 1), ("job.err", 2)):
        target = os.open(log_dir / name, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(target, fd)
        os.close(target)


if __name__ == "__main__":
    main()
