"""`hcli bench` and the calibration store it writes (hcli/calibration.py)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from hcli.calibration import (
    Calibration,
    CalibrationEntry,
    Hardware,
    calibrations_dir,
    find_entry,
    hardware_here,
    load_calibrations,
    save_calibration,
)
from hcli.errors import UserError


def _hw(key: str = "cpu-test-2c-torch2", gpu_name: str | None = None, gpus: int = 0) -> Hardware:
    return Hardware(key=key, gpu_name=gpu_name, gpu_count=gpus, cpu="Test CPU", cores=2,
                    torch="2.0", host="node1")


def _entry(kind: str = "multiclass", *, step_s: float = 0.5, batch: int = 4, crop: int = 256,
           amp: str = "none", enc: dict | None = None, at: str = "2026-01-01T00:00:00Z",
           backbone: str = "convnext") -> CalibrationEntry:
    return CalibrationEntry(
        kind=kind, backbone=backbone, encoder_kwargs=enc or {}, crop=crop, amp=amp,
        batch_size=batch, step_s=step_s, samples_per_s=batch / step_s, startup_s=3.0,
        peak_mem_mb=500.0, steps_measured=5, measured_at=at,
    )


def test_save_then_load_round_trips(tmp_path: Path) -> None:
    cal = Calibration(hardware=_hw(), entries=[_entry(), _entry("mae")])
    path = save_calibration(tmp_path, cal)
    assert path == calibrations_dir(tmp_path) / "cpu-test-2c-torch2.json"
    assert load_calibrations(tmp_path) == [cal]
    # Atomic: no temporary file left beside it.
    assert [p.name for p in calibrations_dir(tmp_path).iterdir() if p.suffix == ".tmp"] == []


def test_save_merges_and_replaces_the_same_measurement(tmp_path: Path) -> None:
    save_calibration(tmp_path, Calibration(hardware=_hw(), entries=[_entry(step_s=1.0),
                                                                     _entry("mae")]))
    # Same (kind, backbone, kwargs, crop, amp, batch): replaced; a new batch size: added.
    save_calibration(tmp_path, Calibration(hardware=_hw(), entries=[_entry(step_s=0.25),
                                                                     _entry(batch=8)]))
    (cal,) = load_calibrations(tmp_path)
    by = {(e.kind, e.batch_size): e.step_s for e in cal.entries}
    assert by == {("multiclass", 4): 0.25, ("mae", 4): 0.5, ("multiclass", 8): 0.5}


def test_other_hardware_gets_its_own_file(tmp_path: Path) -> None:
    save_calibration(tmp_path, Calibration(hardware=_hw(), entries=[_entry()]))
    save_calibration(tmp_path, Calibration(
        hardware=_hw("gpu-nvidia-a100-sxm4-80gbx4-torch2", "NVIDIA A100-SXM4-80GB", 4),
        entries=[_entry(step_s=0.05)]))
    assert len(load_calibrations(tmp_path)) == 2


def test_find_entry_by_hardware_name(tmp_path: Path) -> None:
    save_calibration(tmp_path, Calibration(hardware=_hw(), entries=[_entry(step_s=2.0)]))
    save_calibration(tmp_path, Calibration(
        hardware=_hw("gpu-nvidia-a100-sxm4-80gbx4-torch2", "NVIDIA A100-SXM4-80GB", 4),
        entries=[_entry(step_s=0.05), _entry(amp="bf16", step_s=0.03)]))
    cals = load_calibrations(tmp_path)
    q = dict(kind="multiclass", backbone="convnext", encoder_kwargs={}, crop=256, amp="none")
    hw, e = find_entry(cals, hardware="a100", **q)  # type: ignore[misc]
    assert (hw.gpu_count, e.step_s) == (4, 0.05)
    hw, e = find_entry(cals, hardware="CPU", **q)  # type: ignore[misc]
    assert (hw.gpu_count, e.step_s) == (0, 2.0)
    assert find_entry(cals, hardware="a100", **{**q, "amp": "bf16"})[1].step_s == 0.03  # type: ignore[index]
    assert find_entry(cals, hardware="h100", **q) is None
    assert find_entry(cals, hardware="a100", **{**q, "crop": 512}) is None
    assert find_entry(cals, hardware="a100", **{**q, "encoder_kwargs": {"depths": [1]}}) is None
    with pytest.raises(UserError, match="several calibrated hardware.*a100.*--hardware"):
        find_entry(cals, hardware=None, **q)


def test_find_entry_only_hardware_and_any_batch_size(tmp_path: Path) -> None:
    enc = {"dims": [16, 32], "depths": [1, 1]}
    save_calibration(tmp_path, Calibration(hardware=_hw(), entries=[
        _entry(enc=enc, batch=2, step_s=0.2, at="2026-01-01T00:00:00Z"),
        _entry(enc=enc, batch=8, step_s=0.5, at="2026-01-02T00:00:00Z"),
    ]))
    found = find_entry(load_calibrations(tmp_path), hardware=None, kind="multiclass",
                       backbone="convnext", encoder_kwargs={"depths": [1, 1], "dims": [16, 32]},
                       crop=256, amp="none")
    assert found is not None and found[1].batch_size == 8  # the newest measurement
    assert find_entry([], hardware=None, kind="multiclass", backbone="convnext",
                      encoder_kwargs={}, crop=256, amp="none") is None


@pytest.mark.parametrize("content", ["{not json", '{"hardware": {"key": 3}}'])
def test_a_corrupt_file_is_a_one_line_error_naming_it(tmp_path: Path, content: str) -> None:
    folder = calibrations_dir(tmp_path)
    folder.mkdir(parents=True)
    (folder / "cpu-broken.json").write_text(content)
    with pytest.raises(UserError) as info:
        load_calibrations(tmp_path)
    message = str(info.value)
    assert "cpu-broken.json" in message and "\n" not in message and "hcli bench" in message


def test_hardware_here_describes_this_machine() -> None:
    hw = hardware_here()
    assert hw.cores >= 1 and hw.torch and hw.host
    assert hw.key.startswith("gpu-" if hw.gpu_count else "cpu-")
    assert hw.key == hardware_here().key  # stable
    assert hw.key == hw.key.lower() and " " not in hw.key and os.sep not in hw.key
    assert json.loads(hw.model_dump_json())["key"] == hw.key
