"""Initialising a run's encoder from an earlier run (pretraining → training chains).

Scientific guard: the earlier run must not have trained on this run's test images (a held-out
domain seen by an earlier stage leaks into the result) unless the spec says so with
`model.init_allow_test_overlap: true`.
"""

from __future__ import annotations

from pathlib import Path

import torch

from hcli.data.manifest import Manifest
from hcli.data.splits import get_fold
from hcli.errors import SpecError
from hcli.runs import Run, find_run
from hcli.spec import Spec

__all__ = ["load_init_weights"]


def _source(ref: str, runs_root: Path) -> tuple[Path, Run | None]:
    path = Path(ref)
    if path.is_file():
        return path, None
    run = find_run(runs_root, ref)
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
    path, run = _source(ref, runs_root)
    if run is not None and not spec.model.init_allow_test_overlap:
        source_spec = run.spec()
        seen = set(get_fold(manifest, source_spec.data, source_spec.seed).train)
        leaked = seen & set(test_ids)
        if leaked:
            raise SpecError(
                f"model.init_from={ref} trained on {len(leaked)} of this run's test images "
                f"(e.g. {sorted(leaked)[0]}); hold the same domain out in both runs, or set "
                "model.init_allow_test_overlap=true to accept the leak"
            )
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
