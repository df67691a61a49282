"""`hcli plan` against reality: calibrate this machine, plan configs/study_cpu_small.yaml on one
device, run it, and compare the predicted wall time with the measured one (goal: within 25 %).

Each step is what a user types, in a fresh runs root: `hcli bench --local` (the kinds the study
uses, quickstart's model at 128 px), `hcli plan --gpus 1 --hardware cpu --local --json`, then
`hcli submit pipeline --local` (one chain: one device) and waiting for every run to end; with
`--cluster`, on the local SLURM instead, each job asking for the node exclusively, so each run
pays its own process start as on a cluster (the test cluster's partition forces sharing,
OverSubscribe=FORCE:4, so there the jobs still share the two cores: not one device).
Measured wall: from the submission to the last run's recorded end (state.json); per run, its
execution's start to end beside the planner's figure for it. Run it on a quiet machine: the
calibration and the study must see the same load.

    .venv/bin/python benchmarks/bench_plan.py [--runs-dir DIR] [--skip-bench] [--cluster]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._util import REPO  # noqa: E402

HCLI = [sys.executable, "-m", "hcli"]
STUDY = "study_cpu_small"
GOAL = 0.25


def _hcli(*args: str) -> str:
    return subprocess.run([*HCLI, *args], check=True, capture_output=True, text=True,
                          cwd=REPO).stdout


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs-dir", type=Path, default=Path("/tmp/bench-plan/runs"))
    parser.add_argument("--skip-bench", action="store_true", help="reuse the calibration there")
    parser.add_argument("--cluster", action="store_true", help="run the study on SLURM")
    args = parser.parse_args()
    runs = args.runs_dir
    if not (REPO / "data" / "synth-prepared" / "manifest.json").is_file():
        sys.exit("needs the demo's data: make demo (or hcli data synth + prepare into "
                 "data/synth-prepared)")
    if runs.exists():
        for child in runs.iterdir():
            if child.name != ".calibrations" or not args.skip_bench:
                shutil.rmtree(child) if child.is_dir() else child.unlink()
    load = Path("/proc/loadavg").read_text().split()[:3]
    if not args.skip_bench:
        _hcli("bench", "-c", "quickstart", "--crop", "128", "--kinds", "multiclass,mae,infer",
              "--local", "-o", "model.pretrained=false", "--runs-dir", str(runs))
    study = STUDY
    if args.cluster:  # one job at a time on the node: one device
        import yaml

        tree = yaml.safe_load((REPO / "configs" / f"{STUDY}.yaml").read_text())
        tree["defaults"]["slurm.additional_parameters"] = {"exclusive": True}
        study = str(runs.parent / f"{STUDY}.yaml")
        Path(study).write_text(yaml.safe_dump(tree, sort_keys=False))
    plan = json.loads(_hcli("plan", study, "--gpus", "1", "--hardware", "cpu", "--json",
                            *([] if args.cluster else ["--local"]), "--runs-dir", str(runs)))
    predicted = {r["run_id"]: r["total_s"] for s in plan["stages"] for r in s["run_estimates"]}
    t0 = time.time()
    _hcli("submit", "pipeline", study, "--cluster" if args.cluster else "--local",
          "--runs-dir", str(runs))
    ends: dict[str, tuple[float, float]] = {}
    while len(ends) < len(predicted):
        time.sleep(2)
        for rid in predicted:
            state = json.loads((runs / rid / "state.json").read_text())
            if state["state"] in ("FAILED", "BLOCKED", "CANCELLED"):
                sys.exit(f"{rid} {state['state']}: {state.get('message')}")
            job = (state.get("jobs") or [{}])[-1]
            if state["state"] == "COMPLETED" and job.get("ends") and job["ends"][-1]:
                ends[rid] = (_epoch(job["starts"][0]), _epoch(job["ends"][-1]))
    measured = max(e for _, e in ends.values()) - t0
    print(f"{STUDY}: {len(predicted)} runs on one device, {'SLURM' if args.cluster else 'local'} "
          f"(load average at start "
          f"{' '.join(load)}, at end {' '.join(Path('/proc/loadavg').read_text().split()[:3])})")
    for rid, (start, end) in ends.items():
        print(f"  {rid:30} predicted {predicted[rid]:7.1f} s  measured {end - start:7.1f} s  "
              f"ratio {(end - start) / predicted[rid]:.2f}")
    error = measured / plan["wall_s"] - 1
    verdict = "met" if abs(error) <= GOAL else "missed"
    print(f"  wall: predicted {plan['wall_s']:.0f} s, measured {measured:.0f} s "
          f"(error {error:+.0%}; goal within {GOAL:.0%}: {verdict})")


if __name__ == "__main__":
    main()
