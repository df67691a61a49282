"""torch.distributed from whatever launched us: torchrun, SLURM (srun / submitit), or nothing.

`init_distributed()` reads, in this order:

1. torchrun's variables (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR/PORT``);
2. SLURM's (``SLURM_PROCID``, ``SLURM_LOCALID``, ``SLURM_NTASKS``, ``SLURM_JOB_NODELIST``), read
   through submitit's `SlurmJobEnvironment` (the class `submitit.helpers.
   TorchDistributedEnvironment` uses; that helper itself insists on running under submitit's
   executor, which a plain ``srun`` or a test is not). The master is the first host of the node
   list, parsed by submitit without calling ``scontrol show hostnames``; for a one-node job it is
   127.0.0.1 so nothing listens beyond loopback. The port is derived from the job id exactly as
   submitit does, so every task, and every requeued start, agrees on it; ``MASTER_PORT`` overrides;
3. otherwise one process (rank 0 of 1), without a process group.

Backend: NCCL when CUDA is available, gloo otherwise. Helpers are no-ops in a single process, so
the loop calls them unconditionally.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

__all__ = [
    "DistInfo",
    "detect",
    "init_distributed",
    "cleanup",
    "is_distributed",
    "all_reduce_sum",
    "average_gradients",
    "any_rank",
    "barrier",
    "broadcast_object",
]

# submitit's range and formula (helpers.TorchDistributedEnvironment._get_master_port)
_MIN_PORT, _MAX_PORT = 20000, 60000


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    master_addr: str = "127.0.0.1"
    master_port: int = 29500
    source: str = "single"  # "single" | "torchrun" | "slurm"
    backend: str | None = None  # set once a process group exists

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def device(self) -> torch.device:
        """This rank's device: its local GPU when CUDA is available, else the CPU."""
        if torch.cuda.is_available():
            return torch.device("cuda", self.local_rank % torch.cuda.device_count())
        return torch.device("cpu")


def _port_from_job_id(job_id: str) -> int:
    return random.Random(job_id).randint(_MIN_PORT, _MAX_PORT)


def detect() -> DistInfo:
    """Where this process sits, from the environment alone (no side effects)."""
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return DistInfo(
            rank=int(env["RANK"]),
            local_rank=int(env.get("LOCAL_RANK", 0)),
            world_size=int(env["WORLD_SIZE"]),
            master_addr=env.get("MASTER_ADDR", "127.0.0.1"),
            master_port=int(env.get("MASTER_PORT", 29500)),
            source="torchrun",
        )
    if "SLURM_PROCID" in env and "SLURM_JOB_ID" in env:
        from hcli._submitit_compat import SlurmJobEnvironment

        job = SlurmJobEnvironment()
        hosts = job.hostnames
        addr = "127.0.0.1" if len(set(hosts)) <= 1 else hosts[0]
        port = int(env["MASTER_PORT"]) if "MASTER_PORT" in env else _port_from_job_id(job.job_id)
        return DistInfo(
            rank=job.global_rank,
            local_rank=job.local_rank,
            world_size=job.num_tasks,
            master_addr=addr,
            master_port=port,
            source="slurm",
        )
    return DistInfo()


def init_distributed(backend: str | None = None, timeout_s: float | None = None) -> DistInfo:
    """Join the process group of this job (when there is more than one task) and say who we are.

    Also exports ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``MASTER_ADDR``/``MASTER_PORT`` so code
    that reads torchrun's variables sees the same answer. Idempotent.
    """
    info = detect()
    if not info.distributed:
        return info
    if dist.is_initialized():
        return replace(info, backend=dist.get_backend())
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if backend == "nccl":
        torch.cuda.set_device(info.device)
    os.environ.update(
        RANK=str(info.rank),
        WORLD_SIZE=str(info.world_size),
        LOCAL_RANK=str(info.local_rank),
        MASTER_ADDR=info.master_addr,
        MASTER_PORT=str(info.master_port),
    )
    kwargs: dict[str, Any] = {}
    if timeout_s is not None:
        kwargs["timeout"] = timedelta(seconds=timeout_s)
    dist.init_process_group(
        backend=backend,
        init_method="env://",
        rank=info.rank,
        world_size=info.world_size,
        **kwargs,
    )
    return replace(info, backend=backend)


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _collective_device() -> torch.device:
    # NCCL only reduces GPU tensors; gloo reduces CPU ones.
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum `tensor` over ranks in place (and return it); unchanged in a single process."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def average_gradients(model: torch.nn.Module) -> None:
    """Mean of every gradient over ranks, for tasks that run without the DDP wrapper (their
    forward goes through functional copies of the weights, which DDP's hooks never see)."""
    if not is_distributed():
        return
    world = dist.get_world_size()
    for p in model.parameters():
        if p.grad is not None:
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
            p.grad.div_(world)


def any_rank(flag: bool) -> bool:
    """True on every rank when `flag` is true on any: ranks must agree to stop at one step."""
    if not is_distributed():
        return bool(flag)
    t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=_collective_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """`obj` from rank `src` on every rank (pickled); returned unchanged in a single process."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]
