"""Repeat-factor sampling (LVIS, Gupta et al. 2019) with an exact, resumable position.

For each class c, f(c) is the fraction of training images that contain c (Background 255 never
counts); its repeat factor is r(c) = max(1, sqrt(t / f(c))). An image repeats r(i) = max over
its classes of r(c) times per epoch, rounded stochastically (floor(r) + 1 with probability
frac(r)), so images holding rare classes are drawn more often. t = 0 gives r = 1 everywhere: a
plain shuffle.

Epoch e's sequence is a pure function of (seed, e): the rounding and the permutation come from
`numpy.random.default_rng([seed, e])`. The distributed variant pads the epoch's permutation to a
multiple of world_size (wrapping around, like torch's DistributedSampler) and gives rank r the
slice `perm[r::world_size]`. The state is (epoch, position in this rank's slice).

A DataLoader prefetches, so the sampler's own position runs ahead of what training consumed;
save `resume_state(batch)` of the last consumed batch instead (every item carries its epoch and
position), and `load_state_dict` it into a fresh sampler.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
from torch.utils.data import Sampler

from hcli.classes import NUM_CLASSES
from hcli.data.manifest import Manifest
from jobs.data.dataset import DrawKey

__all__ = ["repeat_factors", "RepeatFactorSampler", "resume_state"]


def repeat_factors(manifest: Manifest, ids: Sequence[str], threshold: float) -> np.ndarray:
    """r(i) for each id, in order (see the module docstring)."""
    by_id = manifest.by_id()
    present = np.array(
        [[by_id[i].class_pixels[c] > 0 for c in range(NUM_CLASSES)] for i in ids], dtype=bool
    ).reshape(len(ids), NUM_CLASSES)
    if threshold <= 0 or len(ids) == 0:
        return np.ones(len(ids))
    freq = present.mean(axis=0)
    class_r = np.maximum(1.0, np.sqrt(threshold / np.maximum(freq, 1e-12)))  # absent: unused
    image_r = np.where(present, class_r[None, :], 1.0).max(axis=1)
    return image_r


class RepeatFactorSampler(Sampler[DrawKey]):
    """Yields DrawKey(index, epoch, position, draw). `infinite=True` runs epoch after epoch;
    otherwise one pass yields the rest of the current epoch and then moves to the next."""

    def __init__(
        self,
        factors: Sequence[float] | np.ndarray,
        *,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        infinite: bool = False,
    ) -> None:
        self.factors = np.asarray(factors, dtype=np.float64)
        if self.factors.ndim != 1 or len(self.factors) == 0:
            raise ValueError("repeat factors must be a non-empty 1-D sequence")
        if (self.factors < 1).any():
            raise ValueError("repeat factors must be >= 1")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank={rank} must be in [0, world_size={world_size})")
        self.seed, self.rank, self.world_size, self.infinite = seed, rank, world_size, infinite
        self.epoch = 0
        self.position = 0

    def epoch_indices(self, epoch: int) -> np.ndarray:
        """The whole epoch's sequence of dataset indices, before the rank split (padded)."""
        rng = np.random.default_rng([self.seed, epoch])
        whole = np.floor(self.factors)
        counts = (whole + (rng.random(len(self.factors)) < self.factors - whole)).astype(np.int64)
        perm = rng.permutation(np.repeat(np.arange(len(self.factors)), counts))
        pad = (-len(perm)) % self.world_size
        if pad:
            perm = np.concatenate([perm, perm[:pad]])
        return perm

    def rank_length(self, epoch: int) -> int:
        return len(self.epoch_indices(epoch)) // self.world_size

    def __len__(self) -> int:
        return self.rank_length(self.epoch)

    def __iter__(self) -> Iterator[DrawKey]:
        while True:
            perm = self.epoch_indices(self.epoch)
            mine = perm[self.rank :: self.world_size]
            while self.position < len(mine):
                p = self.position
                self.position += 1
                yield DrawKey(int(mine[p]), self.epoch, p, p * self.world_size + self.rank)
            self.epoch, self.position = self.epoch + 1, 0
            if not self.infinite:
                return

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "position": self.position,
            "seed": self.seed,
            "world_size": self.world_size,
            "size": len(self.factors),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for key, mine in (
            ("seed", self.seed),
            ("world_size", self.world_size),
            ("size", len(self.factors)),
        ):
            if key in state and state[key] != mine:
                raise ValueError(
                    f"sampler state has {key}={state[key]} but this sampler has {mine}; "
                    "resume with the same spec and data"
                )
        epoch, position = int(state["epoch"]), int(state["position"])
        length = self.rank_length(epoch)
        if position > length:
            raise ValueError(f"sampler position {position} beyond epoch {epoch} length {length}")
        self.epoch, self.position = (epoch + 1, 0) if position == length else (epoch, position)


def resume_state(batch: Mapping[str, Any]) -> dict[str, int]:
    """Sampler state that continues right after the last item of a consumed batch."""
    epoch, position = batch["epoch"], batch["position"]
    last_e = int(epoch[-1]) if not isinstance(epoch, int) else epoch
    last_p = int(position[-1]) if not isinstance(position, int) else position
    return {"epoch": last_e, "position": last_p + 1}
