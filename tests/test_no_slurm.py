"""The laptop case: everything but a real submission works with no SLURM command on the PATH."""

from __future__ import annotations

import re
import shutil
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from hcli.errors import UserError
from hcli.launch._slurm import make_executor, render_sbatch
from hcli.spec import load_spec
from tests.conftest import REPO, run_cli
from tests.no_slurm import SLURM_COMMANDS, path_without_slurm

GOLDEN = Path(__file__).parent / "golden" / "dry_run_multiclass_swin.sbatch"
GOLDEN_OVERRIDES = ["slurm.partition=gpu", "slurm.gpus_per_node=1", "data.root=/data/artefact"]


def test_path_without_slurm_keeps_everything_else(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("sbatch", "srun", "squeue", "python3", "git"):
        (bin_dir / name).write_text("#!/bin/sh\n")
        (bin_dir / name).chmod(0o755)
    other = tmp_path / "other"
    other.mkdir()
    path = path_without_slurm(tmp_path / "shadow", f"{bin_dir}:{other}")
    assert path.split(":")[1] == str(other)  # a directory without SLURM stays as it is
    assert shutil.which("git", path=path) and shutil.which("python3", path=path)
    assert not any(shutil.which(c, path=path) for c in SLURM_COMMANDS)


def test_render_sbatch_without_slurm_matches_golden(tmp_path: Path, no_slurm_path: str) -> None:
    assert shutil.which("srun") is None and shutil.which("sbatch") is None
    run_id = re.search(r"--job-name=(\S+)", GOLDEN.read_text()).group(1)
    runs = tmp_path / "runs"
    spec = load_spec(kind="multiclass", flags={"model.backbone": "swin"},
                     overrides=GOLDEN_OVERRIDES)
    text = render_sbatch(spec, runs / run_id / "logs", job_name=run_id, runs_root=runs)
    assert text.replace(str(runs), "RUNS").replace(sys.executable, "PYTHON") == GOLDEN.read_text()
    assert not runs.exists()  # rendering writes nothing


def test_dependency_renders_without_slurm(tmp_path: Path, no_slurm_path: str) -> None:
    spec = load_spec(kind="probe")
    text = render_sbatch(spec, tmp_path / "logs", job_name="probe-x", runs_root=tmp_path,
                         dependency="afterok:123:456")
    assert "#SBATCH --dependency=afterok:123:456" in text.splitlines()


def test_real_submission_needs_sbatch_and_says_so(tmp_path: Path, no_slurm_path: str) -> None:
    with pytest.raises(UserError, match=r"needs sbatch and srun on the PATH.*--local"):
        make_executor(load_spec(kind="probe"), tmp_path, job_name="probe-x", runs_root=tmp_path)


def test_cluster_submit_without_sbatch_is_one_line_exit_2(runs_dir, no_slurm_env) -> None:
    done = run_cli(["submit", "probe", "--cluster", "--runs-dir", str(runs_dir)],
                   env=no_slurm_env, check=False)
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and "sbatch" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert not runs_dir.exists() or not any(runs_dir.iterdir())


def test_submitit_pin_matches_the_compat_module() -> None:
    from importlib.metadata import version

    from hcli._submitit_compat import SUBMITIT_READ_FROM

    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    pin = next(Requirement(d) for d in deps if Requirement(d).name == "submitit")
    read = Version(SUBMITIT_READ_FROM)
    assert pin.specifier.contains(str(read)), f"pyproject {pin} excludes {read}"
    next_minor = f"{read.major}.{read.minor + 1}.0"
    assert not pin.specifier.contains(next_minor), f"pyproject {pin} admits {next_minor}"
    assert pin.specifier.contains(version("submitit")), "installed submitit outside the pin"
    assert f"submitit {SUBMITIT_READ_FROM}" in sys.modules["hcli._submitit_compat"].__doc__
