"""Shared fixtures: a small prepared synthetic dataset, a tiny spec, CLI runners."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.no_slurm import path_without_slurm

REPO = Path(__file__).resolve().parents[1]
HCLI = [sys.executable, "-m", "hcli"]

# A model that trains in well under a second per step on one CPU core.
TINY = [
    "model.backbone=convnext",
    "model.encoder_kwargs={depths: [1, 1, 1, 1], dims: [16, 32, 64, 128]}",
    "model.decoder_channels=16",
    "data.crop_size=64",
    "data.num_workers=0",
    "data.k=3",
    "train.batch_size=2",
    "train.steps=12",
    "train.warmup_steps=2",
    "train.val_every_steps=6",
    "train.checkpoint_every_steps=4",
    "train.log_every_steps=2",
    "train.device=cpu",
    "train.threads=1",
    "train.overlays=1",
]


@pytest.fixture(scope="session")
def synth_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """36 synthetic images (96 px), prepared to HDF5: the dataset most job tests train on."""
    base = tmp_path_factory.mktemp("synth")
    run_cli(
        ["data", "synth", "--out", str(base / "raw"), "--n", "36", "--seed", "1", "--size", "96"]
    )
    run_cli(["data", "prepare", "--source", str(base / "raw"), "--out", str(base / "prepared")])
    return base / "prepared"


@pytest.fixture(scope="session")
def no_slurm_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """`env` for `run_cli` with no SLURM command on the PATH, as on a laptop."""
    return {"PATH": path_without_slurm(tmp_path_factory.mktemp("no-slurm-path"))}


@pytest.fixture
def no_slurm_path(no_slurm_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> str:
    """This process's PATH without SLURM commands, for the test's duration."""
    monkeypatch.setenv("PATH", no_slurm_env["PATH"])
    return no_slurm_env["PATH"]


@pytest.fixture
def runs_dir(tmp_path: Path) -> Path:
    return tmp_path / "runs"


def run_cli(
    args: list[str], *, env: dict[str, str] | None = None, check: bool = True, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """`hcli ARGS` in a subprocess (what a user runs: exit code, stdout, stderr)."""
    full_env = dict(os.environ, **(env or {}))
    full_env.pop("HCLI_DEBUG", None) if env is None or "HCLI_DEBUG" not in env else None
    done = subprocess.run(
        [*HCLI, *args], capture_output=True, text=True, env=full_env, timeout=timeout, cwd=REPO
    )
    if check and done.returncode != 0:
        raise AssertionError(f"hcli {' '.join(args)} exited {done.returncode}:\n{done.stderr}")
    return done


def tiny_overrides(data: Path, *extra: str) -> list[str]:
    args = []
    for item in [*TINY, f"data.root={data}", *extra]:
        args += ["-o", item]
    return args


from tests.slurm_cluster import slurm_env  # noqa: E402,F401  (session fixture for @pytest.mark.slurm tests)
