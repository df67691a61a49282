"""results.json: the kind's final figures, checked against its results model, plus the compute
the run used over every execution (requeues and resumes included), from state.json."""

from __future__ import annotations

from typing import Any

from hcli.contract import State, compute_from_state, dump, require_complete, results_model
from hcli.fsutil import atomic_write_json
from hcli.runs import Run, now_iso

__all__ = ["write_results"]


def write_results(
    run: Run, payload: dict[str, Any], *, device: str, world_size: int
) -> dict[str, Any]:
    """Write `payload` as the run's results.json and return what was written.

    `payload["kind"]` picks the results model its kind declares (hcli/kinds). For a model
    with `compute`, `payload["compute"]`, if given, is replaced by the accounts of state.json:
    wall seconds, node-hours and GPU-hours per execution and in total, the current execution
    counted up to now. Every field of the model must be in the payload (ValueError naming the
    missing ones otherwise): a field the writer forgets would otherwise read as a default.
    """
    model = results_model(str(payload.get("kind")))
    full = dict(payload)
    if "compute" in model.model_fields:
        state = State.model_validate(run.state())
        compute = compute_from_state(state, now=now_iso(), device=device, world_size=world_size)
        full["compute"] = dump(compute)
    require_complete(model, full)
    results = dump(model.model_validate(full))
    atomic_write_json(run.path / "results.json", results)
    return results
