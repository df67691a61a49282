"""jobs.distributed: detection, and a real two-process gloo group set up as SLURM would."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from jobs import distributed as jd

_LAUNCH_VARS = (
    "RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "SLURM_PROCID",
    "SLURM_LOCALID", "SLURM_NTASKS", "SLURM_JOB_ID", "SLURM_JOB_NODELIST", "SLURM_JOB_NUM_NODES",
    "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID",
)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for var in _LAUNCH_VARS:
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


def test_single_process_defaults(clean_env) -> None:
    info = jd.init_distributed()
    assert (info.rank, info.local_rank, info.world_size) == (0, 0, 1)
    assert info.is_main and not info.distributed and info.source == "single"
    assert info.device == torch.device("cpu")
    t = torch.tensor([2.0, 3.0])
    assert jd.all_reduce_sum(t) is t and t.tolist() == [2.0, 3.0]
    assert jd.any_rank(True) and not jd.any_rank(False)
    assert jd.broadcast_object({"a": 1}) == {"a": 1}
    jd.barrier()
    jd.cleanup()


def test_slurm_detection(clean_env) -> None:
    clean_env.setenv("SLURM_JOB_ID", "777")
    clean_env.setenv("SLURM_PROCID", "5")
    clean_env.setenv("SLURM_LOCALID", "1")
    clean_env.setenv("SLURM_NTASKS", "8")
    clean_env.setenv("SLURM_JOB_NODELIST", "gpu[07-08,11],cpu3")
    info = jd.detect()
    assert (info.rank, info.local_rank, info.world_size, info.source) == (5, 1, 8, "slurm")
    assert not info.is_main and info.distributed
    assert info.master_addr == "gpu07"
    # same port on every task and every restart of the job: submitit's formula on the job id
    assert info.master_port == random.Random("777").randint(20000, 60000)
    assert 20000 <= info.master_port <= 60000
    clean_env.setenv("SLURM_ARRAY_JOB_ID", "700")
    clean_env.setenv("SLURM_ARRAY_TASK_ID", "2")
    assert jd.detect().master_port == random.Random("700_2").randint(20000, 60000)
    clean_env.setenv("MASTER_PORT", "23456")
    assert jd.detect().master_port == 23456
    clean_env.setenv("SLURM_JOB_NODELIST", "node1")
    assert jd.detect().master_addr == "127.0.0.1"  # one node: stay on loopback


def test_torchrun_variables_win(clean_env) -> None:
    clean_env.setenv("SLURM_JOB_ID", "777")
    clean_env.setenv("SLURM_PROCID", "0")
    clean_env.setenv("SLURM_NTASKS", "1")
    for k, v in {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1",
                 "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29511"}.items():
        clean_env.setenv(k, v)
    info = jd.detect()
    assert (info.rank, info.local_rank, info.world_size) == (3, 1, 4)
    assert (info.master_addr, info.master_port, info.source) == ("10.0.0.1", 29511, "torchrun")


def _worker(index: int, out_dir: str, job_id: str) -> None:
    # What srun gives each task of a one-node, two-task job.
    for var in _LAUNCH_VARS:
        os.environ.pop(var, None)
    os.environ.update(
        SLURM_JOB_ID=job_id, SLURM_PROCID=str(index), SLURM_LOCALID=str(index),
        SLURM_NTASKS="2", SLURM_JOB_NODELIST="localhost", SLURM_JOB_NUM_NODES="1",
    )
    torch.set_num_threads(1)
    info = jd.init_distributed(timeout_s=60)
    again = jd.init_distributed()  # idempotent
    total = jd.all_reduce_sum(torch.tensor([float(info.rank + 1), 10.0 * (info.rank + 1)]))
    obj = jd.broadcast_object({"from": info.rank, "n": [1, 2]} if info.is_main else None)
    stop = jd.any_rank(info.rank == 1)
    keep_going = jd.any_rank(False)
    jd.barrier()
    result = {
        "rank": info.rank, "world": info.world_size, "backend": info.backend,
        "again": again.backend, "sum": total.tolist(), "obj": obj, "stop": stop,
        "keep_going": keep_going, "is_dist": jd.is_distributed(),
    }
    jd.cleanup()
    Path(out_dir, f"rank{info.rank}.json").write_text(json.dumps(result))


def test_two_process_gloo_from_slurm_env(tmp_path: Path) -> None:
    job_id = str(random.randint(10**6, 10**7))  # a fresh port per run of the test
    mp.spawn(_worker, args=(str(tmp_path), job_id), nprocs=2, join=True)
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for r, res in enumerate(results):
        assert res["rank"] == r and res["world"] == 2 and res["is_dist"]
        assert res["backend"] == "gloo" and res["again"] == "gloo"
        assert res["sum"] == [3.0, 30.0]  # 1 + 2 and 10 + 20
        assert res["obj"] == {"from": 0, "n": [1, 2]}
        assert res["stop"] is True and res["keep_going"] is False
