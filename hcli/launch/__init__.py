"""Launching runs: plan (spec → run ids), submit idempotently, on SLURM (submitit) or locally."""

from hcli.launch._plan import PlannedRun, expand_sweep, plan_runs
from hcli.launch._submit import SubmitOutcome, resume_run, submit_runs

__all__ = [
    "PlannedRun",
    "SubmitOutcome",
    "expand_sweep",
    "plan_runs",
    "resume_run",
    "submit_runs",
]
