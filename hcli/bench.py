"""`hcli bench`: measure each (job kind, backbone, crop, AMP) on this node and store a calibration.

Each measurement runs the kind's own engine and task in a fresh process (`python -m jobs.bench`,
jobs/bench.py), so its startup cost and peak memory are its own; this module plans the
measurements from the spec layers (defaults < config < the bench's axes < `-o`), runs them one
after another, and merges every finished entry into the calibration of this hardware at once
(a bench job that hits its time limit keeps what it measured). On SLURM the same code runs as a
job (`BenchTarget`), submitted with the spec's `slurm` section like any run.

Torch-free at import: `hcli bench --cluster` queues without loading torch.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hcli.calibration import Calibration, CalibrationEntry, hardware_here, save_calibration
from hcli.errors import ClusterError, RunError, SpecError

__all__ = [
    "AMPS",
    "BENCH_KINDS",
    "BenchItem",
    "BenchTarget",
    "plan_bench",
    "run_bench",
    "submit_bench",
]

BENCH_KINDS = ("multiclass", "mae", "meta", "infer")
# The calibration's name for each train.amp value.
AMPS = {"none": "off", "bf16": "bf16", "fp16": "fp16"}
DEFAULT_DATA_CONFIG = "quickstart"
# Variables that would make the measuring process join a process group of the bench job's own.
# Spec keys the bench's own options set (an -o would silently measure something else).
_AXES = {"model.backbone": "--backbone", "data.crop_size": "--crop", "train.amp": "--amp",
         "kind": "--kinds"}
_DIST_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_PROCID", "SLURM_LOCALID")


@dataclass(frozen=True)
class BenchItem:
    kind: str  # multiclass | mae | meta | infer
    backbone: str
    crop: int
    amp: str  # calibration name: none | bf16 | fp16
    spec: dict[str, Any]  # the resolved spec, as JSON (picklable for the SLURM job)

    @property
    def label(self) -> str:
        return f"{self.kind} {self.backbone} {self.crop}px amp={self.amp}"


def _csv(values: list[str], what: str, allowed: tuple[str, ...] | None = None) -> list[str]:
    out = [v.strip() for text in values for v in text.split(",") if v.strip()]
    if not out:
        raise SpecError(f"--{what} is empty; give at least one value")
    bad = [v for v in out if allowed is not None and v not in allowed]
    if bad:
        raise SpecError(f"--{what} {','.join(bad)}: choose from {', '.join(allowed or ())}")
    return list(dict.fromkeys(out))


def plan_bench(
    *,
    backbones: list[str],
    crops: list[str],
    amps: list[str],
    kinds: list[str],
    config: str | None = None,
    overrides: list[str] | None = None,
) -> list[BenchItem]:
    """Every measurement the arguments ask for, each spec validated (one-line errors)."""
    from hcli.spec import load_spec, resolve_paths
    from hcli.spec._load import read_config

    kinds = _csv(kinds, "kinds", BENCH_KINDS)
    amps = _csv(amps, "amp", tuple(AMPS))
    backbones = _csv(backbones, "backbone")
    crop_sizes: list[int] = []
    for c in _csv(crops, "crop"):
        if not c.isdigit():
            raise SpecError(f"--crop {c}: give pixel sizes, e.g. --crop 256,512")
        crop_sizes.append(int(c))
    for text in overrides or []:
        key = text.partition("=")[0].strip()
        if key in _AXES:
            raise SpecError(f"-o {key}: the bench sets it from {_AXES[key]}; drop the -o")
    base: dict[str, Any] = {"model.pretrained": False}  # weights do not change the speed
    if config is None:
        # The bench measures the full encoders by default, on the quickstart's data.
        base["data.root"] = read_config(DEFAULT_DATA_CONFIG)["data"]["root"]
    items = []
    for kind in kinds:
        for backbone in backbones:
            for crop in crop_sizes:
                for amp in amps:
                    flags = {**base, "model.backbone": backbone, "data.crop_size": crop,
                             "train.amp": AMPS[amp]}
                    spec = resolve_paths(load_spec(
                        config, kind="multiclass" if kind == "infer" else kind, flags=flags,
                        overrides=overrides or []))
                    items.append(BenchItem(kind, backbone, crop, amp,
                                           spec.model_dump(mode="json")))
    return items


def check_items(items: list[BenchItem], root: Path) -> None:
    """What `hcli submit` checks before queueing (data prepared, fold exists), once per spec."""
    from hcli.launch._checks import preflight
    from hcli.spec import Spec

    memo: dict[tuple[Any, ...], Any] = {}
    for item in items:
        preflight(Spec.model_validate(item.spec), root, memo=memo)


Progress = Callable[[int, BenchItem, int, int], None]  # (index, item, done, total)


def _measure(item: BenchItem, work: Path, index: int, steps: int, warmup: int,
             progress: Progress | None) -> dict[str, Any]:
    from hcli.runs import REPO_ROOT, create_run
    from hcli.spec import Spec

    run = create_run(work, f"bench-{index}", Spec.model_validate(item.spec), snapshot=False)
    log = run.path / "logs" / "bench.err"
    env = {k: v for k, v in os.environ.items() if k not in _DIST_VARS}
    env.pop("HCLI_JOB_ID", None)
    cmd = [sys.executable, "-m", "jobs.bench", str(run.path), "--kind", item.kind,
           "--steps", str(steps), "--warmup", str(warmup)]
    result: dict[str, Any] | None = None
    with open(log, "wb") as err:
        launched = time.time()
        proc = subprocess.Popen([*cmd, "--launched", repr(launched)], stdout=subprocess.PIPE,
                                stderr=err, stdin=subprocess.DEVNULL, text=True, env=env,
                                cwd=REPO_ROOT)
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                try:
                    msg = json.loads(line)
                except ValueError:
                    continue
                if "result" in msg:
                    result = msg["result"]
                elif progress is not None:
                    progress(index, item, int(msg["done"]), int(msg["total"]))
        finally:
            if proc.poll() is None:
                proc.wait()
    if proc.returncode != 0 or result is None:
        tail = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
        why = tail[-1] if tail else f"exit code {proc.returncode}"
        raise RunError(f"{item.label}: {why}")
    return result


def run_bench(
    items: list[BenchItem],
    root: Path,
    *,
    steps: int,
    warmup: int,
    progress: Progress | None = None,
    on_entry: Callable[[BenchItem, CalibrationEntry | None, str | None], None] | None = None,
) -> tuple[Calibration, Path | None, list[str]]:
    """Measure every item here, one process each; returns this run's calibration, the file it
    was merged into, and the measurements that failed (one line each)."""
    from hcli.runs import now_iso

    if steps < 1 or warmup < 0:
        raise SpecError(f"--steps {steps} --warmup {warmup}: need steps >= 1 and warmup >= 0")
    hardware = hardware_here()
    _warn_if_busy(hardware.cores)
    cal = Calibration(hardware=hardware, entries=[])
    path: Path | None = None
    failed: list[str] = []
    # Node-local scratch ($TMPDIR under SLURM): the throwaway run folders of the measurements.
    work = Path(tempfile.mkdtemp(prefix="hcli-bench-"))
    try:
        for index, item in enumerate(items):
            try:
                got = _measure(item, work, index, steps, warmup, progress)
            except RunError as exc:
                failed.append(str(exc))
                if on_entry is not None:
                    on_entry(item, None, str(exc))
                continue
            spec = item.spec
            entry = CalibrationEntry(
                kind=item.kind, backbone=item.backbone,
                encoder_kwargs=spec["model"]["encoder_kwargs"], crop=item.crop, amp=item.amp,
                batch_size=got["batch_size"], step_s=got["step_s"],
                samples_per_s=got["samples_per_s"], startup_s=got["startup_s"],
                peak_mem_mb=got["peak_mem_mb"], steps_measured=got["steps_measured"],
                measured_at=now_iso(),
            )
            cal.entries.append(entry)
            path = save_calibration(root, Calibration(hardware=hardware, entries=[entry]))
            if on_entry is not None:
                on_entry(item, entry, None)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return cal, path, failed


def _warn_if_busy(cores: int) -> None:
    """Step times on a shared CPU grow with the other processes' load (a quickstart step took
    4.6 s at a load of 8 on this project's 2-core VM, ~0.6 s on a quiet one): say so."""
    try:
        load = os.getloadavg()[0]
    except OSError:
        return
    if load > 0.75 * cores:
        sys.stderr.write(f"warning: load average {load:.1f} on {cores} cores before measuring: "
                         "other processes share this machine, so the figures are slower than "
                         "on a quiet one\n")


class BenchTarget:
    """The SLURM job of `hcli bench --cluster`: measures on the node, writes the calibration."""

    def __init__(self, items: list[BenchItem], root: Path, steps: int, warmup: int) -> None:
        self.items, self.root, self.steps, self.warmup = items, str(root), steps, warmup

    def __call__(self) -> dict[str, Any]:
        def show(item: BenchItem, entry: CalibrationEntry | None, error: str | None) -> None:
            if entry is not None:
                print(f"{item.label}: {entry.step_s:.4g} s/step, {entry.samples_per_s:.4g} "
                      f"samples/s, startup {entry.startup_s:.3g} s, peak "
                      f"{entry.peak_mem_mb:.0f} MB", flush=True)
            else:
                print(f"FAILED {error}", flush=True)

        cal, path, failed = run_bench(self.items, Path(self.root), steps=self.steps,
                                      warmup=self.warmup, on_entry=show)
        print(f"calibration: {path}", flush=True)
        if failed:
            raise RunError(f"{len(failed)} measurement(s) failed: " + "; ".join(failed))
        return {"calibration": str(path), "hardware": cal.hardware.key,
                "entries": len(cal.entries)}


def submit_bench(items: list[BenchItem], root: Path, *, steps: int, warmup: int) -> dict[str, str]:
    """Queue the bench as one SLURM job (the first item's `slurm` section, one task)."""
    from hcli.calibration import calibrations_dir
    from hcli.launch._slurm import make_executor
    from hcli.spec import Spec

    spec = Spec.model_validate(items[0].spec)
    # One task: the measurements run one after another, not once per GPU.
    spec.slurm.tasks_per_node = 1
    folder = calibrations_dir(root) / "jobs"
    executor = make_executor(spec, folder / "%j", job_name="hcli-bench", runs_root=root)
    try:
        job = executor.submit(BenchTarget(items, root, steps, warmup))
    except (OSError, RuntimeError) as exc:
        why = str(exc).strip().splitlines()[-1] if str(exc).strip() else repr(exc)
        raise ClusterError(f"sbatch failed: {why}") from exc
    return {"job_id": str(job.job_id), "stdout": str(job.paths.stdout),
            "calibrations": str(calibrations_dir(root))}
