"""Torch datasets over prepared HDF5 shards (layout in docs/data-format.md).

Shards are opened lazily, once per process, on first use: an open h5py file cannot be pickled
into DataLoader workers and must not be shared across fork. A training sample reads only its crop
window (`ds[y0:y1, x0:x1]` touches only the 256×256 chunks under the window).

Determinism: the sampler hands each item a `DrawKey(index, epoch, position, draw)`; the random
scale, window and augmentations are seeded from (seed, epoch, draw, index) only, so a sample is
the same whichever worker loads it and however many workers there are.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import h5py
import numpy as np
from torch.utils.data import Dataset

from hcli.data.manifest import Manifest, SampleEntry
from hcli.errors import DataError
from jobs.data.transforms import (
    build_train_pipeline,
    choose_window,
    resize_window,
    to_tensors,
)

__all__ = ["DrawKey", "ShardReader", "CropDataset", "EvalDataset", "sample_seed"]


class DrawKey(NamedTuple):
    """What the sampler yields: dataset index, epoch, this rank's position in the epoch (for
    resuming) and the global draw number in the epoch (for seeding augmentation)."""

    # `index` shadows tuple.index, which nobody calls on a DrawKey.
    index: int  # type: ignore[assignment]
    epoch: int = 0
    position: int = 0
    draw: int = 0


def sample_seed(seed: int, key: DrawKey) -> np.random.SeedSequence:
    return np.random.SeedSequence([seed, key.epoch, key.draw, key.index])


class ShardReader:
    """Open h5py files of one dataset folder, per process; pickles without its handles."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._files: dict[str, h5py.File] = {}
        self._arrays: dict[str, tuple[h5py.Dataset, h5py.Dataset]] = {}
        self._pid = os.getpid()

    def arrays(self, entry: SampleEntry) -> tuple[h5py.Dataset, h5py.Dataset]:
        """The sample's (image, mask) datasets, looked up once per process: h5py's path lookups
        cost ~0.3 ms a sample, a tenth of a small training step (benchmarks/bench_loop.py)."""
        found = self._arrays.get(entry.id) if self._pid == os.getpid() else None
        if found is None:
            group = self.group(entry)
            found = self._arrays[entry.id] = (group["image"], group["mask"])
        return found

    def group(self, entry: SampleEntry) -> h5py.Group:
        if self._pid != os.getpid():  # forked after opening: the parent's handles are not ours
            self._files, self._arrays, self._pid = {}, {}, os.getpid()
        fh = self._files.get(entry.shard)
        if fh is None:
            path = self.root / entry.shard
            try:
                fh = h5py.File(path, "r")
            except OSError as exc:
                raise DataError(
                    f"{path}: cannot open shard ({exc}); re-run hcli data prepare"
                ) from None
            self._files[entry.shard] = fh
        try:
            return fh[entry.id]
        except KeyError:
            raise DataError(
                f"{self.root / entry.shard}: sample {entry.id} missing; re-run hcli data prepare"
            ) from None

    def close(self) -> None:
        for fh in self._files.values():
            fh.close()
        self._files, self._arrays = {}, {}

    def __getstate__(self) -> dict[str, Any]:
        return {"root": self.root}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["root"])  # type: ignore[misc]


class _ShardDataset(Dataset):
    def __init__(self, root: Path, manifest: Manifest, ids: Sequence[str]) -> None:
        by_id = manifest.by_id()
        missing = [i for i in ids if i not in by_id]
        if missing:
            raise DataError(f"{root}: ids not in the manifest: {missing[:5]}")
        self.root = Path(root)
        self.entries: list[SampleEntry] = [by_id[i] for i in ids]
        self.reader = ShardReader(self.root)

    def __len__(self) -> int:
        return len(self.entries)


class CropDataset(_ShardDataset):
    """Training crops: random scale in scale_range, crop_size×crop_size window, flips, 90°
    rotations, colour jitter; padded with 255 in the mask where the image is smaller.

    `dataset[key]` takes a DrawKey (or a plain int: epoch 0, draw 0). Returns a dict with
    `image` float32 (3, crop, crop), `mask` uint8 (crop, crop), `index`, `epoch`, `position`,
    `window` (y0, x0, height, width in the stored image) and `id`.
    """

    def __init__(
        self,
        root: Path,
        manifest: Manifest,
        ids: Sequence[str],
        *,
        crop_size: int = 512,
        scale_range: tuple[float, float] = (0.5, 1.5),
        seed: int = 0,
        flips: bool = True,
        rotate90: bool = True,
        colour: bool = True,
    ) -> None:
        super().__init__(root, manifest, ids)
        self.crop_size = crop_size
        self.scale_range = (float(scale_range[0]), float(scale_range[1]))
        self.seed = seed
        self.pipeline = build_train_pipeline(
            crop_size, flips=flips, rotate90=rotate90, colour=colour
        )

    def _seed_pipeline(self, ss: np.random.SeedSequence) -> None:
        # One seed per transform: Compose.set_random_seed gives every transform the same seed,
        # which would make the horizontal and vertical flips always agree. The Compose's own
        # generator is left alone: with p=1 its draw cannot change the outcome.
        seeds = ss.generate_state(len(self.pipeline.transforms))
        for t, s in zip(self.pipeline.transforms, seeds, strict=True):
            t.set_random_seed(int(s))

    def __getitem__(self, key: DrawKey | int | Sequence[int]) -> dict[str, Any]:
        key = DrawKey(key) if isinstance(key, int | np.integer) else DrawKey(*key)
        entry = self.entries[key.index]
        ss = sample_seed(self.seed, key)
        window_ss, aug_ss = ss.spawn(2)
        image_ds, mask_ds = self.reader.arrays(entry)
        window = choose_window(
            np.random.default_rng(window_ss), image_ds.shape[:2], self.crop_size, self.scale_range
        )
        ys, xs = window.slices
        image, mask = resize_window(image_ds[ys, xs], mask_ds[ys, xs], window, self.crop_size)
        self._seed_pipeline(aug_ss)
        out = self.pipeline(image=image, mask=mask)
        x, y = to_tensors(out["image"], out["mask"])
        return {
            "image": x,
            "mask": y,
            "index": key.index,
            "epoch": key.epoch,
            "position": key.position,
            # Plain ints: a tensor here would cross to the training process as its own
            # shared-memory segment, one per sample (benchmarks/bench_loop.py).
            "window": tuple(int(v) for v in (window.y0, window.x0, window.height, window.width)),
            "id": entry.id,
        }


class EvalDataset(_ShardDataset):
    """Whole stored images for evaluation (sliding-window inference is the caller's): `image`
    float32 (3, H, W) normalised, `mask` int64 (H, W), `id`. Sizes differ: use batch_size=1 or
    a collate that keeps a list."""

    def __getitem__(self, index: int) -> dict[str, Any]:
        entry = self.entries[index]
        group = self.reader.group(entry)
        x, y = to_tensors(group["image"][()], group["mask"][()])
        return {"image": x, "mask": y.long(), "index": index, "id": entry.id}
