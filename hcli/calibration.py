"""Measured throughput per hardware: what `hcli bench` writes and `hcli plan` reads.

One JSON file per hardware key under `<runs root>/.calibrations/`. A calibration is a list of
entries, one per (job kind, backbone, encoder kwargs, crop, AMP, batch size); measuring the same
combination again replaces its entry, other entries of the file stay. Keyed by hardware because
a figure measured on one GPU type says nothing about another, and by torch version because a
release can move step times by tens of percent.

Torch-free at import: `hardware_here` imports torch only when called (on the node that measures).
"""

from __future__ import annotations

import os
import platform
import re
import socket
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, ValidationError

from hcli.errors import UserError
from hcli.fsutil import atomic_write_text

__all__ = [
    "Calibration",
    "CalibrationEntry",
    "Hardware",
    "calibrations_dir",
    "entry_key",
    "find_entry",
    "hardware_here",
    "load_calibration_file",
    "load_calibrations",
    "save_calibration",
]


class Hardware(BaseModel):
    key: str  # stable slug naming the calibration file; see hardware_here
    gpu_name: str | None = None
    gpu_count: int = 0
    cpu: str
    cores: int
    torch: str
    host: str


class CalibrationEntry(BaseModel):
    kind: str  # multiclass | mae | meta | infer
    backbone: str  # the spec's model.backbone as given (convnext, swin, maxvit, or a timm name)
    encoder_kwargs: dict = Field(default_factory=dict)  # {} for the full encoder
    crop: int
    amp: Literal["none", "bf16", "fp16"]
    batch_size: int
    step_s: float  # seconds per optimizer step incl. data loading (infer: seconds per image)
    samples_per_s: float
    startup_s: float  # process start to first step (imports, model build, data open)
    peak_mem_mb: float
    steps_measured: int
    measured_at: str  # ISO time


class Calibration(BaseModel):
    hardware: Hardware
    entries: list[CalibrationEntry] = Field(default_factory=list)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9.]+", "-", text.lower()).strip("-.") or "unknown"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _cores() -> int:
    # The cores this process may use (a SLURM allocation's cpuset), not the machine's count.
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def hardware_here() -> Hardware:
    """The hardware this process runs on. Imports torch (call it on the node that measures)."""
    import torch

    cpu, cores, version = _cpu_model(), _cores(), torch.__version__
    gpu_count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    gpu_name = torch.cuda.get_device_name(0) if gpu_count else None
    if gpu_name:
        key = f"gpu-{_slug(gpu_name)}x{gpu_count}-torch{_slug(version)}"
    else:
        key = f"cpu-{_slug(cpu)}-{cores}c-torch{_slug(version)}"
    return Hardware(
        key=key, gpu_name=gpu_name, gpu_count=gpu_count, cpu=cpu, cores=cores, torch=version,
        host=socket.gethostname(),
    )


def calibrations_dir(root: Path) -> Path:
    return Path(root) / ".calibrations"


def entry_key(e: CalibrationEntry) -> tuple:
    """What makes two entries the same measurement (a newer one replaces the older)."""
    return (e.kind, e.backbone, _canon(e.encoder_kwargs), e.crop, e.amp, e.batch_size)


def _canon(kwargs: dict) -> str:
    import json

    return json.dumps(kwargs, sort_keys=True, default=str)


def load_calibration_file(path: Path) -> Calibration:
    try:
        return Calibration.model_validate_json(Path(path).read_bytes())
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(file)"
        raise UserError(
            f"{path}: not a valid calibration ({where}: {first['msg']}); delete it and run "
            "`hcli bench` again"
        ) from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read calibration ({exc.strerror})") from None


def load_calibrations(root: Path) -> list[Calibration]:
    """Every calibration under the runs root, sorted by hardware key; [] when there is none."""
    folder = calibrations_dir(root)
    if not folder.is_dir():
        return []
    return [load_calibration_file(p) for p in sorted(folder.glob("*.json"))]


def save_calibration(root: Path, cal: Calibration) -> Path:
    """Merge `cal` into the file of its hardware key and write it atomically. Bench jobs on
    several nodes of the same type may finish together: the read-merge-write holds a lock."""
    import fcntl

    folder = calibrations_dir(root)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{cal.hardware.key}.json"
    with open(folder / f".{cal.hardware.key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        merged: dict[tuple, CalibrationEntry] = {}
        if path.exists():
            for e in load_calibration_file(path).entries:
                merged[entry_key(e)] = e
        for e in cal.entries:
            merged[entry_key(e)] = e
        out = Calibration(hardware=cal.hardware, entries=list(merged.values()))
        atomic_write_text(path, out.model_dump_json(indent=2) + "\n")
    return path


def _matches(hw: Hardware, hardware: str) -> bool:
    if hardware.lower() == "cpu":
        return hw.gpu_count == 0
    needle = hardware.lower()
    return needle in hw.key.lower() or needle in (hw.gpu_name or "").lower()


def find_entry(
    cals: list[Calibration],
    *,
    hardware: str | None,
    kind: str,
    backbone: str,
    encoder_kwargs: dict | None,
    crop: int,
    amp: str,
) -> tuple[Hardware, CalibrationEntry] | None:
    """The measurement for this job on the named hardware, or None when it was not measured.

    `hardware`: None = the only calibrated hardware (UserError listing the keys if several),
    "cpu" = any CPU-only calibration, else a case-insensitive substring of the GPU name or key.
    Batch size is not part of the match (the planner scales by samples/s); among several batch
    sizes or hardware files that match, the newest measurement wins.
    """
    if hardware is None:
        keys = sorted({c.hardware.key for c in cals})
        if len(keys) > 1:
            raise UserError(
                f"several calibrated hardware types ({', '.join(keys)}); name one with "
                "--hardware (a GPU name, a key substring, or 'cpu')"
            )
        pool = cals
    else:
        pool = [c for c in cals if _matches(c.hardware, hardware)]
    want = _canon(encoder_kwargs or {})
    found = [
        (c.hardware, e)
        for c in pool
        for e in c.entries
        if e.kind == kind and e.backbone == backbone and _canon(e.encoder_kwargs) == want
        and e.crop == crop and e.amp == amp
    ]
    if not found:
        return None
    return max(found, key=lambda he: (he[1].measured_at, he[1].batch_size))
