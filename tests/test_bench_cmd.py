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
from tests.conftest import TINY, run_cli
from tests.slurm_cluster import SlurmCluster, slurm_env, wait_for_state  # noqa: F401


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


# conftest's tiny model without the keys the bench's own options set (--backbone, --crop).
BENCH_TINY = [o for o in TINY if not o.startswith(("model.backbone=", "data.crop_size="))]
TINY_KWARGS = {"depths": [1, 1, 1, 1], "dims": [16, 32, 64, 128]}


def _overrides(data: Path, *extra: str) -> list[str]:
    args = []
    for item in [*BENCH_TINY, f"data.root={data}", *extra]:
        args += ["-o", item]
    return args


def test_bench_local_measures_every_kind(synth_data: Path, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    done = run_cli(["bench", "--local", "--json", "--backbone", "convnext", "--crop", "64",
                    "--steps", "2", "--warmup", "1", "--runs-dir", str(runs),
                    *_overrides(synth_data)])
    printed = Calibration.model_validate_json(done.stdout)
    assert printed.hardware.key == hardware_here().key
    by_kind = {e.kind: e for e in printed.entries}
    assert sorted(by_kind) == ["infer", "mae", "meta", "multiclass"]
    # Samples per optimizer step: train.batch_size x accum_steps (meta: x meta.tasks_per_step).
    assert {k: e.batch_size for k, e in by_kind.items()} == {
        "multiclass": 2, "mae": 2, "meta": 2 * 4, "infer": 1}
    for e in printed.entries:
        assert (e.backbone, e.crop, e.amp, e.encoder_kwargs) == ("convnext", 64, "none",
                                                                 TINY_KWARGS)
        assert e.step_s > 0 and e.peak_mem_mb > 0 and e.steps_measured == 2
        assert e.samples_per_s == pytest.approx(e.batch_size / e.step_s, rel=1e-9)
        # Startup includes importing torch in a fresh process: never a few milliseconds.
        assert e.startup_s > 0.3
    # What was printed is what was stored, and the planner finds it.
    (stored,) = load_calibrations(runs)
    assert stored == printed
    for kind in by_kind:
        found = find_entry([stored], hardware=None, kind=kind, backbone="convnext",
                           encoder_kwargs=TINY_KWARGS, crop=64, amp="none")
        assert found is not None and found[1] == by_kind[kind]


@pytest.mark.parametrize(("args", "says"), [
    (["--kinds", "train"], "--kinds train: choose from multiclass, mae, meta, infer"),
    (["--amp", "fp8"], "--amp fp8: choose from none, bf16, fp16"),
    (["--crop", "64px"], "--crop 64px"),
    (["-o", "data.crop_size=64"], "-o data.crop_size: the bench sets it from --crop"),
    (["--local", "--cluster"], "pick one"),
])
def test_bench_bad_options_are_one_line_errors(tmp_path: Path, synth_data: Path,
                                               args: list[str], says: str) -> None:
    done = run_cli(["bench", "--local", "--runs-dir", str(tmp_path), "--crop", "64",
                    *_overrides(synth_data), *args], check=False)
    assert done.returncode == 2, done.stderr
    assert says in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_bench_missing_data_is_refused_before_measuring(tmp_path: Path) -> None:
    done = run_cli(["bench", "--local", "--runs-dir", str(tmp_path / "runs"),
                    "-o", f"data.root={tmp_path / 'nowhere'}"], check=False)
    assert done.returncode == 2 and "nowhere" in done.stderr, done.stderr
    assert not (tmp_path / "runs" / ".calibrations").exists()


@pytest.mark.slurm
def test_bench_cluster_job_writes_the_calibration_on_the_node(
        slurm_env: SlurmCluster, synth_data: Path, tmp_path: Path) -> None:  # noqa: F811
    runs = tmp_path / "runs"
    done = run_cli(["bench", "--cluster", "--json", "--kinds", "multiclass", "--crop", "64",
                    "--steps", "2", "--warmup", "1", "--runs-dir", str(runs),
                    *_overrides(synth_data, "slurm.cpus_per_task=1", "slurm.mem_gb=2",
                                "slurm.time_min=5", "slurm.signal_delay_s=30")])
    job = json.loads(done.stdout)
    wait_for_state(job["job_id"], {"COMPLETED"}, timeout=400)
    (cal,) = load_calibrations(runs)
    (entry,) = cal.entries
    assert (entry.kind, entry.crop, entry.steps_measured) == ("multiclass", 64, 2)
    assert entry.samples_per_s == pytest.approx(entry.batch_size / entry.step_s)
    assert "calibration:" in Path(job["stdout"]).read_text()
