"""Loading prepared ARTeFACT data for training and evaluation.

`build_train_loader` gives an (infinite by default) DataLoader of random crops drawn by a
repeat-factor sampler, resumable mid-epoch; `build_eval_dataset` gives whole images.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from hcli.data.manifest import Manifest
from hcli.spec import Spec
from jobs.data.dataset import CropDataset, DrawKey, EvalDataset, ShardReader
from jobs.data.sampler import RepeatFactorSampler, repeat_factors, resume_state
from jobs.data.transforms import IMAGENET_MEAN, IMAGENET_STD

__all__ = [
    "CropDataset",
    "DrawKey",
    "EvalDataset",
    "ShardReader",
    "RepeatFactorSampler",
    "repeat_factors",
    "resume_state",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "build_train_loader",
    "collate_crops",
    "build_eval_dataset",
    "worker_init",
]


def worker_init(_worker_id: int) -> None:
    """One thread per worker: the workers are the parallelism; nested thread pools in each only
    contend for the same cores."""
    import cv2
    import torch

    cv2.setNumThreads(0)
    torch.set_num_threads(1)


def collate_crops(items: list[dict[str, Any]], lut: torch.Tensor | None = None) -> dict[str, Any]:
    """Stack image and mask; keep the bookkeeping fields as lists. Each tensor a worker returns
    travels in its own shared-memory segment, so fewer tensors is less main-process work
    (benchmarks/bench_loop.py). `resume_state` reads the lists. With `lut` (hierarchical heads),
    the fine, coarse and binary targets (one uint8 block) replace the mask: derived here, in the
    worker, not in the training step."""
    from jobs.hierarchy import derive_targets

    out: dict[str, Any] = {
        "image": torch.stack([it["image"] for it in items]),
        "mask": torch.stack([it["mask"] for it in items]),
        **{k: [it[k] for it in items] for k in items[0] if k not in ("image", "mask")},
    }
    if lut is not None:
        out["targets"] = derive_targets(out.pop("mask"), lut)
    return out


def build_train_loader(
    spec: Spec,
    manifest: Manifest,
    ids: Sequence[str],
    *,
    root: Path | None = None,
    rank: int = 0,
    world_size: int = 1,
    state: Mapping[str, Any] | None = None,
    batch_size: int | None = None,
    num_workers: int | None = None,
    infinite: bool = True,
    pin_memory: bool = False,
    target_lut: torch.Tensor | None = None,
) -> tuple[DataLoader, RepeatFactorSampler]:
    """Training crops of `ids` (spec.data: crop_size, scale_range, rare_repeat_threshold,
    num_workers; spec.train.batch_size; spec.seed). Pass `state` (from `resume_state(batch)` of
    the last consumed batch) to continue mid-epoch exactly."""
    data = spec.data
    dataset = CropDataset(
        Path(root) if root is not None else data.root,
        manifest,
        ids,
        crop_size=data.crop_size,
        scale_range=data.scale_range,
        seed=spec.seed,
    )
    sampler = RepeatFactorSampler(
        repeat_factors(manifest, ids, data.rare_repeat_threshold),
        seed=spec.seed,
        rank=rank,
        world_size=world_size,
        infinite=infinite,
    )
    if state is not None:
        sampler.load_state_dict(state)
    workers = data.num_workers if num_workers is None else num_workers
    loader = DataLoader(
        dataset,
        batch_size=batch_size or spec.train.batch_size,
        sampler=sampler,
        num_workers=workers,
        drop_last=True,
        collate_fn=functools.partial(collate_crops, lut=target_lut),
        pin_memory=pin_memory,
        worker_init_fn=worker_init if workers else None,
        persistent_workers=False,
        prefetch_factor=2 if workers else None,
        # Its own generator: creating an iterator must not draw from the global torch RNG, which
        # the training state restores on resume (dropout etc. must continue the same stream).
        generator=torch.Generator().manual_seed(spec.seed),
    )
    return loader, sampler


def build_eval_dataset(
    spec_or_root: Spec | Path, manifest: Manifest, ids: Sequence[str]
) -> EvalDataset:
    """Whole images of `ids` from spec.data.root (or a dataset folder)."""
    root = spec_or_root.data.root if isinstance(spec_or_root, Spec) else Path(spec_or_root)
    return EvalDataset(root, manifest, ids)
