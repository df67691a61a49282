"""Idempotent submission: one run per identity, one job per run, however often it is asked.

Every decision about a run happens under its lock (`hcli.runs.run_lock`), so ten concurrent
`hcli submit` of the same spec create one folder and one job. Decisions for all runs are taken
before anything is submitted, so a refused run never leaves half a sweep behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from hcli.ckpt_identity import check_run_checkpoints, checkpoint_identity
from hcli.errors import ClusterError, RunError, UserError
from hcli.launch._local import start_background
from hcli.launch._plan import PlannedRun
from hcli.launch._slurm import make_executor, render_sbatch
from hcli.runs import ACTIVE_STATES, Run, create_run, find_run, now_iso, run_lock
from hcli.scheduler import job_alive, max_array_size, scheduler_states

__all__ = [
    "ArrayPlan",
    "Mode",
    "SubmitOutcome",
    "dependency_for",
    "plan_submissions",
    "resume_run",
    "submit_runs",
]

Mode = Literal["slurm", "local", "foreground"]
# slurm.conf's default MaxArraySize, for a dry run where no scontrol answers.
SLURM_DEFAULT_MAX_ARRAY_SIZE = 1001


@dataclass
class ArrayPlan:
    """One sbatch submission: a job array of `members` (task i is members[i]), or one plain job
    when a single run is submitted. The dry run renders it; `_launch_slurm` submits it."""

    members: list[PlannedRun]
    folder: Path  # submitit's folder: the run's logs for one job, a shared one for an array
    job_name: str
    parallelism: int | None  # the array's %N
    max_array_size: int
    max_array_size_from: str  # "scontrol" or why the default was used
    sbatch: str | None = None

    @property
    def is_array(self) -> bool:
        return len(self.members) > 1

    def array_range(self) -> str | None:
        """What `--array=` says (submitit's form: `0-{n-1}%{min(n, parallelism)}`)."""
        n = len(self.members)
        return f"0-{n - 1}%{min(n, self.parallelism or n)}" if self.is_array else None


@dataclass
class SubmitOutcome:
    run_id: str
    action: Literal["submitted", "exists", "dry-run", "refused"]
    state: str
    job_id: str | None = None
    run_dir: Path | None = None
    sbatch: str | None = None
    spec: dict = field(default_factory=dict)
    array: ArrayPlan | None = None  # dry run: the submission this run would be part of
    task: int | None = None  # dry run: its index in that array
    note: str | None = None  # dry run: why it would be skipped or refused


def dependency_for(root: Path, refs: list[str]) -> str | None:
    """`afterok:` on the current jobs of the runs named; completed runs need no waiting."""
    job_ids = []
    for ref in refs:
        run = find_run(root, ref)
        state = run.state()
        if state["state"] == "COMPLETED":
            continue
        if state["state"] in ("FAILED", "CANCELLED"):
            raise RunError(
                f"--after {ref}: that run is {state['state']}; resume it first (hcli resume {ref})"
            )
        job = run.job_id
        if not job or job.startswith(("local-", "foreground")):
            raise RunError(
                f"--after {ref}: that run has no SLURM job to wait for; submit it with --cluster"
            )
        job_ids.append(job)
    return "afterok:" + ":".join(job_ids) if job_ids else None


def _archive_attempt(run: Run) -> None:
    """`--force`: move the previous attempt's outputs aside and start clean."""
    state = run.state()
    dest = run.path / "attempts" / str(state.get("attempt", 1))
    dest.mkdir(parents=True, exist_ok=True)
    for name in (
        "checkpoints",
        "logs",
        "tb",
        "figures",
        "progress.json",
        "metrics.jsonl",
        "results.json",
    ):
        src = run.path / name
        if src.exists():
            shutil.move(str(src), str(dest / name))
    (run.path / "checkpoints").mkdir()
    (run.path / "logs").mkdir()
    run.update_state(
        state="PENDING", attempt=state.get("attempt", 1) + 1, restarts=0, message=None, requeues=[]
    )


def submit_runs(
    planned: list[PlannedRun],
    root: Path,
    *,
    mode: Mode,
    dry_run: bool = False,
    force: bool = False,
    after: list[str] | None = None,
    max_parallel: int | None = None,
    defer: bool = False,
) -> list[SubmitOutcome]:
    """Create (or reuse) the runs' folders and queue a job for each that needs one.

    `defer`: create the folders but start nothing and record no job (a pipeline run locally
    starts all its stages' runs in one chain afterwards)."""
    dependency = dependency_for(root, after) if after else None
    if dependency and mode != "slurm":
        raise UserError("--after needs --cluster: local runs cannot wait for SLURM jobs")
    if dry_run:
        return _dry_run(planned, root, dependency, force, max_parallel)

    outcomes: list[SubmitOutcome] = []
    with contextlib.ExitStack() as stack:
        for p in sorted(planned, key=lambda p: p.run_id):  # one order: no deadlock between sweeps
            stack.enter_context(run_lock(root, p.run_id))
        fresh: list[tuple[PlannedRun, Run, bool]] = []
        for p in planned:
            run_dir = root / p.run_id
            if not (run_dir / "state.json").exists():
                fresh.append((p, None, True))  # type: ignore[arg-type]
                continue
            run = Run(run_dir)
            state = run.state()
            current = state["state"]
            # BLOCKED: a pipeline run whose upstream failed before it started; it never ran.
            waiting = current == "BLOCKED" or current == "PENDING" and not state.get("jobs")
            if waiting:
                fresh.append((p, run, False))
            elif current in ACTIVE_STATES and job_alive(run.job_id, state=state) is False:
                raise RunError(
                    f"run {p.run_id} died (state.json says {current}, but job {run.job_id} is "
                    f"gone): continue it with `hcli resume {p.run_id}`, or cancel it first "
                    "(hcli cancel) and start it over with --force"
                )
            elif current in ACTIVE_STATES and force:
                raise RunError(
                    f"run {p.run_id} is {current}; cancel it first (hcli cancel {p.run_id})"
                )
            elif current in ACTIVE_STATES or (current == "COMPLETED" and not force):
                outcomes.append(SubmitOutcome(p.run_id, "exists", current, run.job_id, run_dir))
            elif force:
                fresh.append((p, run, False))
            else:
                raise RunError(
                    f"run {p.run_id} is {current}: continue it with `hcli resume {p.run_id}`, or "
                    "start it over with --force"
                )
        created: list[Run] = []
        runs: list[Run] = []
        try:
            made = _create_runs(root, [p for p, _, is_new in fresh if is_new], created)
            for p, run, is_new in fresh:
                if is_new:
                    run = made[p.run_id]
                elif run.state()["state"] == "BLOCKED":
                    run.update_state(state="PENDING", message=None)
                elif run.state()["state"] != "PENDING":
                    _archive_attempt(run)
                runs.append(run)
            if defer:
                return [*outcomes, *(SubmitOutcome(r.run_id, "submitted", "PENDING", None, r.path)
                                     for r in runs)]
            launched = _launch([p for p, _, _ in fresh], runs, root, mode, dependency, max_parallel)
        except BaseException:
            for run in created:  # never leave a run folder without a job behind
                shutil.rmtree(run.path, ignore_errors=True)
            raise

        def record(item: tuple[tuple[PlannedRun, Run, bool], Run, tuple[str, dict]]
                   ) -> SubmitOutcome:
            (p, _, _), run, (job_id, logs) = item
            run.add_job(job_id, mode if mode != "foreground" else "local", **logs,
                        **({"dependency": dependency} if dependency else {}))
            return SubmitOutcome(p.run_id, "submitted", "PENDING", job_id, run.path)

        outcomes.extend(_each(record, zip(fresh, runs, launched, strict=True)))
    return outcomes


# Run-folder files are written durably, one fsync each (hcli.fsutil). From several threads the
# filesystem commits its journal once for many of them (group commit): 81 such files of 27 runs
# took 0.3-0.6 s one after another on a loaded machine, 0.05 s from 8 threads, the largest wait
# of `hcli submit` of a sweep (benchmarks/bench_adapt_submit.py). The rest stays under the GIL.
_WRITERS = 8
_T = TypeVar("_T")
_R = TypeVar("_R")


def _each(fn: Callable[[_T], _R], items: Iterable[_T]) -> list[_R]:
    """`[fn(x) for x in items]`, in threads. Every call has finished when this returns or
    raises (the first error), so a caller's cleanup sees everything that was made."""
    todo = list(items)
    if len(todo) < 2:
        return [fn(x) for x in todo]
    with ThreadPoolExecutor(min(_WRITERS, len(todo))) as pool:
        return list(pool.map(fn, todo))


def _create_runs(root: Path, planned: list[PlannedRun], created: list[Run]) -> dict[str, Run]:
    """Folders of the new runs `planned`: the first with the code snapshot, the others with
    hard links to it (the same code for every run of one submission). Each is appended to
    `created` once it exists, so the caller removes every one if anything fails."""
    if not planned:
        return {}
    first = create_run(root, planned[0].run_id, planned[0].spec)
    created.append(first)
    link_code = _SnapshotLinks(first.path / "code")

    def make(p: PlannedRun) -> Run:
        run = create_run(root, p.run_id, p.spec, snapshot=False)
        created.append(run)  # list.append is atomic
        link_code(run.path / "code")
        return run

    return {r.run_id: r for r in [first, *_each(make, planned[1:])]}


class _SnapshotLinks:
    """Hard links of one code snapshot (never written after submission) into other run folders;
    copies across devices.

    A copy per run was the largest cost of submitting a 27-run sweep, and `shutil.copytree` of
    links still a fifth of it (it lists and stats the tree again for every run): the tree is
    listed once here (benchmarks/bench_adapt_submit.py)."""

    def __init__(self, src: Path) -> None:
        self.src = str(src)
        self.dirs: list[str] = []
        self.files: list[str] = []
        for folder, _, names in os.walk(self.src):  # top-down: a folder before its contents
            rel = os.path.relpath(folder, self.src)
            if rel != ".":
                self.dirs.append(rel)
            self.files.extend(os.path.join(rel, n) if rel != "." else n for n in names)

    def __call__(self, dest: Path) -> None:
        base = str(dest)
        os.mkdir(base)
        for rel in self.dirs:
            os.mkdir(os.path.join(base, rel))
        for rel in self.files:
            a, b = os.path.join(self.src, rel), os.path.join(base, rel)
            try:
                os.link(a, b)
            except OSError:
                shutil.copy2(a, b)


def _launch(
    planned: list[PlannedRun],
    runs: list[Run],
    root: Path,
    mode: Mode,
    dependency: str | None,
    max_parallel: int | None,
) -> list[tuple[str, dict]]:
    """Start the runs; returns (job id, where its logs go) per run."""
    if not runs:
        return []
    if mode == "foreground":
        return [("foreground", {})] * len(runs)
    if mode == "local":
        return [
            (jid, {"stdout": str(r.logs / "job.out"), "stderr": str(r.logs / "job.err")})
            for jid, r in zip(_launch_local(runs, max_parallel), runs, strict=True)
        ]
    return _launch_slurm(planned, runs, root, dependency, max_parallel)


def _launch_local(runs: list[Run], max_parallel: int | None) -> list[str]:
    chains = max(1, min(max_parallel or 1, len(runs)))
    ids: dict[Path, str] = {}
    for c in range(chains):
        chain = [r.path for r in runs[c::chains]]
        job_id = start_background(chain, chain[0] / "logs")
        ids.update({path: job_id for path in chain})
    return [ids[r.path] for r in runs]


def _launch_slurm(
    planned: list[PlannedRun],
    runs: list[Run],
    root: Path,
    dependency: str | None,
    max_parallel: int | None,
) -> list[tuple[str, dict]]:
    from jobs.entry import JobTarget

    def described(job: Any) -> tuple[str, dict]:
        return job.job_id, {"stdout": str(job.paths.stdout), "stderr": str(job.paths.stderr)}

    paths = {r.run_id: r.path for r in runs}
    try:
        ids: list[tuple[str, dict]] = []
        # The plans the dry run shows, submitted as they are.
        for plan in plan_submissions(planned, root, max_parallel):
            ex = make_executor(
                plan.members[0].spec,  # an array shares one folder: the first run's slurm section
                plan.folder,
                job_name=plan.job_name,
                runs_root=root,
                dependency=dependency,
                array_parallelism=plan.parallelism,
            )
            targets = [JobTarget(paths[m.run_id]) for m in plan.members]
            if not plan.is_array:
                ids.append(described(ex.submit(targets[0])))
                continue
            with ex.batch():
                jobs = [ex.submit(t) for t in targets]
            ids.extend(described(j) for j in jobs)
        return ids
    except (OSError, RuntimeError) as exc:  # submitit raises RuntimeError on sbatch failure
        why = str(exc).strip().splitlines()[-1] if str(exc).strip() else repr(exc)
        raise ClusterError(f"sbatch failed: {why}") from exc


def plan_submissions(
    planned: list[PlannedRun], root: Path, max_parallel: int | None
) -> list[ArrayPlan]:
    """How `planned` (the runs to submit, in order) go to SLURM: one job for a single run, else
    arrays of at most the cluster's MaxArraySize tasks, each capped at `max_parallel` at once."""
    if not planned:
        return []
    found = max_array_size(default=0)
    limit, source = (
        (found, "scontrol")
        if found
        else (SLURM_DEFAULT_MAX_ARRAY_SIZE, "SLURM's default; no scontrol answered here")
    )
    if len(planned) == 1:
        (p,) = planned
        return [ArrayPlan([p], root / p.run_id / "logs", p.run_id, None, limit, source)]
    plans = []
    for start in range(0, len(planned), limit):
        part = planned[start : start + limit]
        # Named by its members, so the dry run can show the folder the submission will use.
        digest = hashlib.sha1("\n".join(p.run_id for p in part).encode()).hexdigest()[:10]
        plans.append(ArrayPlan(
            part, root / ".arrays" / digest, f"hcli-array-{len(part)}",
            max_parallel or len(part), limit, source,
        ))
    return plans


def _dry_run(
    planned: list[PlannedRun],
    root: Path,
    dependency: str | None,
    force: bool,
    max_parallel: int | None,
) -> list[SubmitOutcome]:
    """What `submit_runs` would do, decided as it decides (without locks): which runs exist and
    are skipped, which would be refused, and the sbatch scripts of the rest, arrays included."""
    outcomes: dict[str, SubmitOutcome] = {}
    fresh: list[PlannedRun] = []
    existing = [Run(root / p.run_id) for p in planned if (root / p.run_id / "state.json").exists()]
    # One squeue for the whole sweep, not one per member recorded active.
    witness = scheduler_states(
        r.job_id for r in existing if r.job_id and r.state()["state"] in ACTIVE_STATES
    )
    for p in planned:
        run_dir = root / p.run_id
        spec = p.spec.model_dump(mode="json")
        if not (run_dir / "state.json").exists():
            fresh.append(p)
            outcomes[p.run_id] = SubmitOutcome(p.run_id, "dry-run", "NEW", None, run_dir,
                                               spec=spec)
            continue
        run = Run(run_dir)
        state = run.state()
        current = state["state"]
        waiting = current == "BLOCKED" or current == "PENDING" and not state.get("jobs")
        alive = job_alive(run.job_id, witness, state) if current in ACTIVE_STATES else None
        died = not waiting and alive is False
        if waiting or (force and current not in ACTIVE_STATES):
            fresh.append(p)
            outcomes[p.run_id] = SubmitOutcome(p.run_id, "dry-run", current, None, run_dir,
                                               spec=spec)
        elif died:
            outcomes[p.run_id] = SubmitOutcome(
                p.run_id, "refused", current, run.job_id, run_dir, spec=spec,
                note=f"{current} but job {run.job_id} is gone: the submission would stop here; "
                f"`hcli resume {p.run_id}`",
            )
        elif current in ACTIVE_STATES and not force or current == "COMPLETED":
            outcomes[p.run_id] = SubmitOutcome(
                p.run_id, "exists", current, run.job_id, run_dir, spec=spec,
                note=f"already {current} (job {run.job_id}); skipped",
            )
        else:
            why = (
                f"cancel it first (hcli cancel {p.run_id})" if current in ACTIVE_STATES
                else f"`hcli resume {p.run_id}`, or --force to start it over"
            )
            outcomes[p.run_id] = SubmitOutcome(
                p.run_id, "refused", current, run.job_id, run_dir, spec=spec,
                note=f"{current}: the submission would stop here; {why}",
            )
    for plan in plan_submissions(fresh, root, max_parallel):
        plan.sbatch = render_sbatch(
            plan.members[0].spec, plan.folder, job_name=plan.job_name, runs_root=root,
            dependency=dependency, array_parallelism=plan.parallelism,
            array_size=len(plan.members),
        )
        for index, member in enumerate(plan.members):
            o = outcomes[member.run_id]
            o.array, o.sbatch = plan, plan.sbatch
            o.task = index if plan.is_array else None
    return [outcomes[p.run_id] for p in planned]


def _wait_until_ended(run: Run, state: dict, timeout_s: float = 60.0) -> None:
    """Let a cancelled job finish saving before a new one starts from its checkpoints.

    After `hcli cancel` the job still writes its stop checkpoint (SLURM shows it COMPLETING for
    up to KillWait seconds); a new job started meanwhile would resume from an older checkpoint
    while the old one still writes into the same folder.
    """
    import time

    deadline = time.monotonic() + timeout_s
    while job_alive(run.job_id, state=state) is True:
        if time.monotonic() > deadline:
            raise RunError(
                f"run {run.run_id} is {state['state']} but its job {run.job_id} is still ending "
                f"after {timeout_s:.0f} s; try `hcli resume {run.run_id}` again shortly"
            )
        time.sleep(1.0)


def resume_run(root: Path, ref: str, *, mode: Mode, after: list[str] | None = None,
               defer: bool = False) -> SubmitOutcome:
    """Continue a stopped, failed or cancelled run from its newest checkpoint; `after` and
    `defer` as for `submit_runs`."""
    run = find_run(root, ref)
    state = run.state()
    if state["state"] not in ACTIVE_STATES:
        # Outside the lock: the ending job takes it to record how it stopped.
        _wait_until_ended(run, state)
    with run_lock(root, run.run_id):
        state = run.state()
        current = state["state"]
        if current == "COMPLETED":
            raise RunError(
                f"run {run.run_id} is COMPLETED; use `hcli submit ... --force` to redo it"
            )
        if current in ACTIVE_STATES and job_alive(run.job_id, state=state) is not False:
            raise RunError(
                f"run {run.run_id} is {current} (job {run.job_id}); cancel it first "
                f"(hcli cancel {run.run_id}) or wait for it"
            )
        spec = run.spec()
        # Refused here, before anything is queued; the job refuses it again when it loads.
        check_run_checkpoints(run.checkpoints, checkpoint_identity(run.path))
        dependency = dependency_for(root, after) if after else None
        run.update_state(state="PENDING", message=f"resumed at {now_iso()}")
        if defer:
            return SubmitOutcome(run.run_id, "submitted", "PENDING", None, run.path)
        job_id, logs = _launch([PlannedRun(run.run_id, spec)], [run], root, mode, dependency,
                               None)[0]
        run.add_job(job_id, mode if mode != "foreground" else "local", resumed=True, **logs,
                    **({"dependency": dependency} if dependency else {}))
    return SubmitOutcome(run.run_id, "submitted", "PENDING", job_id, run.path)
