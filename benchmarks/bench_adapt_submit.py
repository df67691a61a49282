"""`hcli submit adapt` of 3 sources × 3 shots × 3 seeds: one array of 27 tasks, in under 2 s.

Times the whole command a user types (a fresh process: interpreter start, imports, planning 27
specs from the sources' spec.yaml, the checks before queueing, 27 run folders, one sbatch of a
27-task array) against the real local SLURM (`source /tmp/hcli-slurm/env.sh`), beside three
floors measured interleaved with it: `python -c pass` (interpreter start), `hcli --version`
(start and the CLI's entry point) and a bare `sbatch --array=0-26` of a one-line script (what
SLURM itself costs for the array). `--compare REV` times the same command from another
revision of the code too (exported with `git archive` into a scratch folder), interleaved, and
prints the ratio: before/after figures from one run on the same load.

The three sources are leave-one-material-out multiclass runs marked COMPLETED (their folders as
`hcli submit` makes them; nothing is trained, so no task waits). The arrays are submitted held
and cancelled after each repetition, so the benchmark leaves the cluster as it found it.

    source /tmp/hcli-slurm/env.sh
    .venv/bin/python benchmarks/bench_adapt_submit.py [--reps 5] [--compare 6ce12c9]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._util import REPO, Samples, time_command  # noqa: E402

FOLDS = (2, 4, 5)  # lomo folds of the synthetic data with at least 3 held-out images
GOAL_S = 2.0
HELD = ["-o", "slurm.additional_parameters={hold: true}", "-o", "slurm.cpus_per_task=1",
        "-o", "slurm.mem_gb=1"]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, "-m", "hcli", *args], capture_output=True, text=True,
                          cwd=REPO)
    if done.returncode:
        raise SystemExit(f"hcli {' '.join(args)} failed:\n{done.stderr}")
    return done


_SOURCES = """
import sys
from pathlib import Path
from hcli.launch import plan_runs
from hcli.runs import create_run
root, data = Path(sys.argv[1]), sys.argv[2]
for fold in sys.argv[3:]:
    (p,) = plan_runs("multiclass", overrides=[
        f"data.root={data}", "data.protocol=lomo", f"data.fold={fold}", "data.crop_size=64",
        "model.decoder_channels=16"])
    create_run(root, p.run_id, p.spec).update_state(state="COMPLETED")
    print(p.run_id)
"""


def _sources(code: Path, root: Path, data: Path) -> list[str]:
    """Three finished lomo runs in `root`, made by checkout `code` (its spec.yaml format)."""
    done = subprocess.run([sys.executable, "-c", _SOURCES, str(root), str(data),
                           *map(str, FOLDS)], cwd=code, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"making the sources failed:\n{done.stderr}")
    return done.stdout.split()


def _export(rev: str, dest: Path) -> Path:
    """`rev`'s tracked files in `dest`, staged in a fresh git index so its code snapshot lists
    files with `git ls-files` as a checkout does."""
    dest.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", rev], cwd=REPO, capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    subprocess.run(["git", "add", "-A"], cwd=dest, check=True)
    return dest


def _submit(code: Path, root: Path, sources: list[str]) -> tuple[float, float]:
    """Wall and CPU time of the user's command run from checkout `code`; the array cancelled."""
    out = root / "submit.json"
    cmd = ["sh", "-c", 'exec "$0" -m hcli "$@" > "$OUT"', sys.executable, "submit", "adapt",
           "--from", ",".join(sources), "--cluster", "--json", "--runs-dir", str(root),
           "-o", "adapt.shots=0,1,2", "-o", "seed=0,1,2", *HELD]
    wall, cpu = time_command(cmd, env={**os.environ, "OUT": str(out)}, cwd=code)
    outs = json.loads(out.read_text())
    arrays = {o["job_id"].split("_")[0] for o in outs}
    subprocess.run(["scancel", *arrays], check=False)
    if len(outs) != 27 or len(arrays) != 1:
        raise SystemExit(f"expected one array of 27 tasks, got {len(outs)} task(s) in "
                         f"{len(arrays)} job(s)")
    return wall, cpu


def _bare_sbatch(folder: Path) -> tuple[float, float]:
    """The floor SLURM sets: one sbatch of a held 27-task array of `true`, then cancelled."""
    out = folder / "sbatch.out"
    wall, cpu = time_command(
        ["sh", "-c", 'exec sbatch --parsable --hold --array=0-26 --cpus-per-task=1 --mem=1G '
         '--output=/dev/null --wrap=true > "$OUT"'],
        env={**os.environ, "OUT": str(out)})
    subprocess.run(["scancel", out.read_text().strip().split(";")[0]], check=False)
    return wall, cpu


def _line(name: str, s: Samples) -> str:
    lo, hi = s.quartiles()
    return (f"  {name:<34} {s.median:5.2f} s (IQR {lo:.2f}-{hi:.2f}, min {min(s.values):.2f}, "
            f"max {max(s.values):.2f}), cpu {s.cpu_median or 0:.2f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1, help="untimed rounds first (.pyc files)")
    ap.add_argument("--compare", metavar="REV",
                    help="also time the command from this git revision (e.g. the commit before)")
    args = ap.parse_args()
    if shutil.which("sbatch") is None:
        raise SystemExit("no sbatch on the PATH: source /tmp/hcli-slurm/env.sh first")
    tmp = Path(tempfile.mkdtemp(prefix="bench-adapt-"))
    try:
        _cli("data", "synth", "--out", str(tmp / "raw"), "--n", "36", "--seed", "1", "--size",
             "96")
        _cli("data", "prepare", "--source", str(tmp / "raw"), "--out", str(tmp / "data"))
        codes = {"hcli submit adapt (this code)": REPO}
        if args.compare:
            codes[f"hcli submit adapt ({args.compare})"] = _export(args.compare, tmp / "compare")
        floors = {
            "python -c pass": [sys.executable, "-c", "pass"],
            "hcli --version": [sys.executable, "-m", "hcli", "--version"],
        }
        names = [*codes, *floors, "bare sbatch, 27-task array"]
        samples = {name: Samples([], []) for name in names}
        for rep in range(args.warmup + args.reps):
            timed: dict[str, tuple[float, float]] = {}
            for n, (name, code) in enumerate(codes.items()):
                root = tmp / f"runs{rep}-{n}"
                timed[name] = _submit(code, root, _sources(code, root, tmp / "data"))
            for name, cmd in floors.items():
                timed[name] = time_command(cmd, cwd=REPO)
            timed["bare sbatch, 27-task array"] = _bare_sbatch(tmp)
            if rep >= args.warmup:
                for name, (wall, cpu) in timed.items():
                    samples[name].values.append(wall)
                    samples[name].cpu.append(cpu)  # type: ignore[union-attr]
        print(f"3 sources x 3 shots x 3 seeds = 27 tasks in one array; median wall time "
              f"of {args.reps} interleaved reps (IQR, min, max), cpu = user+system of the "
              f"process tree; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores:")
        for name, s in samples.items():
            print(_line(name, s))
        ours = samples["hcli submit adapt (this code)"]
        if args.compare:
            base = samples[f"hcli submit adapt ({args.compare})"]
            cpu_ratio = (ours.cpu_median or 0) / (base.cpu_median or 1)
            print(f"  ratio this code / {args.compare}: wall {ours.median / base.median:.2f}, "
                  f"cpu {cpu_ratio:.2f}")
        print(f"goal < {GOAL_S:.0f} s: {'met' if ours.median < GOAL_S else 'NOT met'} "
              f"(median {ours.median:.2f} s)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
