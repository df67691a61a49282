"""Node-local data staging (data.stage_to_local, jobs/data/staging.py): the copy, its reuse by a
second job, the sha256 check and its fallbacks, the run id, and a training run that reads the
staged copy and ends bitwise where one reading the shared path ends."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hcli.data.manifest import load_manifest
from hcli.identity import run_id
from hcli.spec import Spec
from jobs.data import staging
from jobs.data.staging import scratch_root, stage_dataset, stage_spec
from tests.conftest import REPO, run_cli, tiny_overrides


@pytest.fixture
def data(synth_data: Path, tmp_path: Path) -> Path:
    """A private copy of the prepared synthetic data (tests alter shards)."""
    out = tmp_path / "shared" / "prepared"
    shutil.copytree(synth_data, out)
    return out


def _messages() -> tuple[list[str], object]:
    said: list[str] = []
    return said, said.append


def _shards(folder: Path) -> list[Path]:
    return sorted(folder.glob("shard-*.h5"))


def test_copies_checks_and_reads_from_the_copy(data: Path, tmp_path: Path) -> None:
    said, say = _messages()
    result = stage_dataset(data, tmp_path / "scratch", say=say)
    assert result.staged and not result.reused and result.note is None
    assert result.read_from.is_relative_to(tmp_path / "scratch")
    # Every shard and the manifest, byte for byte; the sidecars are not read by jobs.
    for shard in _shards(data):
        assert (result.read_from / shard.name).read_bytes() == shard.read_bytes()
    manifest = "manifest.json"
    assert (result.read_from / manifest).read_bytes() == (data / manifest).read_bytes()
    assert not list(result.read_from.glob("shard-*.json"))
    assert result.bytes == sum(p.stat().st_size for p in _shards(data)) + \
        (data / "manifest.json").stat().st_size
    assert any("copied" in m for m in said)
    assert staging.origin_of(result.read_from) is result
    # Nothing half-made is left beside it.
    assert sorted(p.name for p in result.read_from.parent.iterdir()) == \
        sorted([result.read_from.name, f"{result.read_from.name}.lock"])


def test_a_second_job_reuses_the_copy_after_checking_it(data: Path, tmp_path: Path) -> None:
    first = stage_dataset(data, tmp_path / "scratch", say=lambda m: None)
    said, say = _messages()
    second = stage_dataset(data, tmp_path / "scratch", say=say)
    assert second.staged and second.reused and second.read_from == first.read_from
    assert second.copy_s is None and second.verify_s is not None
    assert not any("copied" in m for m in said)


def test_a_re_prepared_dataset_gets_its_own_copy(data: Path, tmp_path: Path) -> None:
    first = stage_dataset(data, tmp_path / "scratch", say=lambda m: None)
    manifest = json.loads((data / "manifest.json").read_text())
    manifest["created_at"] = "2030-01-01T00:00:00+00:00"
    (data / "manifest.json").write_text(json.dumps(manifest))
    second = stage_dataset(data, tmp_path / "scratch", say=lambda m: None)
    assert second.staged and not second.reused and second.read_from != first.read_from


def test_a_damaged_local_copy_is_copied_again(data: Path, tmp_path: Path) -> None:
    first = stage_dataset(data, tmp_path / "scratch", say=lambda m: None)
    victim = _shards(first.read_from)[0]
    raw = bytearray(victim.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    victim.write_bytes(bytes(raw))
    said, say = _messages()
    second = stage_dataset(data, tmp_path / "scratch", say=say)
    assert second.staged and not second.reused
    assert victim.read_bytes() == (data / victim.name).read_bytes()
    assert any("failed its check" in m for m in said)


def test_a_shared_shard_that_fails_its_sha256_falls_back_with_a_warning(
    data: Path, tmp_path: Path
) -> None:
    shard = _shards(data)[0]
    raw = bytearray(shard.read_bytes())
    raw[-100] ^= 0xFF
    shard.write_bytes(bytes(raw))
    said, say = _messages()
    result = stage_dataset(data, tmp_path / "scratch", say=say)
    assert not result.staged and result.read_from == data.resolve()
    assert "sha256" in (result.note or "")
    (warning,) = [m for m in said if m.startswith("warning:")]
    assert shard.name in warning and f"reading the data from the shared path {data}" in warning
    # No copy, finished or half-made, is left to be reused.
    base = tmp_path / "scratch" / f"hcli-stage-{os.getuid()}"
    assert [p.name for p in base.iterdir()] == [p.name for p in base.glob("*.lock")]


def test_a_full_disk_falls_back_with_a_warning(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = shutil.disk_usage
    monkeypatch.setattr(staging.shutil, "disk_usage",
                        lambda p: real(p)._replace(free=1 << 20))
    said, say = _messages()
    result = stage_dataset(data, tmp_path / "scratch", say=say)
    assert not result.staged and result.read_from == data.resolve()
    assert "not enough space" in (result.note or "") and "data.stage_dir" in result.note
    assert any(m.startswith("warning:") for m in said)


def test_running_out_of_space_mid_copy_falls_back(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_space(src: Path, dst: Path) -> str:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(staging, "_copy_hashed", no_space)
    said, say = _messages()
    result = stage_dataset(data, tmp_path / "scratch", say=say)
    assert not result.staged and "ran out of space" in (result.note or "")
    assert not list((tmp_path / "scratch").glob("*/.*.tmp"))


def test_concurrent_jobs_make_one_copy(data: Path, tmp_path: Path) -> None:
    code = ("import sys; from pathlib import Path; from jobs.data.staging import stage_dataset; "
            "r = stage_dataset(Path(sys.argv[1]), Path(sys.argv[2])); "
            "print(r.staged, r.reused, r.read_from)")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(data), str(tmp_path / "scratch")],
                              cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(3)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    results = [o.split() for o, _ in outs]
    assert len({r[2] for r in results}) == 1
    assert sorted(r[1] for r in results) == ["False", "True", "True"]  # one copied, two reused
    assert sum("copied" in err for _, err in outs) == 1


def test_scratch_root_order() -> None:
    assert scratch_root(None, {"SLURM_TMPDIR": "/a", "TMPDIR": "/b"}) == Path("/a")
    assert scratch_root(None, {"TMPDIR": "/b"}) == Path("/b")
    assert scratch_root(None, {}) == Path("/tmp")
    assert scratch_root(Path("$LOCAL/x"), {"LOCAL": "/nvme", "TMPDIR": "/b"}) == Path("/nvme/x")


def test_stage_spec_leaves_the_run_id(data: Path, tmp_path: Path) -> None:
    spec = Spec.model_validate({"data": {"root": str(data)}})
    on = Spec.model_validate({"data": {"root": str(data), "stage_to_local": True,
                                       "stage_dir": str(tmp_path / "scratch")}})
    assert run_id(on) == run_id(spec)
    staged, result = stage_spec(on, say=lambda m: None)
    assert staged.data.root == result.read_from != data
    assert on.data.root == data  # the caller's spec (the run folder's) is unchanged
    assert load_manifest(staged.data.root).samples == load_manifest(data).samples


def _run(runs: Path, data: Path, *extra: str) -> Path:
    run_cli(["submit", "multiclass", "--foreground", "--runs-dir", str(runs),
             *tiny_overrides(data, "train.steps=8", *extra)])
    (run,) = [p for p in runs.iterdir() if not p.name.startswith(".")]
    return run


@pytest.mark.slow
def test_training_on_the_staged_copy_is_bitwise_the_same(data: Path, tmp_path: Path) -> None:
    plain = _run(tmp_path / "plain", data)
    scratch = tmp_path / "scratch"
    staged = _run(tmp_path / "staged", data, "data.stage_to_local=true",
                  f"data.stage_dir={scratch}")
    assert staged.name == plain.name  # same run id
    prov = json.loads((staged / "provenance.json").read_text())
    assert prov["data"]["staged"] is True and prov["data"]["root"] == str(data)
    assert Path(prov["data"]["read_from"]).is_relative_to(scratch)
    assert prov["manifest"] == str(data / "manifest.json")
    plain_prov = json.loads((plain / "provenance.json").read_text())
    assert plain_prov["data"] == {**plain_prov["data"], "staged": False,
                                  "read_from": str(data)}
    assert prov["samples"] == plain_prov["samples"]

    def final(run: Path) -> dict[str, torch.Tensor]:
        (ckpt,) = sorted((run / "checkpoints").glob("step-00000008.pt"))
        return torch.load(ckpt, weights_only=True)["model"]

    a, b = final(plain), final(staged)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    metrics = [json.loads((r / "results.json").read_text()) for r in (plain, staged)]
    for m in metrics:
        m.pop("compute", None)
    assert metrics[0] == metrics[1]
