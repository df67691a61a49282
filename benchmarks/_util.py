"""Helpers shared by the benchmarks: timing commands against a baseline on a shared machine.

Other processes compete for the same two cores, so a candidate and its baseline are measured
interleaved (A, B, A, B, ...) rather than one block after the other: a burst of load then
hits both sides instead of biasing one. Medians are reported with their spread.
"""

from __future__ import annotations

import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["REPO", "Samples", "hcli_command", "time_command", "time_interleaved", "fmt_ms"]

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Samples:
    """Wall times of repeated runs, in seconds, and the CPU time (user + system) of each: under
    contention from other processes wall time inflates while CPU time mostly does not."""

    values: list[float]
    cpu: list[float] | None = None

    @property
    def cpu_median(self) -> float | None:
        return statistics.median(self.cpu) if self.cpu else None

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    def quartiles(self) -> tuple[float, float]:
        if len(self.values) < 4:
            return min(self.values), max(self.values)
        q = statistics.quantiles(self.values, n=4)
        return q[0], q[2]

    def spread(self, unit: float = 1e3, suffix: str = "ms") -> str:
        lo, hi = self.quartiles()
        cpu = f", cpu {self.cpu_median * unit:.0f}" if self.cpu_median is not None else ""
        return (f"median {self.median * unit:.0f} {suffix} (IQR {lo * unit:.0f}-{hi * unit:.0f}, "
                f"min {min(self.values) * unit:.0f}, max {max(self.values) * unit:.0f}, "
                f"n={len(self.values)}{cpu})")


def fmt_ms(seconds: float) -> str:
    return f"{seconds * 1e3:.0f} ms"


def hcli_command() -> list[str]:
    """The `hcli` console script users run (next to this interpreter), else `python -m hcli`."""
    script = Path(sys.executable).with_name("hcli")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "hcli"]


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def time_command(cmd: Sequence[str], env: Mapping[str, str] | None = None,
                 cwd: Path | None = None) -> tuple[float, float]:
    """Wall and CPU time of one run of `cmd` from fork to exit, output discarded; fails loudly."""
    cpu0 = _children_cpu()
    t0 = time.perf_counter()
    done = subprocess.run(list(cmd), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          env=dict(env) if env is not None else None, cwd=cwd, check=False)
    elapsed = time.perf_counter() - t0
    if done.returncode != 0:
        tail = done.stderr.decode()[-2000:]
        raise RuntimeError(f"{' '.join(cmd)} exited {done.returncode}: {tail}")
    return elapsed, _children_cpu() - cpu0


def time_interleaved(commands: Mapping[str, Sequence[str]], reps: int, *,
                     env: Mapping[str, str] | None = None, warmup: int = 2,
                     envs: Mapping[str, Mapping[str, str]] | None = None) -> dict[str, Samples]:
    """Run every command `reps` times, round-robin, after `warmup` untimed rounds (page cache,
    .pyc files). `envs` gives a command its own environment (else `env`, else ours)."""
    base_env = dict(env) if env is not None else dict(os.environ)
    out = {name: Samples([], []) for name in commands}
    for i in range(warmup + reps):
        for name, cmd in commands.items():
            wall, cpu = time_command(cmd, (envs or {}).get(name, base_env), cwd=REPO)
            if i >= warmup:
                out[name].values.append(wall)
                out[name].cpu.append(cpu)  # type: ignore[union-attr]
    return out
