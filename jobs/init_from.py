"""Initialising a run's encoder from an earlier run (pretraining → training chains).

Scientific guard: no run of the initialisation chain may have trained or validated on this run's
test images (a held-out domain seen by an earlier stage leaks into the result) unless the spec
says so with `model.init_allow_test_overlap: true`. The guard reads each source's provenance.json
(jobs/provenance.py); only for an older source without one does it re-derive the source's fold.
"""

from __future__ import annotations

from pathlib import Path

import torch

from hcli.data.manifest import Manifest
from hcli.errors import SpecError
from hcli.runs import Run, find_run
from hcli.spec import Spec
from jobs.provenance import check_init_leakage

__all__ = ["load_init_weights"]


def _source(ref: str, runs_root: Path) -> tuple[Path, Run | None]:
    path = Path(ref)
    if path.is_file():
        return path, None
    run = find_run(runs_root, ref)
    # A pretraining run's product (kind=mae): the selected encoder alone, segmenter key names.
    if (run.path / "encoder.pt").is_file():
        return run.path / "encoder.pt", run
    for name in ("best.pt",):
        if (run.checkpoints / name).is_file():
            return run.checkpoints / name, run
    done = sorted(run.checkpoints.glob("step-*.pt.done"))
    if not done:
        raise SpecError(f"model.init_from={ref}: run {run.run_id} has no checkpoint yet")
    return done[-1].with_suffix(""), run


def load_init_weights(model: torch.nn.Module, spec: Spec, manifest: Manifest, test_ids: list[str],
                      runs_root: Path) -> str:
    """Copy the encoder weights of `spec.model.init_from` into `model`; returns what was loaded."""
    ref = spec.model.init_from
    assert ref is not None
    path, _ = _source(ref, runs_root)
    check_init_leakage(spec, test_ids, runs_root, manifest)
    state = torch.load(path, map_location="cpu", weights_only=True)
    weights = state.get("model", state)
    encoder = {k: v for k, v in weights.items() if k.startswith("encoder.")}
    if not encoder:
        raise SpecError(f"model.init_from={ref}: {path} holds no encoder weights")
    missing, unexpected = model.load_state_dict(encoder, strict=False)
    if unexpected or any(k.startswith("encoder.") for k in missing):
        raise SpecError(f"model.init_from={ref}: encoder shapes differ from this model's; use a "
                        "run with the same model.backbone and encoder_kwargs")
    return str(path)
