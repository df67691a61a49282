"""The `probe` job: what a user needs to know about a node before spending GPU hours on it."""

from __future__ import annotations

import os
import platform
import socket
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["environment_report", "run"]


def _readable(path: Path) -> dict[str, Any]:
    manifest = path / "manifest.json"
    return {
        "path": str(path),
        "exists": path.is_dir(),
        "readable": os.access(path, os.R_OK),
        "prepared": manifest.is_file(),
    }


def _writable(path: Path) -> bool:
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".probe-"):
            return True
    except OSError:
        return False


def environment_report(data_root: Path, runs_root: Path) -> dict[str, Any]:
    import timm
    import torch

    gpus = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            gpus.append(
                {"index": i, "name": props.name, "memory_gb": round(props.total_memory / 2**30, 1)}
            )
    nccl = None
    if torch.distributed.is_available() and torch.cuda.is_available():
        try:
            nccl = ".".join(map(str, torch.cuda.nccl.version()))
        except (RuntimeError, AttributeError):
            nccl = None
    return {
        "hostname": socket.gethostname(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "nccl": nccl,
        "gpus": gpus,
        "cpu_count": os.cpu_count(),
        "cpus_allowed": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_threads": torch.get_num_threads(),
        "bf16_cpu_autocast": _bf16_cpu_ok(torch),
        "data": _readable(data_root),
        "runs_root": {"path": str(runs_root), "writable": _writable(runs_root)},
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
    }


def _bf16_cpu_ok(torch: Any) -> bool:
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return bool((torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16)
    except RuntimeError:
        return False


def run(ctx: Any) -> Any:
    from hcli.fsutil import atomic_write_json
    from jobs.runtime import Outcome

    # The data root of this run's spec: the folder a training run with the same data.root
    # would read, seen from the node the probe landed on.
    report = environment_report(Path(ctx.spec.data.root), ctx.run.path.parent)
    for key, value in report.items():
        print(f"{key:>18}: {value}", flush=True)
    if not report["data"]["prepared"]:
        print(
            f"note: no prepared data at {ctx.spec.data.root} (the spec's data.root) on this node; "
            "prepare it (hcli data prepare) or submit the probe with -o data.root=FOLDER",
            flush=True,
        )
    atomic_write_json(
        ctx.run.path / "results.json", {"run_id": ctx.run.run_id, "kind": "probe", "probe": report}
    )
    return Outcome("completed", step=0)
