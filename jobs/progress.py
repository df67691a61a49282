"""What a running job tells people and `hcli status`: progress.json, metrics.jsonl, TensorBoard.

progress.json is rewritten by a heartbeat thread every `interval` seconds with the latest figures,
so the heartbeat stays fresh even when one step (or a validation) takes longer than that.
Both files are written through the run-folder contract's models (hcli.contract), so a figure
logged under a name the readers do not know fails here, in the job's first log line.
"""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hcli.contract import (
    EventLine,
    MetricsLine,
    Progress,
    TrainLine,
    ValLine,
    check_metrics_line,
    check_progress,
)
from hcli.fsutil import atomic_write_json

__all__ = ["ProgressWriter", "append_event", "append_line"]


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def append_line(run_dir: Path, line: MetricsLine) -> dict[str, Any]:
    """Append one metrics.jsonl line (checked against the contract); returns what was written."""
    record = check_metrics_line(line)
    with open(Path(run_dir) / "metrics.jsonl", "a") as fh:
        fh.write(json.dumps(record) + "\n")
    return record


def append_event(
    run_dir: Path, step: int, event: str, *, time: str | None = None, **fields: Any
) -> dict[str, Any]:
    """An event line (`requeued`, `resumed`, `stopped`, `early_stop`, `checkpoint`, `stage`);
    `time` defaults to now (a requeue is written on resume, with the time it was asked for)."""
    line = EventLine.model_validate({"step": step, "time": time or _now(), "event": event,
                                     **fields})
    return append_line(run_dir, line)


class ProgressWriter:
    def __init__(
        self,
        run_dir: Path,
        total_steps: int,
        *,
        interval: float = 15.0,
        tensorboard: bool = True,
        enabled: bool = True,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self.total = total_steps
        self.state: dict[str, Any] = {
            "step": 0,
            "total_steps": total_steps,
            "epoch": 0,
            "phase": "starting",
            "latest": {},
            "eta_s": None,
        }
        self._lock = threading.Lock()
        self._rate: tuple[float, int] | None = None  # (time, step) when timing started
        self._stop = threading.Event()
        self._tb = None
        if enabled and tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(self.run_dir / "tb"))
        self._thread = threading.Thread(
            target=self._beat, args=(interval,), daemon=True, name="progress-heartbeat"
        )
        if enabled:
            self._write()
            self._thread.start()

    def _beat(self, interval: float) -> None:
        while not self._stop.wait(interval):
            self._write()

    def _write(self) -> None:
        with self._lock:
            snapshot = check_progress(Progress.model_validate(dict(self.state, heartbeat=_now())))
        atomic_write_json(self.run_dir / "progress.json", snapshot)

    def update(
        self, step: int, *, epoch: int | None = None, phase: str = "train", **latest: Any
    ) -> None:
        if not self.enabled:
            return
        now = time.time()
        if self._rate is None:
            self._rate = (now, step)
        t0, s0 = self._rate
        eta = (now - t0) / (step - s0) * (self.total - step) if step > s0 else None
        with self._lock:
            self.state.update(step=step, phase=phase, eta_s=round(eta, 1) if eta else None)
            if epoch is not None:
                self.state["epoch"] = epoch
            self.state["latest"].update(latest)

    def note(self, **fields: Any) -> None:
        with self._lock:
            # Checked here, in the caller's thread: a refusal in the heartbeat thread would
            # silently stop the heartbeat and make the run look stale.
            check_progress(Progress.model_validate(dict(self.state, **fields)))
            self.state.update(fields)

    def log(self, step: int, split: str, **metrics: Any) -> None:
        """One line of metrics.jsonl (and TensorBoard scalars)."""
        if not self.enabled:
            return
        fields = {"step": step, "time": _now(), "split": split, **metrics}
        if split == "train":
            line: MetricsLine = TrainLine.model_validate(fields)
        elif split == "val":
            line = ValLine.model_validate(fields)
        else:
            raise ValueError(f"metrics split {split!r}: the contract knows 'train' and 'val'")
        append_line(self.run_dir, line)
        if self._tb is not None:
            for key, value in metrics.items():
                if isinstance(value, int | float) and value is not None:
                    self._tb.add_scalar(f"{split}/{key}", value, step)

    def event(self, step: int, event: str, **fields: Any) -> None:
        if not self.enabled:
            return
        append_event(self.run_dir, step, event, **fields)

    def close(self, phase: str = "done") -> None:
        if not self.enabled:
            return
        self._stop.set()
        self.note(phase=phase, eta_s=0 if phase == "done" else None)
        self._write()
        if self._tb is not None:
            self._tb.close()
