"""Receive the loader's batches in a background thread, so the training step does not.

Taking a batch from a DataLoader worker costs the receiving process real work: unpickling, one
file-descriptor hand-over per tensor through the worker's resource-sharer socket, mapping the
shared memory and faulting its pages in on first touch. On a CUDA run the DataLoader's pin-memory
thread already does this off the training thread; on CPU nothing does, and on a small model it is
several percent of the step (benchmarks/bench_loop.py). `ThreadPrefetcher` does what that thread
does, minus the pinning: it takes batches from the loader's iterator a few ahead and touches
their tensors, so the training thread gets batches whose memory is mapped and resident.

The order of batches is the loader's; nothing here draws random numbers, so exact resume (which
reads the sampler position from the consumed batch, `jobs.data.resume_state`) is unaffected.
PyTorch has no such wrapper for CPU (its pin-memory loop is private and CUDA-bound), hence this.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from typing import Any

import torch

__all__ = ["ThreadPrefetcher"]

_END = object()


def _touch(obj: Any) -> None:
    """Fault in every page of every tensor in a batch (one read per 4 KiB page is enough)."""
    if isinstance(obj, torch.Tensor):
        if obj.numel() and obj.is_contiguous():
            obj.reshape(-1).view(torch.uint8)[::4096].sum()
        elif obj.numel():
            obj.sum()
    elif isinstance(obj, dict):
        for v in obj.values():
            _touch(v)
    elif isinstance(obj, list | tuple):
        for v in obj:
            _touch(v)


class ThreadPrefetcher(Iterator[Any]):
    """Iterate `iterable` from a daemon thread, at most `depth` items ahead of the consumer.

    Exceptions raised by the iterable (a worker's error) are re-raised in the consumer, in order.
    `close()` stops the thread; it is also called at exhaustion and by the garbage collector.
    """

    def __init__(self, iterable: Iterable[Any], depth: int = 2) -> None:
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(iter(iterable),), daemon=True, name="batch-prefetch"
        )
        self._thread.start()

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, it: Iterator[Any]) -> None:
        try:
            for item in it:
                _touch(item)
                if not self._put(item):
                    return
        except BaseException as exc:  # handed to the consumer, raised there
            self._put(exc)
            return
        self._put(_END)

    def __next__(self) -> Any:
        # Closed: whatever the producer managed to put after close() drained the queue (it may
        # have been inside queue.put at that moment) is not handed out.
        if self._stop.is_set():
            raise StopIteration
        item = self._queue.get()
        if item is _END:
            self.close()
            raise StopIteration
        if isinstance(item, BaseException):
            self.close()
            raise item
        return item

    def close(self) -> None:
        self._stop.set()
        while True:  # unblock a producer waiting for room
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout=5)

    def __del__(self) -> None:
        self.close()
