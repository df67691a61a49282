"""`hcli submit adapt` of 3 sources × 3 shots × 3 seeds: one array of 27 tasks, in under 2 s.

Times the whole command a user types (a fresh process: interpreter start, imports, planning 27
specs from the sources' spec.yaml, the checks before queueing, 27 run folders, one sbatch of a
27-task array) against the real local SLURM (`source /tmp/hcli-slurm/env.sh`), beside the
floor of `hcli --version` (interpreter start and the CLI's import) measured interleaved. The
three sources are leave-one-material-out multiclass runs marked COMPLETED (their folders as
`hcli submit` makes them; nothing is trained, so no task waits). The arrays are submitted held
and cancelled after each repetition, so the benchmark leaves the cluster as it found it.

    source /tmp/hcli-slurm/env.sh && .venv/bin/python benchmarks/bench_adapt_submit.py [--reps 5]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._util import REPO  # noqa: E402

HCLI = [sys.executable, "-m", "hcli"]
FOLDS = (2, 4, 5)  # lomo folds of the synthetic data with at least 3 held-out images
GOAL_S = 2.0


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([*HCLI, *args], capture_output=True, text=True, cwd=REPO)
    if done.returncode:
        raise SystemExit(f"hcli {' '.join(args)} failed:\n{done.stderr}")
    return done


def _sources(root: Path, data: Path) -> list[str]:
    from hcli.launch import plan_runs
    from hcli.runs import create_run

    ids = []
    for fold in FOLDS:
        (p,) = plan_runs("multiclass", overrides=[
            f"data.root={data}", "data.protocol=lomo", f"data.fold={fold}", "data.crop_size=64",
            "model.decoder_channels=16"])
        create_run(root, p.run_id, p.spec).update_state(state="COMPLETED")
        ids.append(p.run_id)
    return ids


def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    if shutil.which("sbatch") is None:
        raise SystemExit("no sbatch on the PATH: source /tmp/hcli-slurm/env.sh first")
    tmp = Path(tempfile.mkdtemp(prefix="bench-adapt-"))
    try:
        _cli("data", "synth", "--out", str(tmp / "raw"), "--n", "36", "--seed", "1", "--size",
             "96")
        _cli("data", "prepare", "--source", str(tmp / "raw"), "--out", str(tmp / "data"))
        times, floor, cpu = [], [], []
        for rep in range(args.reps):
            root = tmp / f"runs{rep}"
            sources = _sources(root, tmp / "data")
            t0 = time.perf_counter()
            subprocess.run([*HCLI, "--version"], capture_output=True, cwd=REPO, check=True)
            floor.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            c0 = _children_cpu()
            done = _cli("submit", "adapt", "--from", ",".join(sources), "--cluster", "--json",
                        "--runs-dir", str(root), "-o", "adapt.shots=0,1,2", "-o", "seed=0,1,2",
                        "-o", "slurm.additional_parameters={hold: true}",
                        "-o", "slurm.cpus_per_task=1", "-o", "slurm.mem_gb=1")
            times.append(time.perf_counter() - t0)
            cpu.append(_children_cpu() - c0)
            outs = json.loads(done.stdout)
            arrays = {o["job_id"].split("_")[0] for o in outs}
            subprocess.run(["scancel", *arrays], check=False)
            if len(outs) != 27 or len(arrays) != 1:
                raise SystemExit(f"expected one array of 27 tasks, got {len(outs)} task(s) in "
                                 f"{len(arrays)} job(s)")
        med = statistics.median(times)
        print(f"hcli submit adapt, 3 sources x 3 shots x 3 seeds = 27 tasks in one array: "
              f"median {med:.2f} s (min {min(times):.2f}, max {max(times):.2f}, "
              f"{args.reps} reps), CPU {statistics.median(cpu):.2f} s; floor `hcli --version` "
              f"{statistics.median(floor):.2f} s; load average {os.getloadavg()[0]:.1f} on "
              f"{os.cpu_count()} cores; "
              f"goal < {GOAL_S:.0f} s: {'met' if med < GOAL_S else 'NOT met'}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
