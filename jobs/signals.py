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

1. The job entry point installs `StopFlag` *after* submitit did (i.e. inside the submitted
   callable). `install(chain=True)` keeps each previous handler (submitit's) without calling it.
2. The signal only sets the flag. The loop, at the next step boundary (all ranks agreeing via
   ``jobs.distributed.any_rank(flag.requested)``), writes a blocking checkpoint (after
   ``CheckpointManager.wait()`` for any background write), then returns "stopped".
3. Outside any signal context, rank 0 calls ``flag.forward()``, which runs the deferred submitit
   handler as if the signal had just arrived: ``checkpoint()`` (which only returns
   ``DelayedSubmission(JobTarget(run_dir))``: the state is already on disk), pickle, requeue,
   ``sys.exit(-1)``. SIGTERM's previous handler is submitit's ``bypass``; to be requeued after
   a preemption, call the USR2 handler (``flag.previous(signal.SIGUSR2)``) instead, or
   `requeue_self()` when not under submitit.
4. Without submitit (local foreground/background runs) the previous handlers are the defaults;
   `forward()` then calls nothing and returns False, and the entry point records the stop.

Children: SLURM signals every process of the job step, DataLoader workers included. Forked
workers inherit this handler (harmless: it sets a flag in the worker's copy); workers started
with spawn/forkserver would die of the default action, so pass `ignore_stop_signals` as (or call
it from) the DataLoader's ``worker_init_fn``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterable
from types import FrameType
from typing import Any

from hcli.errors import ClusterError

__all__ = [
    "STOP_SIGNALS",
    "StopFlag",
    "StopRequested",
    "ignore_stop_signals",
    "slurm_job_id",
    "requeue_self",
]

STOP_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGUSR2, signal.SIGTERM, signal.SIGINT)

_Handler = Callable[[int, FrameType | None], Any] | int | None


class StopRequested(Exception):  # noqa: N818 - reads as what happened, like KeyboardInterrupt
    """Raised by a loop that saved after a stop signal, when nothing else ended the process."""


class StopFlag:
    """Records the first stop signal; see the module docstring for how the loop uses it."""

    def __init__(self, signals: Iterable[int] = STOP_SIGNALS) -> None:
        self.signals = tuple(signal.Signals(s) for s in signals)
        self._previous: dict[int, _Handler] = {}
        self._installed = False
        self._chain = True
        self.signum: int | None = None  # the first stop signal received
        self.time: float | None = None  # its wall-clock time (time.time())
        self.count = 0  # stop signals received so far
        self._manual_reason: str | None = None

    # -- installing ---------------------------------------------------------------------------

    @classmethod
    def install(cls, chain: bool = True, signals: Iterable[int] = STOP_SIGNALS) -> StopFlag:
        """Create a flag and make it the handler of `signals` (from the main thread).

        With `chain`, the handlers it replaces are kept for `forward()`; they are never called
        from inside the signal handler. `uninstall()` puts them back either way.
        """
        flag = cls(signals)
        flag._install(chain)
        return flag

    def _install(self, chain: bool) -> None:
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("StopFlag.install() must run in the main thread (Python's rule)")
        self._chain = chain
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

    # -- after the save -----------------------------------------------------------------------

    def previous(self, sig: int) -> _Handler:
        """The handler `install()` replaced for `sig` (a callable, SIG_DFL, SIG_IGN or None)."""
        return self._previous.get(signal.Signals(sig))

    def forward(self, sig: int | None = None) -> bool:
        """Run the replaced handler of `sig` (default: the signal received) now, in normal code.

        Under submitit's SIGUSR2 handler this requeues the job and exits the process (or raises
        submitit's ``UncompletedJobError`` when requeues are used up). Returns True when a
        Python handler ran and returned, False when there was none (default or ignored
        disposition, or installed with ``chain=False``); the caller then ends the job itself.
        """
        sig = self.signum if sig is None else sig
        if sig is None or not self._chain:
            return False
        prev = self.previous(sig)
        if not callable(prev):
            return False
        prev(int(sig), None)
        return True


def ignore_stop_signals(worker_id: int | None = None) -> None:
    """Make this process (a DataLoader worker) ignore the stop signals; usable as worker_init_fn.

    Only the main process decides when to stop; a worker killed by SIGUSR2's default action
    would turn a clean stop into "DataLoader worker exited unexpectedly".
    """
    for sig in (signal.SIGUSR2, signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)


def slurm_job_id() -> str | None:
    """This job's id as `scontrol` wants it: ``ARRAYJOB_TASK`` for an array task, else the id.

    Requeueing the bare ``SLURM_JOB_ID`` of an array task is fine too, but the array job id
    alone would requeue every task (Lightning #15022), hence submitit's form.
    """
    if "SLURM_JOB_ID" not in os.environ:
        return None
    from hcli._submitit_compat import SlurmJobEnvironment

    return SlurmJobEnvironment().job_id


def requeue_self(timeout_s: float = 60.0) -> str:
    """``scontrol requeue`` this SLURM job (only this array task); returns the id requeued.

    For jobs not started by submitit (with submitit, prefer `StopFlag.forward()`, which also
    keeps submitit's time-out countdown). SLURM then ends this process (SIGTERM, later
    SIGKILL), so save first and exit right after.
    """
    job_id = slurm_job_id()
    if job_id is None:
        raise ClusterError("cannot requeue: not inside a SLURM job (SLURM_JOB_ID is not set)")
    try:
        subprocess.run(
            ["scontrol", "requeue", job_id],
            check=True,
            timeout=timeout_s,
            capture_output=True,
            text=True,
        )
    except FileNotFoundError as exc:
        raise ClusterError("cannot requeue: `scontrol` is not on PATH in the job") from exc
    except subprocess.CalledProcessError as exc:
        msg = (exc.stderr or exc.stdout or "").strip().splitlines()
        raise ClusterError(
            f"scontrol requeue {job_id} failed: {msg[0] if msg else exc}; is the partition "
            "configured with requeue allowed (JobRequeue=1 or --requeue)?"
        ) from exc
    except subprocess.TimeoutExpired as exc:
        raise ClusterError(f"scontrol requeue {job_id} timed out after {timeout_s} s") from exc
    return job_id
