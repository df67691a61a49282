"""Checks before queueing: what would make a job fail in its first seconds, found on the submitting
machine instead, before a run folder exists or a job waits hours in the queue for nothing.

The job runs the same checks when it starts (`on_node=True`), so a run submitted with
`slurm.skip_checks` (data visible only from the compute nodes) fails there with the same message.
Torch-free: `hcli submit` must not pay for torch to learn that the data is missing.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from hcli.errors import DataError, SpecError, UserError

if TYPE_CHECKING:
    from hcli.data.manifest import Manifest
    from hcli.data.splits import Fold
    from hcli.spec import Spec

__all__ = ["preflight"]

_T = TypeVar("_T")

# The files a timm model's weights go by on the Hugging Face hub (jobs/models/encoders.py).
_HUB_FILENAMES = ("model.safetensors", "pytorch_model.bin")


def preflight(
    spec: Spec,
    runs_root: Path,
    *,
    slurm: bool = False,
    on_node: bool = False,
    memo: dict[tuple[Any, ...], Any] | None = None,
) -> None:
    """Raise a UserError naming the field or file and the fix if `spec` cannot start.

    `slurm`: the job goes through sbatch, so its container image must exist here.
    `on_node`: called by the job as it starts; checks even when `slurm.skip_checks` is set (that
    flag only moves the checks to the node) and looks the weights up exactly, torch being loaded.
    `memo`: one dict shared by the runs of a sweep, so each check runs once per distinct value
    of what it reads (27 adaptation runs of 3 sources read 3 folds of one manifest).
    """
    if spec.slurm.skip_checks and not on_node:
        return
    if slurm and not on_node:
        _once(memo, ("container", spec.slurm.container), lambda: _check_container(spec))
    if spec.kind == "probe":  # the probe reports on the data and the node; it needs neither
        return
    manifest = _once(memo, ("data", spec.data.root), lambda: _check_data(spec))
    fold = _once(memo, ("fold", spec.data.model_dump_json(), spec.seed),
                 lambda: _check_fold(spec, manifest))
    if spec.model.init_from:  # reads the whole spec (its leakage rule): never shared
        _check_init_from(spec, manifest, fold.test, runs_root, on_node=on_node)
    if spec.model.pretrained is not False:
        _once(memo, ("weights", spec.model.backbone, spec.data.crop_size,
                     str(spec.model.pretrained)),
              lambda: _check_weights(spec, on_node=on_node))


def _once(memo: dict[tuple[Any, ...], Any] | None, key: tuple[Any, ...],
          check: Callable[[], _T]) -> _T:
    """`check()`, or what it returned or raised the first time for `key` (its inputs)."""
    if memo is None:
        return check()
    if key not in memo:
        try:
            memo[key] = (check(), None)
        except UserError as exc:
            memo[key] = (None, exc)
    value, error = memo[key]
    if error is not None:
        raise error
    return value


def _check_container(spec: Spec) -> None:
    image = spec.slurm.container
    if image is not None and not image.is_file():
        raise SpecError(
            f"slurm.container={image} does not exist; build it "
            f"(apptainer build {image} containers/Apptainer.def) or fix the path"
        )


def _check_data(spec: Spec) -> Manifest:
    from hcli.data.manifest import load_manifest

    return load_manifest(spec.data.root)  # its DataError names the file and `hcli data prepare`


def _check_fold(spec: Spec, manifest: Manifest) -> Fold:
    from hcli.data.splits import get_fold

    fold = get_fold(manifest, spec.data, spec.seed)
    sizes = {"train": len(fold.train), "val": len(fold.val), "test": len(fold.test)}
    # The job validates on the test ids when val is empty by choice (data.val_fraction=0).
    needed = ("train", "val", "test") if spec.data.val_fraction > 0 else ("train", "test")
    empty = [split for split in needed if not sizes[split]]
    if empty:
        counts = ", ".join(f"{k} {v}" for k, v in sizes.items())
        raise DataError(
            f"data.fold={spec.data.fold} ({fold.name}) has no {' or '.join(empty)} images in "
            f"{spec.data.root} ({counts}); pick another data.fold or data.protocol "
            f"(hcli data splits {spec.data.root} --protocol {spec.data.protocol})"
        )
    return fold


def _check_init_from(
    spec: Spec, manifest: Manifest, test_ids: list[str], runs_root: Path, *, on_node: bool
) -> None:
    """The rules of jobs/init_from.py, without loading the checkpoint."""
    from hcli.runs import ACTIVE_STATES, find_run

    ref = spec.model.init_from
    assert ref is not None
    if Path(ref).is_file():
        return
    try:
        run = find_run(runs_root, ref)
    except UserError as exc:
        raise SpecError(
            f"model.init_from={ref}: {exc}; give a run id, a run folder or a checkpoint file"
        ) from None
    has_checkpoint = (run.checkpoints / "best.pt").is_file() or any(
        run.checkpoints.glob("step-*.pt.done")
    )
    # A run still queued or training gets its checkpoints later (a chain submitted with --after);
    # by the time this run starts on its node they must exist.
    if not has_checkpoint and (on_node or run.state().get("state") not in ACTIVE_STATES):
        raise SpecError(f"model.init_from={ref}: run {run.run_id} has no checkpoint yet")
    # The job's own guard (torch-free): the whole init chain, from each run's provenance.json.
    from jobs.provenance import check_init_leakage

    check_init_leakage(spec, test_ids, runs_root, manifest)


def _check_weights(spec: Spec, *, on_node: bool) -> None:
    from hcli.spec import resolve_timm_name

    pretrained = spec.model.pretrained
    if isinstance(pretrained, Path):
        if not pretrained.is_file():
            raise SpecError(
                f"model.pretrained={str(pretrained)!r} does not exist; give a .safetensors or "
                ".pth file, or set model.pretrained to true (Hugging Face cache) or false"
            )
        return
    name, _ = resolve_timm_name(spec.model.backbone, spec.data.crop_size)
    # Cheap first: timm publishes its weights as `timm/<name>.<tag>`, so a cached snapshot of any
    # tag of this model in the hub cache means the weights are very likely there. The exact
    # lookup (which tag is timm's default) needs timm, hence torch (~2 s): it runs only when the
    # cheap look finds nothing, to give the job's exact message, and on the node. A different tag
    # cached than timm's default passes here and fails at the job's start, with that message.
    if not on_node and _cached_any_tag(name):
        return
    try:
        # By name: the control plane's type check stays out of the torch code.
        encoders = importlib.import_module("jobs.models.encoders")
    except ImportError:  # no torch/timm on this machine: the cheap look is all there is
        raise UserError(
            f"model.pretrained=true but no weights of {name} (timm/{name}.*) are in the Hugging "
            f"Face cache {_hub_cache()}; on a machine with internet run `hf download timm/<name>` "
            "(same HF_HOME), or set model.pretrained to a local weights file"
        ) from None
    repo, path = encoders.cached_pretrained_file(name)  # raises if timm has no weights for it
    if path is None:
        raise UserError(
            f"model.pretrained=true but the weights of {name} ({repo}) are not in the Hugging "
            f"Face cache; on a machine with internet run `hf download {repo}` (same HF_HOME), "
            f"or set model.pretrained to a local weights file"
        )


def _hub_cache() -> Path:
    try:
        from huggingface_hub import constants

        return Path(constants.HF_HUB_CACHE)
    except ImportError:
        home = os.environ.get("HF_HOME") or os.path.join(
            os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "huggingface"
        )
        return Path(os.environ.get("HF_HUB_CACHE") or os.path.join(home, "hub"))


def _cached_any_tag(name: str) -> bool:
    cache = _hub_cache()
    repos = [cache / f"models--timm--{name}", *cache.glob(f"models--timm--{name}.*")]
    return any(
        (snapshot / filename).is_file()
        for repo in repos
        for snapshot in (repo / "snapshots").glob("*")
        for filename in _HUB_FILENAMES
    )
