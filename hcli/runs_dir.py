"""Where the runs live. Apart from hcli.runs so that `hcli status` finds them without paying
for the rest of that module's imports (dataclasses, uuid: ~15 ms, benchmarks/bench_cli.py)."""

import os
from pathlib import Path

__all__ = ["resolve_runs_dir"]


def resolve_runs_dir(option: Path | None = None) -> Path:
    """`--runs-dir`, else `$HCLI_RUNS_DIR`, else `./runs`."""
    if option is not None:
        return Path(option).resolve()
    env = os.environ.get("HCLI_RUNS_DIR")
    return Path(env).resolve() if env else Path("runs").resolve()
