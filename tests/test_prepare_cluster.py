"""`hcli data prepare --cluster`: an array task per source shard and a merge, on the real SLURM."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.conftest import run_cli

pytestmark = pytest.mark.slurm


def test_cluster_prepare_equals_local_prepare(slurm_env, tmp_path: Path):
    raw = tmp_path / "raw"
    run_cli(["data", "synth", "--out", str(raw), "--n", "12", "--seed", "3", "--size", "96",
             "--shards", "3"])
    run_cli(["data", "prepare", "--source", str(raw), "--out", str(tmp_path / "local")])
    done = run_cli(["data", "prepare", "--source", str(raw), "--out", str(tmp_path / "slurm"),
                    "--cluster", "--mem-gb", "1", "--time-min", "5"], env=slurm_env.env)
    merge = re.search(r"merge job (\d+)", done.stdout).group(1)
    assert "3 source shard(s)" in done.stdout
    slurm_env.wait_for_state(merge, {"COMPLETED"}, timeout=180)
    manifest = json.loads((tmp_path / "slurm" / "manifest.json").read_text())
    local = json.loads((tmp_path / "local" / "manifest.json").read_text())
    assert [s["sha256"] for s in manifest["shards"]] == [s["sha256"] for s in local["shards"]]
    assert manifest["samples"] == local["samples"]
    # Everything is done: a second submission only merges again.
    again = run_cli(["data", "prepare", "--source", str(raw), "--out", str(tmp_path / "slurm"),
                     "--cluster", "--mem-gb", "1", "--time-min", "5"], env=slurm_env.env)
    assert "0 source shard(s) to prepare, 3 already done" in again.stdout
