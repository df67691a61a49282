"""jobs.signals: the handler only records; submitit's handler, kept aside, runs after the save."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from submitit.core.job_environment import SignalHandler
from submitit.core.utils import DelayedSubmission, JobPaths
from submitit.local.local import LocalJobEnvironment

from jobs.signals import StopFlag, slurm_job_id


@pytest.fixture(autouse=True)
def _restore_handlers() -> Iterator[None]:
    saved = {s: signal.getsignal(s) for s in (signal.SIGUSR2, signal.SIGTERM, signal.SIGINT)}
    yield
    for s, h in saved.items():
        signal.signal(s, h)


def _deliver(sig: int, flag: StopFlag) -> None:
    os.kill(os.getpid(), sig)
    deadline = time.monotonic() + 5
    while not flag.requested and time.monotonic() < deadline:
        time.sleep(0.001)  # Python runs the handler between bytecodes of the main thread


class _Recorder:
    def __init__(self) -> None:
        self.calls: list[int] = []

    def __call__(self, signum: int, frame: object) -> None:
        self.calls.append(signum)


@pytest.mark.parametrize("sig", [signal.SIGUSR2, signal.SIGTERM])
def test_signal_sets_flag_and_defers_previous_handler(sig: signal.Signals) -> None:
    previous = _Recorder()
    signal.signal(sig, previous)
    flag = StopFlag.install()
    assert not flag.requested and flag.reason is None
    t0 = time.time()
    _deliver(sig, flag)
    assert flag.requested and flag.reason == sig.name and flag.signum == sig
    assert flag.time is not None and t0 <= flag.time <= time.time()
    assert previous.calls == []  # nothing but recording happened in the handler
    _deliver(sig, flag)
    assert flag.count == 2 and flag.reason == sig.name  # the first signal stays the reason
    assert previous.calls == []
    flag.uninstall()
    assert signal.getsignal(sig) is previous


def test_default_dispositions_are_replaced_and_restored() -> None:
    signal.signal(signal.SIGUSR2, signal.SIG_DFL)
    with StopFlag.install() as flag:
        _deliver(signal.SIGUSR2, flag)  # would kill the process under the default action
        assert flag.reason == "SIGUSR2"
    assert signal.getsignal(signal.SIGUSR2) == signal.SIG_DFL


def test_second_ctrl_c_interrupts_at_once() -> None:
    with StopFlag.install() as flag:
        _deliver(signal.SIGINT, flag)
        assert flag.reason == "SIGINT"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)


def test_manual_request_and_clear() -> None:
    flag = StopFlag()
    flag.request("early stop")
    assert flag.requested and flag.reason == "early stop"
    flag.clear()
    assert not flag.requested


class _Job:
    """Stands for hcli's JobTarget: checkpoint() only says what to rerun."""

    def __init__(self) -> None:
        self.saved = False
        self.saved_when_checkpointed: bool | None = None

    def __call__(self) -> None:  # pragma: no cover - never run here
        pass

    def checkpoint(self) -> DelayedSubmission:
        self.saved_when_checkpointed = self.saved
        return DelayedSubmission(self)


def test_composes_with_submitits_requeue_handler(tmp_path: Path, monkeypatch) -> None:
    # submitit's own handler, built as submitit's job process builds it.
    monkeypatch.setenv("SUBMITIT_LOCAL_JOB_ID", "4242")
    env = LocalJobEnvironment()
    requeued: list[int] = []
    exits: list[bool] = []
    monkeypatch.setattr(env, "_requeue", lambda countdown: requeued.append(countdown))
    job = _Job()
    delayed = DelayedSubmission(job)
    delayed.set_timeout(60, 3)
    paths = JobPaths(tmp_path, job_id="4242", task_id=0)
    handler = SignalHandler(env, paths, delayed)
    monkeypatch.setattr(handler, "_exit", lambda: exits.append(True))
    signal.signal(signal.SIGUSR2, handler.checkpoint_and_try_requeue)

    # As jobs.runtime.run_job does: keep submitit's handler aside, then install the flag.
    submitit_usr2 = signal.getsignal(signal.SIGUSR2)
    flag = StopFlag.install()
    _deliver(signal.SIGUSR2, flag)
    assert flag.reason == "SIGUSR2"
    assert job.saved_when_checkpointed is None and requeued == [] and exits == []

    job.saved = True  # the loop saves at its step boundary...
    submitit_usr2(signal.SIGUSR2, None)  # ...then hands the signal to submitit
    assert job.saved_when_checkpointed is True
    assert requeued == [3] and exits == [True]
    resubmitted = DelayedSubmission.load(paths.submitted_pickle)
    assert isinstance(resubmitted.function, _Job) and resubmitted._timeout_countdown == 3
    flag.uninstall()


def test_slurm_job_id_names_the_array_task(monkeypatch) -> None:
    for var in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID"):
        monkeypatch.delenv(var, raising=False)
    assert slurm_job_id() is None
    monkeypatch.setenv("SLURM_JOB_ID", "105")
    assert slurm_job_id() == "105"
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "100")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "5")
    assert slurm_job_id() == "100_5"
