"""`hcli submit pipeline` of the shipped study (configs/study_poc6.yaml): under 10 s on the local
SLURM, and a second call submits nothing.

The study is the shipped one with its data pointed at synthetic data (the real ARTeFACT is not
here), weights off (offline) and small SLURM requests that this one-node cluster accepts; every
job is submitted held and cancelled at the end, so nothing trains and the cluster is left as it
was found. Timed as a user types it (a fresh process each time), beside floors measured in the
same run: `python -c pass`, `hcli --version`, and one bare held `sbatch` per stage (what SLURM
itself costs for the stages' submissions).

    source /tmp/hcli-slurm/env.sh
    .venv/bin/python benchmarks/bench_pipeline.py [--reps 3]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._util import REPO, Samples, time_command  # noqa: E402

GOAL_S = 10.0
HCLI = [sys.executable, "-m", "hcli"]


def _data(tmp: Path) -> Path:
    prepared = REPO / "data" / "synth-prepared"
    if (prepared / "manifest.json").is_file():
        return prepared
    subprocess.run([*HCLI, "data", "synth", "--out", str(tmp / "raw"), "--n", "120", "--seed",
                    "0", "--size", "256"], check=True, cwd=REPO, capture_output=True)
    subprocess.run([*HCLI, "data", "prepare", "--source", str(tmp / "raw"), "--out",
                    str(tmp / "prepared")], check=True, cwd=REPO, capture_output=True)
    return tmp / "prepared"


def _study(tmp: Path, data: Path) -> Path:
    study = yaml.safe_load((REPO / "configs" / "study_poc6.yaml").read_text())
    study["defaults"].update({
        "data.root": str(data), "model.pretrained": False,
        "slurm.additional_parameters": {"hold": True}, "slurm.cpus_per_task": 1,
        "slurm.mem_gb": 1, "slurm.gpus_per_node": 0,
    })
    path = tmp / "study.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


def _cancel_all(runs: Path) -> None:
    jobs = set()
    for state in runs.glob("*/state.json"):
        for job in json.loads(state.read_text()).get("jobs", []):
            jobs.add(str(job["job_id"]).split("_")[0])
    if jobs:
        subprocess.run(["scancel", *sorted(jobs)], check=False, capture_output=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    if shutil.which("sbatch") is None:
        sys.exit("needs the local SLURM: source /tmp/hcli-slurm/env.sh")
    first, second, floors = Samples([]), Samples([]), {"python -c pass": Samples([]),
                                                       "hcli --version": Samples([]),
                                                       "sbatch per stage": Samples([])}
    n_runs = n_stages = 0
    with tempfile.TemporaryDirectory() as scratch:
        tmp = Path(scratch)
        study = _study(tmp, _data(tmp))
        n_stages = len(yaml.safe_load(study.read_text())["stages"])
        script = tmp / "held.sh"
        script.write_text("#!/bin/sh\n#SBATCH --hold\n#SBATCH --mem=100M\ntrue\n")
        for rep in range(args.reps):
            runs = tmp / f"runs{rep}"
            cmd = [*HCLI, "submit", "pipeline", str(study), "--cluster", "--json",
                   "--runs-dir", str(runs)]
            try:
                t0 = time.perf_counter()
                out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=REPO)
                first.values.append(time.perf_counter() - t0)
                stages = json.loads(out.stdout)["stages"]
                n_runs = sum(len(s["submitted"]) for s in stages)
                t0 = time.perf_counter()
                out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=REPO)
                second.values.append(time.perf_counter() - t0)
                again = sum(len(s["submitted"]) + len(s["resumed"])
                            for s in json.loads(out.stdout)["stages"])
                assert again == 0, f"the second call submitted {again} runs"
            finally:
                _cancel_all(runs)
            floors["python -c pass"].values.append(time_command([sys.executable, "-c", "pass"])[0])
            floors["hcli --version"].values.append(time_command([*HCLI, "--version"])[0])
            t0 = time.perf_counter()
            ids = [subprocess.run(["sbatch", "--parsable", str(script)], check=True,
                                  capture_output=True, text=True).stdout.strip()
                   for _ in range(n_stages)]
            floors["sbatch per stage"].values.append(time.perf_counter() - t0)
            subprocess.run(["scancel", *ids], check=False, capture_output=True)
    print(f"hcli submit pipeline study_poc6 ({n_stages} stages, {n_runs} runs) on the local SLURM")
    print(f"  first call : median {first.median:.2f} s  (goal < {GOAL_S:.0f} s; "
          f"{first.median / n_runs * 1000:.0f} ms per run)")
    print(f"  second call: median {second.median:.2f} s  (submits nothing)")
    for name, s in floors.items():
        print(f"  floor {name:17}: median {s.median:.3f} s  "
              f"(first call / floor = {first.median / s.median:.1f}x)")


if __name__ == "__main__":
    main()
