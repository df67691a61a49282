"""The batch-prefetch thread: same batches in the same order, errors surface, it stops."""

from __future__ import annotations

import threading
import time

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from jobs.data.prefetch import ThreadPrefetcher


class _Numbers(Dataset):
    def __init__(self, n: int, fail_at: int | None = None) -> None:
        self.n, self.fail_at = n, fail_at

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        if i == self.fail_at:
            raise ValueError(f"sample {i} is broken")
        return {"x": torch.full((3, 64, 64), float(i)), "y": torch.full((64, 64), i % 7,
                dtype=torch.uint8), "id": f"s{i}"}


def test_same_batches_in_the_same_order_as_the_loader():
    loader = DataLoader(_Numbers(24), batch_size=4, num_workers=1)
    expected = list(loader)
    got = list(ThreadPrefetcher(loader))
    assert len(got) == len(expected) == 6
    for a, b in zip(got, expected, strict=True):
        assert torch.equal(a["x"], b["x"]) and torch.equal(a["y"], b["y"]) and a["id"] == b["id"]


def test_a_loader_error_is_raised_in_the_consumer_after_the_good_batches():
    it = ThreadPrefetcher(DataLoader(_Numbers(12, fail_at=9), batch_size=4, num_workers=1))
    assert next(it)["id"] == ["s0", "s1", "s2", "s3"]
    assert next(it)["id"] == ["s4", "s5", "s6", "s7"]
    with pytest.raises(ValueError, match="sample 9 is broken"):
        next(it)


def test_close_stops_the_thread_of_an_endless_iterable():
    def endless():
        i = 0
        while True:
            i += 1
            yield torch.tensor([i])

    before = threading.active_count()
    it = ThreadPrefetcher(endless(), depth=2)
    assert next(it).item() == 1 and next(it).item() == 2
    it.close()
    deadline = time.monotonic() + 5
    while threading.active_count() > before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert threading.active_count() == before
    with pytest.raises(StopIteration):
        next(it)
