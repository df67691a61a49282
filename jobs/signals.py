"""Stop requests from the scheduler or the user, seen by the training loop at step boundaries.

`StopFlag.install()` takes over SIGUSR2 (SLURM's warning `signal_delay_s` before the time limit,
``#SBATCH --signal=USR2@N``), SIGTERM (preemption, ``scancel``, ``hcli cancel``) and SIGINT
(Ctrl-C). Its handler only records which signal came and when; the loop polls
``flag.requested`` after each optimizer step, saves there, and stops. A second Ctrl-C raises
KeyboardInterrupt at once, for a person who does not want to wait for the save.

Design note: cooperating with submitit's requeue protocol (submitit 1.5.4)
-------------------------------------------------------------------------
In the job process submitit (``core/_submit.py`` → ``JobEnvironment._handle_signals``) installs,
before our code runs: SIGUSR2 → ``SignalHandler.checkpoint_and_try_requeue`` and SIGTERM/SIGCONT
→ ``bypass`` (logs only). ``checkpoint_and_try_requeue`` does, inside the signal handler: on
rank 0, call the callable's ``checkpoint()`` to get a resubmission, pickle it over the submitted
pickle with the time-out countdown decremented (or raise ``UncompletedJobError`` when out of
requeues), run ``scontrol requeue $SLURM_JOB_ID`` (``JobEnvironment.job_id`` is
``ARRAYID_TASKID`` for an array task, so only that task is requeued) and ``sys.exit(-1)``.
Run as is, that exits at whatever bytecode the main thread was executing: mid-step, or in the
middle of our own checkpoint write (Lightning #21406). Saving inside ``checkpoint()`` is no
better: it runs in the same handler, on the main thread, and cannot wait for the loop.

So we defer submitit's handler instead of replacing it:

1. The job entry point (``jobs.runtime.run_job``) keeps submitit's SIGUSR2 handler
   (``signal.getsignal``) and then installs `StopFlag`, inside the submitted callable, so after
   submitit did. `uninstall()` puts the replaced handlers back.
2. The signal only sets the flag. The loop, at the next step boundary (all ranks agreeing via
   ``jobs.distributed.any_rank(flag.requested)``), writes a blocking checkpoint (after
   ``CheckpointManager.wait()`` for any background write), then returns "stopped".
3. Outside any signal context, rank 0 calls the kept submitit handler as if the signal had just
   arrived: ``checkpoint()`` (which only returns ``DelayedSubmission(JobTarget(run_dir))``: the
   state is already on disk), pickle, requeue, ``sys.exit(-1)``. It does so after a SIGTERM too
   (submitit's own SIGTERM handler only logs), unless SLURM itself is ending the job.
4. Without submitit (local foreground/background runs) there is no handler to call, and the
   entry point records the stop.

Children: SLURM signals every process of the job step, DataLoader workers included. The loaders
fork their workers, which inherit this handler (harmless: it sets a flag in the worker's copy).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterable
from types import FrameType
from typing import Any

__all__ = [
    "STOP_SIGNALS",
    "StopFlag",
    "slurm_job_id",
]

STOP_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGUSR2, signal.SIGTERM, signal.SIGINT)

_Handler = Callable[[int, FrameType | None], Any] | int | None


class StopFlag:
    """Records the first stop signal; see the module docstring for how the loop uses it."""

    def __init__(self, signals: Iterable[int] = STOP_SIGNALS) -> None:
        self.signals = tuple(signal.Signals(s) for s in signals)
        self._previous: dict[int, _Handler] = {}
        self._installed = False
        self.signum: int | None = None  # the first stop signal received
        self.time: float | None = None  # its wall-clock time (time.time())
        self.count = 0  # stop signals received so far
        self._manual_reason: str | None = None

    # -- installing ---------------------------------------------------------------------------

    @classmethod
    def install(cls, signals: Iterable[int] = STOP_SIGNALS) -> StopFlag:
        """Create a flag and make it the handler of `signals` (from the main thread).

        The handlers it replaces are never called; `uninstall()` puts them back.
        """
        flag = cls(signals)
        flag._install()
        return flag

    def _install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("StopFlag.install() must run in the main thread (Python's rule)")
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._handle)
        self._installed = True

    def uninstall(self) -> None:
        """Restore the handlers that were there before `install()`."""
        if not self._installed:
            return
        for sig, prev in self._previous.items():
            signal.signal(sig, prev if prev is not None else signal.SIG_DFL)
        self._installed = False

    def __enter__(self) -> StopFlag:
        return self

    def __exit__(self, *exc: object) -> None:
        self.uninstall()

    # -- the handler: record, nothing else ------------------------------------------------------

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.count += 1
        if self.signum is None:
            self.signum = signum
            self.time = time.time()
        elif signum == signal.SIGINT == self.signum:
            raise KeyboardInterrupt  # second Ctrl-C: the person does not want to wait

    # -- what the loop reads ------------------------------------------------------------------

    @property
    def requested(self) -> bool:
        return self.signum is not None or self._manual_reason is not None

    @property
    def reason(self) -> str | None:
        """``"SIGUSR2"``, ``"SIGTERM"``, ``"SIGINT"``, a `request()` reason, or None."""
        if self.signum is not None:
            return signal.Signals(self.signum).name
        return self._manual_reason

    def request(self, reason: str) -> None:
        """Ask for a stop from code (e.g. a test, or another rank's request)."""
        if not self.requested:
            self._manual_reason = reason
            self.time = time.time()

    def clear(self) -> None:
        self.signum = self.time = self._manual_reason = None
        self.count = 0


def slurm_job_id() -> str | None:
    """This job's id as `scontrol` wants it: ``ARRAYJOB_TASK`` for an array task, else the id.

    Requeueing the bare ``SLURM_JOB_ID`` of an array task is fine too, but the array job id
    alone would requeue every task (Lightning #15022), hence submitit's form.
    """
    if "SLURM_JOB_ID" not in os.environ:
        return None
    from hcli._submitit_compat import SlurmJobEnvironment

    return SlurmJobEnvironment().job_id
