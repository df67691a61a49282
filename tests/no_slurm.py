"""A PATH on which no SLURM command resolves: the laptop case, on a machine that has SLURM.

Debian installs sbatch, srun, squeue ... into /usr/bin beside everything else, so dropping that
directory from PATH would drop python, git and bash too. Instead each PATH directory that holds a
SLURM command is replaced by a folder of symlinks to all its other entries.

Used by the tests (fixture `no_slurm_env` in tests/conftest.py) and by .ci/run, which runs the
fast tests this way before it installs SLURM:

    PATH="$(python3 tests/no_slurm.py /tmp/shadow)" make test-fast
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

__all__ = ["SLURM_COMMANDS", "path_without_slurm"]

# Every client command of SLURM 22.05 (Debian's slurm-client) and the daemons.
SLURM_COMMANDS = frozenset({
    "sacct", "sacctmgr", "salloc", "sattach", "sbatch", "sbcast", "scancel", "scontrol",
    "scrontab", "sdiag", "sh5util", "sinfo", "sprio", "squeue", "sreport", "srun", "sshare",
    "sstat", "strigger", "sview", "slurmctld", "slurmd", "slurmdbd", "slurmstepd",
})


def path_without_slurm(shadow: Path, path: str | None = None) -> str:
    """`path` (default $PATH) with every directory holding a SLURM command replaced by a folder
    under `shadow` that links to the rest of that directory. Raises if one still resolves."""
    dirs = (path if path is not None else os.environ.get("PATH", "")).split(os.pathsep)
    out: list[str] = []
    for i, d in enumerate(dirs):
        entries = os.listdir(d) if d and os.path.isdir(d) else []
        if SLURM_COMMANDS.isdisjoint(entries):
            out.append(d)
            continue
        copy = shadow / f"{i:02d}"
        copy.mkdir(parents=True, exist_ok=True)
        for name in entries:
            if name not in SLURM_COMMANDS and not os.path.lexists(copy / name):
                (copy / name).symlink_to(os.path.join(d, name))
        out.append(str(copy))
    new_path = os.pathsep.join(out)
    found = sorted(c for c in SLURM_COMMANDS if shutil.which(c, path=new_path))
    if found:
        raise RuntimeError(f"SLURM commands still on the PATH: {found}")
    return new_path


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python3 tests/no_slurm.py SHADOW_DIR  (prints the new PATH)")
    print(path_without_slurm(Path(sys.argv[1])))
