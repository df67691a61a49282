"""Local execution: a background process that outlives the terminal, like a cluster job."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

__all__ = ["start_background"]


def start_background(run_dirs: list[Path], log_dir: Path) -> str:
    """Run the runs one after another in a detached process; returns `local-<pid>`."""
    log_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.pop("HCLI_JOB_ID", None)
    with open(log_dir / "launcher.log", "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "jobs.entry", *map(str, run_dirs)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: closing the terminal does not kill it
            env=env, cwd=str(run_dirs[0].parent),
        )
    return f"local-{proc.pid}"
