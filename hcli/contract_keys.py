"""Key names of the run-folder files that `hcli status` reads, as plain strings.

`hcli status` must start in well under 200 ms and so cannot import pydantic; it reads state.json
and progress.json as plain dicts. These tuples name the same fields as the models in
`hcli.contract` (tests/test_contract.py holds them equal, and holds status's keys within them),
so a field renamed in the contract cannot silently leave status reading the old name.
"""

__all__ = ["CURRICULUM_KEYS", "HARDWARE_KEYS", "JOB_KEYS", "LATEST_KEYS", "PROGRESS_KEYS",
           "REQUEUE_KEYS", "STATE_KEYS"]

STATE_KEYS = (
    "run_id", "kind", "backbone", "name", "state", "attempt", "restarts", "executor", "jobs",
    "requeues", "created_at", "updated_at", "message", "host", "pid",
)
JOB_KEYS = (
    "job_id", "executor", "submitted_at", "attempt", "resumed", "dependency", "stdout", "stderr",
    "starts", "ends", "hardware",
)
HARDWARE_KEYS = ("host", "nodes", "nodelist", "world_size", "gpus", "gpu_name")
REQUEUE_KEYS = ("at", "step", "reason", "job_id")
PROGRESS_KEYS = (
    "step", "total_steps", "epoch", "phase", "eta_s", "heartbeat", "latest", "best_val_miou",
    "best_step", "curriculum",
)
# progress.json's "curriculum" (status shows "coarse 2/3").
CURRICULUM_KEYS = ("stage", "number", "stages", "began")
# Figures the multiclass job keeps in progress.json's "latest" (status shows val_miou).
LATEST_KEYS = ("loss", "val_miou")
