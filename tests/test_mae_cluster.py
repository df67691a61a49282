"""MAE → multiclass as one `--after` chain on the real local SLURM: the fine-tuning run waits for
the pretraining run (afterok), then starts from its encoder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.conftest import run_cli, tiny_overrides
from tests.slurm_cluster import SlurmCluster, slurm_env, wait_for_state  # noqa: F401

pytestmark = pytest.mark.slurm

SLURM = ("slurm.cpus_per_task=1", "slurm.mem_gb=2", "slurm.time_min=5", "slurm.signal_delay_s=30")


def _submit(kind: str, runs: Path, data: Path, *extra: str, args: tuple[str, ...] = ()
            ) -> tuple[Path, str]:
    done = run_cli(["submit", kind, "--cluster", "--json", "--runs-dir", str(runs), *args,
                    *tiny_overrides(data, *extra, *SLURM)])
    (out,) = json.loads(done.stdout)
    assert out["action"] == "submitted", out
    return Path(out["run_dir"]), out["job_id"]


def test_mae_then_multiclass_chain(slurm_env: SlurmCluster, synth_data: Path,  # noqa: F811
                                   tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    mae, mae_job = _submit("mae", runs, synth_data, "mae.patch_size=16", "train.steps=6",
                           "train.val_every_steps=3")
    tuned, tuned_job = _submit("multiclass", runs, synth_data, "train.steps=2",
                               "train.warmup_steps=1", f"model.init_from={mae.name}",
                               args=("--after", mae.name))
    shown = slurm_env.run("scontrol", "show", "job", "-o", tuned_job).stdout
    assert f"afterok:{mae_job}" in shown, shown
    wait_for_state(tuned_job, {"COMPLETED"}, timeout=400)
    assert json.loads((mae / "state.json").read_text())["state"] == "COMPLETED"
    prov = json.loads((tuned / "provenance.json").read_text())
    assert prov["init_from"] == [mae.name]
    assert {s["run_id"] for s in prov["seen"]} == {tuned.name, mae.name}
    log = "".join(p.read_text() for p in (tuned / "logs").glob("*.out"))
    assert "encoder initialised from" in log and "encoder.pt" in log
    enc = torch.load(mae / "encoder.pt", weights_only=True)
    assert enc and all(k.startswith("encoder.") for k in enc)
