"""Which experiment a checkpoint belongs to, read from its completeness marker (no torch).

Every checkpoint's `.done` marker carries `{"run_id", "spec_id"}`: the run folder it was written in
and a hash of the spec it was written under (`checkpoint_identity`). Resuming refuses a
checkpoint whose identity differs from the run's, both in `hcli resume` (before anything is
queued) and in the job when it loads the state, so a run can never continue another experiment's
training (a copied checkpoint folder, a spec edited by hand).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hcli.errors import RunError

__all__ = [
    "CheckpointIdentityError",
    "checkpoint_identity",
    "identity_mismatch",
    "check_run_checkpoints",
]


class CheckpointIdentityError(RunError):
    """A checkpoint written by another run or under another spec."""


def checkpoint_identity(run_dir: Path) -> dict[str, str]:
    """What a checkpoint of the run in `run_dir` records (and what loading expects).

    `spec_id` hashes the identity fields of `spec.yaml` *as written* (execution-only keys and
    `name` left out), not the run id recomputed by today's code: a later release that adds a
    field or changes a default must not make a run refuse its own checkpoints, while an edit of
    the spec file by hand must.
    """
    import hashlib
    import json

    import yaml

    from hcli.identity import execution_only_keys

    run_dir = Path(run_dir)
    raw = yaml.safe_load((run_dir / "spec.yaml").read_text()) or {}
    raw.pop("name", None)
    for key in execution_only_keys():
        *parents, leaf = key.rstrip(".").split(".")
        node = raw
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(leaf, None)
    canonical = json.dumps(raw, sort_keys=True, separators=(",", ":"), default=str)
    return {"run_id": run_dir.name, "spec_id": hashlib.sha1(canonical.encode()).hexdigest()[:12]}


def identity_mismatch(
    marker: Mapping[str, Any], expected: Mapping[str, str], path: Path
) -> str | None:
    """Why the checkpoint at `path` (its marker's content) is not this experiment's, or None."""
    found = marker.get("identity")
    if not isinstance(found, Mapping):
        return (
            f"checkpoint {path} records no run identity (written by another hcli version or "
            "copied in); move it out of the checkpoints folder or start over with `--force`"
        )
    for key in ("run_id", "spec_id"):
        if found.get(key) != expected.get(key):
            return (
                f"checkpoint {path} belongs to another experiment ({key} {found.get(key)!r}, "
                f"this run's is {expected.get(key)!r}); move it out of {path.parent} or start "
                "over with `--force`"
            )
    return None


def check_run_checkpoints(checkpoints: Path, expected: Mapping[str, str]) -> None:
    """Raise when the newest marked checkpoint of a run belongs to another experiment.

    Only the newest marker counts: it is the one a resume would load (older ones are the run's
    own history or pruned soon).
    """
    markers = sorted(Path(checkpoints).glob("step-*.pt.done"), reverse=True)
    if not markers:
        return
    try:
        marker = json.loads(markers[0].read_text())
    except (OSError, ValueError):
        return  # a damaged marker is skipped at load time like a damaged checkpoint
    problem = identity_mismatch(marker, expected, markers[0].with_suffix(""))
    if problem:
        raise CheckpointIdentityError(problem)
