"""`hcli data prepare`: exact good rows, reported bad rows, resume, idempotence, dataset errors."""

from __future__ import annotations

import hashlib
import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from typer.testing import CliRunner

from hcli.data.manifest import load_manifest
from hcli.data.prepare import format_summary, merge_manifest, prepare, prepare_source_shard
from hcli.data.synth import HUB_COLUMNS, synthesize, write_parquet_shard
from hcli.errors import DataError

REPO = Path(__file__).resolve().parents[1]


def _png(arr_or_im: Any, fmt: str = "PNG") -> bytes:
    im = arr_or_im if isinstance(arr_or_im, Image.Image) else Image.fromarray(arr_or_im)
    buf = io.BytesIO()
    im.save(buf, format=fmt)
    return buf.getvalue()


def _row(rid: str, image: bytes, mask: bytes, material: str = "Paper") -> dict[str, Any]:
    row: dict[str, Any] = {c: "" for c in HUB_COLUMNS}
    row.update(id=rid, image={"bytes": image, "path": None}, material=material,
               annotation={"bytes": mask, "path": None}, content="Line art", type="Print",
               annotation_rgb={"bytes": mask, "path": None})
    return row


def _mask(h: int, w: int, labels=(0, 3, 255)) -> np.ndarray:
    m = np.zeros((h, w), np.uint8)
    for k, lab in enumerate(labels):
        m[k * h // len(labels):(k + 1) * h // len(labels)] = lab
    m[h // 2, :: max(1, w // 7)] = 5  # a few thin "Hair" pixels
    return m


def _broken_rows() -> tuple[list[dict], dict[str, tuple[np.ndarray, np.ndarray]], dict[str, str]]:
    """Rows that must be kept (with the exact expected arrays) and rows that must be skipped."""
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    m = _mask(40, 50)
    keep: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    rows = []

    rgba = np.dstack([rgb, rng.integers(0, 256, (40, 50), dtype=np.uint8)])
    rows.append(_row("rgba0000000000000000000000", _png(rgba), _png(m)))
    keep[rows[-1]["id"]] = (rgb, m)

    cmyk = Image.fromarray(rgb).convert("CMYK")
    jpg = _png(cmyk, "JPEG")
    rows.append(_row("cmyk0000000000000000000000", jpg, _png(m)))
    keep[rows[-1]["id"]] = (np.asarray(Image.open(io.BytesIO(jpg)).convert("RGB")), m)

    pal = Image.fromarray(rgb).quantize(16)
    rows.append(_row("pal00000000000000000000000", _png(pal), _png(Image.fromarray(m))))
    keep[rows[-1]["id"]] = (np.asarray(pal.convert("RGB")), m)

    pmask = Image.fromarray(m, mode="L").convert("P")  # palette mask: indices are the ids
    rows.append(_row("pmask000000000000000000000", _png(rgb), _png(pmask)))
    keep[rows[-1]["id"]] = (rgb, m)

    grey = Image.fromarray(rgb[..., 0])
    rows.append(_row("grey00000000000000000000000"[:25], _png(grey), _png(m)))
    keep[rows[-1]["id"]] = (np.repeat(rgb[..., :1], 3, 2), m)

    g16 = (rgb[..., 1].astype(np.uint16) * 257)
    rows.append(_row("g16000000000000000000000000"[:25], _png(Image.fromarray(g16)), _png(m)))
    keep[rows[-1]["id"]] = (np.repeat(rgb[..., 1:2], 3, 2), m)

    big = np.zeros((700, 1500, 3), np.uint8)
    big[..., 0] = np.linspace(0, 255, 1500, dtype=np.uint8)
    rows.append(_row("big00000000000000000000000", _png(big), _png(_mask(700, 1500))))

    bad = {
        "corrupt0000000000000000000": "image is not a decodable",
        "mismatch000000000000000000": "annotation is 50x41 px but the image is 50x40",
        "labels00000000000000000000": "label(s) 16, 200",
        "rgbmask0000000000000000000": "annotation has mode RGB",
        "m16000000000000000000000000"[:25]: "label 300",
        "truncated00000000000000000": "cannot be decoded",
    }
    png = _png(rgb)
    rows.append(_row("corrupt0000000000000000000", b"\x89PNG not really", _png(m)))
    rows.append(_row("mismatch000000000000000000", png, _png(_mask(41, 50))))
    lab = m.copy()
    lab[0, 0], lab[1, 1] = 16, 200
    rows.append(_row("labels00000000000000000000", png, _png(lab)))
    rows.append(_row("rgbmask0000000000000000000", png, _png(np.dstack([m, m, m]))))
    m16 = m.astype(np.uint16)
    m16[2, 2] = 300
    rows.append(_row("m16000000000000000000000000"[:25], png, _png(Image.fromarray(m16))))
    rows.append(_row("truncated00000000000000000", png[: len(png) // 2], _png(m)))
    return rows, keep, bad


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, dict]:
    root = tmp_path_factory.mktemp("src")
    synthesize(root, n=12, seed=1, size=96, shards=2)
    rows, keep, bad = _broken_rows()
    write_parquet_shard(rows, root / "data" / "train-00002-of-00003.parquet")
    return root, keep, bad


@pytest.fixture(scope="module")
def prepared(source, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("out")
    prepare(str(source[0]), out, max_side=512, progress=False)
    return out


def _shas(out: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(out.glob("shard-*.h5"))}


def test_good_rows_kept_exactly(source, prepared: Path) -> None:
    root, keep, _ = source
    m = load_manifest(prepared)
    ids = {s.id for s in m.samples}
    assert len(m.samples) == 12 + len(keep) + 1
    # synth rows: pixel-equal to the source PNGs
    for path in sorted((root / "data").glob("*.parquet"))[:2]:
        for r in pq.read_table(path).to_pylist():
            sample = m.by_id()[r["id"]]
            with h5py.File(prepared / sample.shard) as f:
                g = f[r["id"]]
                src = np.asarray(Image.open(io.BytesIO(r["image"]["bytes"])).convert("RGB"))
                ann = np.asarray(Image.open(io.BytesIO(r["annotation"]["bytes"])))
                assert np.array_equal(g["image"][()], src)
                assert np.array_equal(g["mask"][()], ann)
                assert g.attrs["material"] == r["material"] == sample.material
                assert g.attrs["content"] == r["content"] and g.attrs["type"] == r["type"]
                assert (g.attrs["orig_height"], g.attrs["orig_width"]) == ann.shape
            counts = np.bincount(ann.ravel(), minlength=256)
            assert sample.class_pixels == [*counts[:16].tolist(), int(counts[255])]
            assert sample.class_pixels == sample.class_pixels_orig
    # converted modes
    with h5py.File(prepared / "shard-00002.h5") as f:
        for rid, (rgb, mask) in keep.items():
            assert rid in ids
            img = f[rid]["image"][()]
            assert img.dtype == np.uint8 and img.shape == rgb.shape
            tol = 1 if rid.startswith("g16") else 0  # 16 → 8 bit rounding
            assert np.abs(img.astype(int) - rgb).max() <= tol, rid
            assert np.array_equal(f[rid]["mask"][()], mask), rid
            counts = np.bincount(mask.ravel(), minlength=256)
            assert m.by_id()[rid].class_pixels_orig == [*counts[:16].tolist(), int(counts[255])]


def test_large_image_resized_with_counts(prepared: Path) -> None:
    s = load_manifest(prepared).by_id()["big00000000000000000000000"]
    assert (s.orig_width, s.orig_height) == (1500, 700)
    assert (s.width, s.height) == (512, 239)
    full = np.bincount(_mask(700, 1500).ravel(), minlength=256)
    assert s.class_pixels_orig == [*full[:16].tolist(), int(full[255])]
    assert sum(s.class_pixels) == 512 * 239
    with h5py.File(prepared / s.shard) as f:
        d = f[s.id]["image"]
        assert d.shape == (239, 512, 3) and d.chunks == (239, 256, 3)
        assert d.compression is None and f[s.id]["mask"].chunks == (239, 256)
        assert set(np.unique(f[s.id]["mask"][()])) <= {0, 3, 5, 255}


def test_bad_rows_reported_with_reasons(source, prepared: Path) -> None:
    _, _, bad = source
    m = load_manifest(prepared)
    skipped = {s.id: s for s in m.skipped}
    assert set(skipped) == set(bad)
    for rid, needle in bad.items():
        assert needle in skipped[rid].reason, (rid, skipped[rid].reason)
        assert skipped[rid].source == "data/train-00002-of-00003.parquet"
        assert rid not in m.by_id()
    text = format_summary_for(prepared)
    assert "skipped rows: 6" in text


def format_summary_for(out: Path) -> str:
    from hcli.data.prepare import PrepareReport

    return format_summary(PrepareReport(out, load_manifest(out), 0, 0))


def test_manifest_shards_and_hashes(prepared: Path) -> None:
    m = load_manifest(prepared)
    assert [s.file for s in m.shards] == ["shard-00000.h5", "shard-00001.h5", "shard-00002.h5"]
    assert all(s.sha256 == _shas(prepared)[s.file] for s in m.shards)
    assert m.shards[0].source == "data/train-00000-of-00002.parquet"
    assert m.resize.max_side == 512 and m.resize.image_filter == "area"


def test_second_run_does_nothing(source, prepared: Path) -> None:
    before = {p.name: p.stat().st_mtime_ns for p in prepared.iterdir()}
    report = prepare(str(source[0]), prepared, max_side=512, progress=False)
    assert report.up_to_date and report.shards_written == 0
    assert "nothing to do" in format_summary(report)
    assert {p.name: p.stat().st_mtime_ns for p in prepared.iterdir()} == before


def test_changed_max_side_redoes_all(source, prepared: Path, tmp_path: Path) -> None:
    report = prepare(str(source[0]), tmp_path, max_side=64, progress=False)
    assert report.shards_written == 3
    assert max(max(s.height, s.width) for s in report.manifest.samples) == 64


def test_partial_states_resume_identically(source, prepared: Path, tmp_path: Path) -> None:
    out = tmp_path / "o"
    ref = _shas(prepared)
    prepare(str(source[0]), out, max_side=512, progress=False)
    (out / "shard-00001.json").unlink()  # killed between rename and sidecar
    p2 = out / "shard-00002.h5"
    p2.write_bytes(p2.read_bytes()[:1000])  # a damaged shard no longer matches its sidecar
    (out / ".shard-00000.h5.tmp").write_bytes(b"half")  # killed mid-write
    report = prepare(str(source[0]), out, max_side=512, progress=False)
    assert report.shards_written == 2 and report.shards_reused == 1
    assert _shas(out) == ref
    assert not list(out.glob(".*.tmp"))


def test_workers_give_identical_shards(source, prepared: Path, tmp_path: Path) -> None:
    prepare(str(source[0]), tmp_path, max_side=512, workers=2, progress=False)
    assert _shas(tmp_path) == _shas(prepared)


def test_array_task_api_and_merge(source, prepared: Path, tmp_path: Path) -> None:
    root = source[0]
    files = sorted((root / "data").glob("*.parquet"))
    for i, f in enumerate(files):
        r = prepare_source_shard(f, tmp_path, 512, i, source_name=f"data/{f.name}")
        assert r.entry.file == f"shard-{i:05d}.h5"
    m = merge_manifest(tmp_path, str(root), 512, n_shards=len(files))
    assert _shas(tmp_path) == _shas(prepared)
    assert [s.id for s in m.samples] == [s.id for s in load_manifest(prepared).samples]


def test_kill_and_rerun_gives_identical_shards(tmp_path: Path) -> None:
    # shards big enough (noise, 3 rows of 1024×768 each) that the kill lands mid-run
    src = tmp_path / "src"
    (src / "data").mkdir(parents=True)
    rng = np.random.default_rng(5)
    for s in range(4):
        rows = [_row(f"k{s}{i}".ljust(25, "0"), _png(rng.integers(0, 256, (768, 1024, 3),
                                                                 dtype=np.uint8)),
                     _png(_mask(768, 1024))) for i in range(3)]
        write_parquet_shard(rows, src / "data" / f"train-{s:05d}-of-00004.parquet")
    ref = tmp_path / "ref"
    prepare(str(src), ref, max_side=2048, progress=False)

    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "hcli", "data", "prepare", "--source", str(src), "--out",
           str(out), "--quiet"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if (out / ".shard-00002.h5.tmp").exists():
            break
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "manifest.json").exists(), "the run finished before it could be killed"
    assert (out / "shard-00000.h5").exists()

    report = prepare(str(src), out, max_side=2048, progress=False)
    assert report.shards_reused >= 1 and report.shards_written >= 1
    assert _shas(out) == _shas(ref)
    assert load_manifest(out).shards == load_manifest(ref).shards


def test_dataset_level_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no parquet files under .*empty"):
        prepare(str(tmp_path / "empty"), tmp_path / "o1", progress=False)
    d = tmp_path / "nocol" / "data"
    d.mkdir(parents=True)
    pq.write_table(pa.table({"id": ["a"], "image": [b"x"], "material": ["Paper"],
                             "content": ["Line art"]}), d / "train-00000-of-00001.parquet")
    with pytest.raises(DataError, match=r"00001\.parquet has no column 'annotation'"):
        prepare(str(tmp_path / "nocol"), tmp_path / "o2", progress=False)
    (d / "junk.parquet").write_bytes(b"not parquet")
    with pytest.raises(DataError, match="junk.parquet is not a readable parquet"):
        prepare(str(tmp_path / "nocol"), tmp_path / "o3", progress=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError, match="huggingface-cli download danielaivanova/damaged-media"):
        prepare("danielaivanova/damaged-media", tmp_path / "o4", progress=False)
    with pytest.raises(DataError, match="no such folder"):
        prepare(str(tmp_path / "missing" / "dir"), tmp_path / "o5", progress=False)


def test_cli(source, tmp_path: Path, monkeypatch, capsys) -> None:
    from hcli.cli import app, main

    runner = CliRunner()
    monkeypatch.setenv("PATH", "/nonexistent")  # no sbatch: --cluster must say so, exit 2
    with pytest.raises(SystemExit) as exc:
        main(["data", "prepare", "--source", str(source[0]), "--out", str(tmp_path / "c"),
              "--cluster"])
    assert exc.value.code == 2 and "sbatch is not on the PATH" in capsys.readouterr().err
    monkeypatch.undo()
    res = runner.invoke(app, ["data", "synth", "--out", str(tmp_path / "s"), "--n", "3",
                              "--size", "64"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["data", "prepare", "--source", str(tmp_path / "s"), "--out",
                              str(tmp_path / "p"), "--quiet"])
    assert res.exit_code == 0, res.output
    assert "samples: 3" in res.output and load_manifest(tmp_path / "p").samples
