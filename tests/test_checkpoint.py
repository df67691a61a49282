"""jobs.checkpoint: exact resume, atomicity, damaged-file fallback, retention, copy semantics."""

from __future__ import annotations

import hashlib
import io
import json
import random
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from hcli.ckpt_identity import check_run_checkpoints
from jobs.checkpoint import (
    CheckpointIdentityError,
    CheckpointManager,
    DamagedCheckpointWarning,
    capture_rng_state,
    restore_rng_state,
    to_weights_only_safe,
)
from jobs.task import TrainState


def _build(seed: int = 0) -> tuple[nn.Module, torch.optim.Optimizer, Any]:
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Dropout(0.3),
        nn.Flatten(), nn.Linear(8 * 6 * 6, 4),
    )
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 4) * 0.97**s)
    return model, opt, sched


def _step(model: nn.Module, opt: torch.optim.Optimizer, sched) -> float:
    # Every RNG the job uses feeds the batch: torch (data, dropout), NumPy, Python.
    x = torch.randn(4, 3, 6, 6) + float(np.random.rand()) + random.random()
    y = torch.randint(0, 4, (4,))
    loss = nn.functional.cross_entropy(model(x), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    sched.step()
    return loss.item()


IDENTITY = {"run_id": "multiclass-convnext-1a2b3c4d", "spec_id": "multiclass-convnext-1a2b3c4d"}


def _state(model, opt, sched, step: int) -> dict:
    """The layout jobs.engine.Engine.state_dict() saves (see jobs/checkpoint.py's docstring)."""
    train_state = TrainState(step=step, samplers={"train": {"epoch": 0, "position": step * 4,
                                                            "seed": 7}},
                             best_metric=0.25, best_step=4, bad_validations=1)
    return {
        "model": model.state_dict(), "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(), "scaler": torch.amp.GradScaler("cuda", enabled=False)
        .state_dict(), "train_state": train_state.state_dict(), "task": {},
        "rng": capture_rng_state(), "identity": dict(IDENTITY),
    }


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def test_resume_is_bitwise_identical(tmp_path: Path) -> None:
    total, cut = 8, 5
    model, opt, sched = _build()
    _seed_all(1)
    losses_ref = [_step(model, opt, sched) for _ in range(total)]
    ref = {k: v.clone() for k, v in model.state_dict().items()}

    model, opt, sched = _build()
    _seed_all(1)
    losses = [_step(model, opt, sched) for _ in range(cut)]
    mgr = CheckpointManager(tmp_path, keep=2)
    mgr.save(_state(model, opt, sched, cut), cut, blocking=False)
    for _ in range(3):  # training goes on (and changes the model) while the write runs
        _step(model, opt, sched)
    mgr.wait()

    # A new process would start from scratch: other seeds, fresh objects.
    model, opt, sched = _build(seed=99)
    _seed_all(123)
    loaded = CheckpointManager(tmp_path, keep=2).load_latest()
    assert loaded is not None
    state, path = loaded
    assert path.name == "step-00000005.pt"
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    restore_rng_state(state["rng"])
    train_state = TrainState()
    train_state.load_state_dict(state["train_state"])
    assert train_state.samplers == {"train": {"epoch": 0, "position": 20, "seed": 7}}
    assert train_state.best_metric == 0.25 and state["identity"] == IDENTITY
    losses += [_step(model, opt, sched) for _ in range(total - train_state.step)]

    assert losses == losses_ref
    for k, v in model.state_dict().items():
        assert torch.equal(v, ref[k]), k


def test_rng_state_roundtrips_with_weights_only() -> None:
    _seed_all(5)
    random.gauss(0, 1)  # leaves a cached gaussian in Python's state
    np.random.standard_normal()  # and in NumPy's
    rng = capture_rng_state()
    buf = io.BytesIO()
    torch.save(rng, buf)
    buf.seek(0)
    back = torch.load(buf, weights_only=True)
    expect = (random.random(), random.gauss(0, 1), float(np.random.rand()),
              float(np.random.standard_normal()), torch.rand(3))
    _seed_all(77)
    restore_rng_state(back)
    got = (random.random(), random.gauss(0, 1), float(np.random.rand()),
           float(np.random.standard_normal()), torch.rand(3))
    assert got[:4] == expect[:4]
    assert torch.equal(got[4], expect[4])


def test_to_weights_only_safe_converts_numpy_and_rejects_objects() -> None:
    state = {"a": np.arange(3), "b": np.float32(1.5), "c": [Path("x/y"), (1, "s")], "d": None}
    safe = to_weights_only_safe(state)
    buf = io.BytesIO()
    torch.save(safe, buf)
    buf.seek(0)
    back = torch.load(buf, weights_only=True)
    assert torch.equal(back["a"], torch.arange(3))
    assert back["b"] == 1.5 and isinstance(back["b"], float)
    assert back["c"] == ["x/y", (1, "s")] and back["d"] is None

    class Opaque:
        pass

    with pytest.raises(TypeError, match=r"state\['x'\]\[0\]"):
        to_weights_only_safe({"x": [Opaque()]})


def _save_steps(mgr: CheckpointManager, steps: list[int]) -> None:
    for s in steps:
        mgr.save({"step": s, "w": torch.full((16,), float(s))}, s, blocking=True)


def test_retention_keeps_newest_k_and_marker_matches(tmp_path: Path) -> None:
    mgr = CheckpointManager(tmp_path, keep=3)
    _save_steps(mgr, [10, 20, 30, 40, 50])
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [f"step-{s:08d}.pt{suf}" for s in (30, 40, 50) for suf in ("", ".done")]
    meta = json.loads((tmp_path / "step-00000050.pt.done").read_text())
    data = (tmp_path / "step-00000050.pt").read_bytes()
    assert meta == {"step": 50, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def test_interrupted_write_is_ignored(tmp_path: Path) -> None:
    mgr = CheckpointManager(tmp_path, keep=3)
    _save_steps(mgr, [10])
    # A crash mid-write leaves a temp file and no marker.
    (tmp_path / ".step-00000020.pt.abc123.tmp").write_bytes(b"PK\x03\x04 half a zip")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a temp file is not a checkpoint: no warning either
        state, path = mgr.load_latest()
    assert path.name == "step-00000010.pt" and state["step"] == 10
    _save_steps(mgr, [30])  # the next successful save clears stale temp files
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize(
    "damage", ["truncated", "wrong_sha", "marker_missing", "marker_garbage", "bad_zip"]
)
def test_damaged_newest_falls_back_with_warning(tmp_path: Path, damage: str) -> None:
    mgr = CheckpointManager(tmp_path, keep=3)
    _save_steps(mgr, [10, 20])
    newest = tmp_path / "step-00000020.pt"
    marker = tmp_path / "step-00000020.pt.done"
    data = newest.read_bytes()
    if damage == "truncated":
        newest.write_bytes(data[: len(data) // 2])
    elif damage == "wrong_sha":
        newest.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))
    elif damage == "marker_missing":
        marker.unlink()
    elif damage == "marker_garbage":
        marker.write_bytes(b"\xff\xfe\x00 not json")
    else:  # bytes the marker vouches for, but not a loadable checkpoint
        garbage = b"x" * 100
        newest.write_bytes(garbage)
        marker.write_text(json.dumps(
            {"step": 20, "size": 100, "sha256": hashlib.sha256(garbage).hexdigest()}))
    with pytest.warns(DamagedCheckpointWarning, match="step-00000020.pt"):
        state, path = mgr.load_latest()
    assert path.name == "step-00000010.pt"
    assert torch.equal(state["w"], torch.full((16,), 10.0))
    if damage != "bad_zip":  # latest() checks marker, size and sha256 (not loadability)
        with pytest.warns(DamagedCheckpointWarning):
            assert mgr.latest() == tmp_path / "step-00000010.pt"


def test_resaving_after_fallback_drops_the_abandoned_timeline(tmp_path: Path) -> None:
    mgr = CheckpointManager(tmp_path, keep=2)
    _save_steps(mgr, [10, 20])
    (tmp_path / "step-00000020.pt").write_bytes(b"damaged")
    with pytest.warns(DamagedCheckpointWarning):
        _, path = mgr.load_latest()
    assert path.name == "step-00000010.pt"
    _save_steps(mgr, [15])
    assert sorted(p.name for p in tmp_path.glob("*.pt")) == ["step-00000010.pt", "step-00000015.pt"]
    assert mgr.latest() == tmp_path / "step-00000015.pt"


def test_no_checkpoint(tmp_path: Path) -> None:
    mgr = CheckpointManager(tmp_path / "none", keep=1)
    assert mgr.latest() is None and mgr.load_latest() is None


def test_background_save_does_not_see_later_mutations(tmp_path: Path) -> None:
    model = nn.Linear(64, 64)
    mgr = CheckpointManager(tmp_path, keep=2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for round_ in range(2):  # the second round writes through the reused copy buffers
        mgr.save({"model": model.state_dict()}, round_, blocking=False)
        with torch.no_grad():  # mutate at once, likely while the thread still writes
            for p in model.parameters():
                p.add_(1000.0)
        mgr.wait()
        state, path = mgr.load_latest()
        assert path.name == f"step-{round_:08d}.pt"
        for k, v in state["model"].items():
            assert torch.equal(v, before[k]), k
        before = {k: v.clone() for k, v in model.state_dict().items()}


def test_background_write_error_surfaces(tmp_path: Path) -> None:
    mgr = CheckpointManager(tmp_path, keep=1)
    mgr.save({"w": torch.zeros(2)}, 1)
    mgr.wait()
    mgr.directory = tmp_path / "file"
    mgr.directory.write_text("not a folder")
    with pytest.raises((OSError, RuntimeError)):
        mgr.save({"w": torch.zeros(2)}, 2)
        mgr.wait()


def test_only_rank_zero_writes(tmp_path: Path) -> None:
    mgr = CheckpointManager(tmp_path, keep=1, rank=1)
    assert mgr.save({"w": torch.zeros(2)}, 1) is None
    mgr.wait()
    assert not any(tmp_path.iterdir())


def test_snapshot_copies_every_kind_of_tensor(tmp_path: Path) -> None:
    state = {
        "noncontig": torch.randn(5, 4).t(), "scalar": torch.tensor(3.5),
        "bf16": torch.randn(7).to(torch.bfloat16), "int": torch.arange(6),
        "bool": torch.tensor([True, False]), "empty": torch.zeros(0, 3),
        "sparse": torch.eye(3).to_sparse(), "np": np.ones(2, dtype=np.float32),
    }
    expect = {k: (v.clone() if torch.is_tensor(v) else torch.from_numpy(v.copy()))
              for k, v in state.items()}
    mgr = CheckpointManager(tmp_path, keep=1, copy_threads=3)
    for _ in range(2):  # second pass goes through the reused buffers
        snap = mgr.snapshot(state)
        for v in state.values():
            if torch.is_tensor(v) and v.layout is torch.strided:
                v.add_(1) if v.dtype != torch.bool else v.logical_not_()
        for k, v in snap.items():
            assert v.dtype == expect[k].dtype and torch.equal(v.to_dense(), expect[k].to_dense()), k
        expect = {k: (v.clone() if torch.is_tensor(v) else torch.from_numpy(v.copy()))
                  for k, v in state.items()}
    mgr.close()


def test_snapshot_follows_tensors_replaced_between_snapshots(tmp_path: Path) -> None:
    """Cached byte views must not outlive the tensor they were made for: a key whose tensor
    is replaced (load_state_dict into new memory, a resized buffer) is read from the new one.
    Sizes span several copy batches; parameters arrive with requires_grad."""
    big = 3 << 20  # 12 MB of float32 each: more than one copy batch
    state = {"w": nn.Parameter(torch.randn(big)), "b": torch.randn(big), "s": torch.ones(3)}
    mgr = CheckpointManager(tmp_path, keep=1)
    first = mgr.snapshot(state)
    assert torch.equal(first["w"], state["w"].detach()) and not first["w"].requires_grad
    state["b"] = torch.randn(big)  # same key, shape and dtype; other memory
    state["s"] = torch.full((3,), 7.0)
    with torch.no_grad():
        state["w"].mul_(-1)
    second = mgr.snapshot(state)
    for key in state:
        assert torch.equal(second[key], state[key].detach()), key
    mgr.close()


def test_checkpoint_of_another_experiment_is_refused(tmp_path: Path) -> None:
    model, opt, sched = _build()
    CheckpointManager(tmp_path, keep=2, identity=IDENTITY).save(
        _state(model, opt, sched, 3), 3, blocking=True
    )
    marker = json.loads((tmp_path / "step-00000003.pt.done").read_text())
    assert marker["identity"] == IDENTITY
    # The same run loads it; a run of another spec (or another folder) refuses, naming the file.
    assert CheckpointManager(tmp_path, keep=2, identity=IDENTITY).load_latest() is not None
    check_run_checkpoints(tmp_path, IDENTITY)
    for other in ({**IDENTITY, "spec_id": "multiclass-convnext-99999999"},
                  {**IDENTITY, "run_id": "multiclass-swin-00000000"}):
        with pytest.raises(CheckpointIdentityError, match="step-00000003.pt.*another experiment"):
            CheckpointManager(tmp_path, keep=2, identity=other).load_latest()
        with pytest.raises(CheckpointIdentityError, match="another experiment"):
            check_run_checkpoints(tmp_path, other)


def test_checkpoint_without_identity_is_refused_by_a_run_that_expects_one(tmp_path: Path) -> None:
    model, opt, sched = _build()
    CheckpointManager(tmp_path, keep=2).save(_state(model, opt, sched, 2), 2, blocking=True)
    with pytest.raises(CheckpointIdentityError, match="records no run identity"):
        CheckpointManager(tmp_path, keep=2, identity=IDENTITY).load_latest()
