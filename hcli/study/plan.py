"""`hcli plan STUDY`: what a study costs, from measurements of the hardware it will run on.

Every run's time is built from a calibration (`hcli bench`, hcli.calibration) of the same job
kind, encoder and crop on the named hardware: startup + steps × step time (scaled from the
calibrated batch size at constant samples/s) + validations and the final test pass (images ×
sliding-window seconds per image), and one more startup per requeue under the time limit.
Where no calibration matches, the planner says which is missing instead of guessing, unless
`--throughput` gives samples/s by hand (then printed as an assumption on every line it touches).
The wall clock is a list schedule of the runs on `gpus` devices in stage order, each stage
starting when every run of the stages it needs has ended (what `afterok` on whole arrays does);
the critical path is the same with unlimited devices. Queue waits are not modelled.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field
from pathlib import Path

from hcli.errors import UserError
from hcli.launch._plan import PlannedRun
from hcli.spec import Spec
from hcli.study._schema import Study

__all__ = ["PlanResult", "RunEstimate", "StageEstimate", "plan_study"]

#: Evaluating one image costs this share of training on it when only `--throughput` is known
#: (forward only, no backward/optimizer: about a third of a training step's work).
EVAL_SHARE = 1 / 3


@dataclass
class RunEstimate:
    run_id: str
    stage: str
    steps: int
    train_s: float
    eval_s: float
    startup_s: float
    devices: int
    executions: int = 1
    start_s: float = 0.0
    slot: int = 0

    @property
    def total_s(self) -> float:
        return self.train_s + self.eval_s + self.startup_s * self.executions

    @property
    def end_s(self) -> float:
        return self.start_s + self.total_s


@dataclass
class StageEstimate:
    stage: str
    kind: str
    runs: list[RunEstimate]
    array_width: int
    basis: str  # which calibration (hardware key) or assumption the times come from

    @property
    def steps(self) -> int:
        return sum(r.steps for r in self.runs)

    @property
    def device_hours(self) -> float:
        return sum(r.total_s * r.devices for r in self.runs) / 3600

    @property
    def requeues(self) -> int:
        return max((r.executions - 1 for r in self.runs), default=0)

    @property
    def start_s(self) -> float:
        return min((r.start_s for r in self.runs), default=0.0)

    @property
    def end_s(self) -> float:
        return max((r.end_s for r in self.runs), default=0.0)


@dataclass
class PlanResult:
    study: str
    gpus: int
    time_limit_s: float | None
    hardware: str
    stages: list[StageEstimate]
    critical_path: list[str]
    critical_s: float
    assumptions: list[str] = field(default_factory=list)

    @property
    def wall_s(self) -> float:
        return max((s.end_s for s in self.stages), default=0.0)

    @property
    def device_hours(self) -> float:
        return sum(s.device_hours for s in self.stages)

    def to_json(self) -> dict:
        return {
            "study": self.study, "gpus": self.gpus, "hardware": self.hardware,
            "time_limit_s": self.time_limit_s, "wall_s": self.wall_s,
            "device_hours": self.device_hours, "critical_path": self.critical_path,
            "critical_s": self.critical_s, "assumptions": self.assumptions,
            "stages": [{
                "stage": s.stage, "kind": s.kind, "runs": len(s.runs), "steps": s.steps,
                "device_hours": s.device_hours, "array_width": s.array_width,
                "requeues_per_run": s.requeues, "start_s": s.start_s, "end_s": s.end_s,
                "basis": s.basis,
                "run_estimates": [{"run_id": r.run_id, "total_s": r.total_s,
                                   "start_s": r.start_s, "executions": r.executions}
                                  for r in s.runs],
            } for s in self.stages],
        }


def _amp(spec: Spec) -> str:
    return "none" if spec.train.amp == "off" else spec.train.amp


class _Costs:
    """Per-run seconds from calibrations (or `--throughput`), with image counts from the data."""

    def __init__(self, root: Path, hardware: str | None, throughput: float | None) -> None:
        from hcli.calibration import load_calibrations

        self.cals = load_calibrations(root)
        self.hardware, self.throughput = hardware, throughput
        self.assumptions: list[str] = []
        self.bases: set[str] = set()
        self._manifests: dict[str, object] = {}

    def _entry(self, spec: Spec, kind: str) -> tuple[float, float, float] | None:
        """(seconds per sample, startup seconds, calibrated batch) for `kind` of this spec."""
        from hcli.calibration import find_entry

        found = find_entry(
            self.cals, hardware=self.hardware, kind=kind, backbone=spec.model.backbone,
            encoder_kwargs=spec.model.encoder_kwargs or {}, crop=spec.data.crop_size,
            amp=_amp(spec),
        ) if self.cals else None
        if found is None:
            return None
        hw, e = found
        self.bases.add(hw.key)
        per_sample = e.step_s if kind == "infer" else 1.0 / e.samples_per_s
        return per_sample, e.startup_s, e.batch_size

    def _missing(self, spec: Spec, kind: str) -> UserError:
        what = (f"kind={kind} backbone={spec.model.backbone} crop={spec.data.crop_size} "
                f"amp={_amp(spec)}" + (" (shrunken encoder)" if spec.model.encoder_kwargs
                                           else ""))
        where = f" on {self.hardware}" if self.hardware else ""
        return UserError(
            f"no calibration for {what}{where}; measure it with `hcli bench --kinds {kind} "
            f"--backbone {spec.model.backbone} --crop {spec.data.crop_size} --amp {_amp(spec)}`"
            + (" with the -c/-o that shrink it" if spec.model.encoder_kwargs else "")
            + " on that hardware, or give --throughput SAMPLES_PER_S"
        )

    def train(self, spec: Spec, kind: str) -> tuple[float, float]:
        """(seconds per training sample, startup seconds)."""
        found = self._entry(spec, kind)
        if found is not None:
            return found[0], found[1]
        if self.throughput is None:
            raise self._missing(spec, kind)
        note = f"{kind} {spec.model.backbone}: --throughput {self.throughput:g} samples/s, " \
               "startup 0 s"
        if note not in self.assumptions:
            self.assumptions.append(note)
        return 1.0 / self.throughput, 0.0

    def infer(self, spec: Spec) -> float:
        """Seconds to evaluate one image (sliding window)."""
        found = self._entry(spec, "infer")
        if found is not None:
            return found[0]
        per_sample, _ = self.train(spec, "multiclass" if spec.kind != "mae" else "mae")
        note = f"evaluation of {spec.model.backbone}: {EVAL_SHARE:.2f} of a training sample " \
               "(no `infer` calibration)"
        if note not in self.assumptions:
            self.assumptions.append(note)
        return per_sample * EVAL_SHARE

    def split_sizes(self, spec: Spec) -> tuple[int, int, int]:
        """(train, val, test) image counts of the run's fold, from the prepared data."""
        from hcli.data.manifest import load_manifest
        from hcli.data.splits import get_fold

        root = str(spec.data.root)
        if root not in self._manifests:
            try:
                self._manifests[root] = load_manifest(Path(root))
            except (OSError, UserError) as exc:
                raise UserError(f"data.root={root}: the planner counts each fold's images from "
                                f"the prepared data, which it cannot read ({exc}); plan where "
                                "the data is, or prepare it first") from None
        fold = get_fold(self._manifests[root], spec.data, spec.seed)  # type: ignore[arg-type]
        return len(fold.train), len(fold.val), len(fold.test)


def _run_estimate(p: PlannedRun, stage: str, costs: _Costs, limit_s: float | None,
                  sources: dict[str, Spec]) -> RunEstimate:
    spec = p.spec
    t = spec.train
    devices = max(1, spec.slurm.gpus_per_node) * max(1, spec.slurm.nodes)
    if spec.kind == "adapt":
        source = sources.get(spec.adapt.source_run or "", spec)
        per_sample, startup = costs.train(source, "multiclass")
        _, _, held_out = costs.split_sizes(source)
        steps = spec.adapt.steps if spec.adapt.shots else 0
        train_s = steps * per_sample * t.batch_size
        eval_s = (held_out - spec.adapt.shots) * costs.infer(source)
    else:
        kind = "multiclass" if spec.kind == "probe" else spec.kind
        per_sample, startup = costs.train(spec, kind)
        steps = t.steps if spec.kind != "probe" else 0
        samples = t.batch_size * t.accum_steps  # meta: one task per micro-step
        train_s = steps * per_sample * samples
        _, n_val, n_test = costs.split_sizes(spec) if spec.kind != "probe" else (0, 0, 0)
        validations = steps // t.val_every_steps if t.val_every_steps else 0
        eval_s = validations * n_val * costs.infer(spec) + (
            n_test * costs.infer(spec) if spec.kind != "mae" else 0.0)
    est = RunEstimate(p.run_id, stage, steps, train_s, eval_s, startup, devices)
    if limit_s:
        usable = limit_s - spec.slurm.signal_delay_s - startup
        if usable <= 0:
            raise UserError(f"--time-limit {limit_s:.0f} s leaves no time to train after the "
                            f"job's startup ({startup:.0f} s) and stop signal")
        est.executions = max(1, math.ceil((train_s + eval_s) / usable))
    return est


def _schedule(order: list[str], study: Study, stages: dict[str, list[RunEstimate]],
              gpus: int) -> None:
    """Greedy list schedule, as a FIFO scheduler would run the arrays: of the stages whose
    upstream stages are placed, the one that becomes eligible first (file order on ties) puts
    each run on the devices that free up first."""
    free = [(0.0, i) for i in range(gpus)]
    heapq.heapify(free)
    ends: dict[str, float] = {}
    waiting = list(order)
    while waiting:
        placeable = [n for n in waiting if all(u in ends for u in study.stages[n].upstream())]
        ready = {n: max((ends[u] for u in study.stages[n].upstream()), default=0.0)
                 for n in placeable}
        name = min(placeable, key=lambda n: (ready[n], order.index(n)))
        waiting.remove(name)
        for run in stages[name]:
            need = min(run.devices, gpus)
            taken = [heapq.heappop(free) for _ in range(need)]
            run.start_s = max(ready[name], max(t for t, _ in taken))
            run.slot = taken[0][1]
            for _, slot in taken:
                heapq.heappush(free, (run.end_s, slot))
        ends[name] = max((r.end_s for r in stages[name]), default=ready[name])


def _critical_path(order: list[str], study: Study,
                   stages: dict[str, list[RunEstimate]]) -> tuple[list[str], float]:
    """The chain of stages that bounds the wall clock on unlimited devices."""
    finish: dict[str, tuple[float, list[str]]] = {}
    for name in order:
        longest = max((r.total_s for r in stages[name]), default=0.0)
        before = max((finish[u] for u in study.stages[name].upstream()),
                     default=(0.0, []), key=lambda f: f[0])
        finish[name] = (before[0] + longest, [*before[1], name])
    end, path = max(finish.values(), key=lambda f: f[0])
    return path, end


def plan_study(study: Study, planned: dict[str, list[PlannedRun]], root: Path, *, gpus: int,
               hardware: str | None = None, time_limit_s: float | None = None,
               throughput: float | None = None, chain: bool = False) -> PlanResult:
    """`chain`: the runs run one after another in one process (`hcli submit pipeline --local`),
    which starts (interpreter, imports) once instead of once per run and job."""
    costs = _Costs(root, hardware, throughput)
    specs = {p.run_id: p.spec for runs in planned.values() for p in runs}
    estimates = {
        name: [_run_estimate(p, name, costs, time_limit_s, specs) for p in runs]
        for name, runs in planned.items()
    }
    order = list(planned)
    if chain:
        gpus = 1
        first = next((r for name in order for r in estimates[name]), None)
        for r in (r for runs in estimates.values() for r in runs if r is not first):
            r.startup_s = 0.0
        costs.assumptions.append("one local chain: one device, the process starts once")
    _schedule(order, study, estimates, gpus)
    path, critical = _critical_path(order, study, estimates)
    basis = ", ".join(sorted(costs.bases)) or "--throughput"
    stages = [
        StageEstimate(name, study.stages[name].kind, estimates[name],
                      min(len(estimates[name]), study.stages[name].max_parallel or gpus), basis)
        for name in order
    ]
    return PlanResult(study.study, gpus, time_limit_s, basis, stages, path, critical,
                      costs.assumptions)
