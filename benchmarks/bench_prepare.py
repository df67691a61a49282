"""Prepare throughput vs decoding-and-resizing alone, and peak memory, with a 108-MP image.

Builds a hub-format source in a temporary folder: one parquet shard holding a 12000×9000 PNG
(108 megapixels) with its mask, and shards of 3000×2000 images, like the larger ARTeFACT
images. Then, each in a fresh process so peak RSS is its own:
  baseline  read the same rows, PIL-decode image and mask, convert to RGB, resize (box/nearest)
  prepare   hcli.data.prepare.prepare(..., max_side=2048, workers=1)
Prints both times, the throughput ratio (goal ≥ 0.8) and prepare's peak RSS (goal < 1.5 GB).

    .venv/bin/python benchmarks/bench_prepare.py [--big 12000x9000] [--rows 6]
"""

from __future__ import annotations

import argparse
import io
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _png(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _picture(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A synthetic artwork upscaled to (h, w) with sensor-like noise, so PNG stays realistic."""
    from hcli.data.synth_render import render_content, render_substrate

    small = render_substrate(rng, "Canvas", "Artistic depiction", 300, 400)
    render_content(rng, small, "Canvas", "Artistic depiction")
    img = Image.fromarray((np.clip(small, 0, 1) * 255).astype(np.uint8)).resize(
        (w, h), Image.Resampling.BILINEAR)
    a = np.asarray(img).copy()
    a += rng.integers(0, 6, a.shape, dtype=np.uint8)  # noise: no run-length shortcuts
    return a


def _mask(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    m = np.zeros((h, w), np.uint8)
    for c in (1, 2, 9, 5, 10):
        y, x = rng.integers(0, h - h // 8), rng.integers(0, w - w // 8)
        m[y : y + h // 8, x : x + w // 8] = c
    m[:, : w // 50] = 255
    m[h // 3, :] = 5  # a 1-px hair line across
    return m


def build_source(root: Path, big: tuple[int, int], rows: int) -> None:
    from hcli.data.synth import HUB_COLUMNS, write_parquet_shard

    rng = np.random.default_rng(0)
    data = root / "data"
    data.mkdir(parents=True)

    def row(i: int, h: int, w: int) -> dict:
        m = _mask(rng, h, w)
        r = {c: "" for c in HUB_COLUMNS}
        r.update(id=f"bench{i:020d}", material="Canvas", content="Artistic depiction",
                 image={"bytes": _png(_picture(rng, h, w)), "path": None},
                 annotation={"bytes": _png(m), "path": None},
                 annotation_rgb={"bytes": b"", "path": None})
        return r

    total = 1 + (rows + 2) // 3
    write_parquet_shard([row(0, big[1], big[0])], data / f"train-00000-of-{total:05d}.parquet")
    for s in range(1, total):
        n = min(3, rows - 3 * (s - 1))
        write_parquet_shard([row(10 * s + k, 2000, 3000) for k in range(n)],
                            data / f"train-{s:05d}-of-{total:05d}.parquet")


def child_baseline(src: Path, max_side: int) -> dict:
    """Decode and resize the same rows, nothing else (the floor prepare is compared with)."""
    import pyarrow.parquet as pq

    from hcli.data.imageio import target_size

    Image.MAX_IMAGE_PIXELS = None
    t0 = time.perf_counter()
    n = 0
    for f in sorted((src / "data").glob("*.parquet")):
        pf = pq.ParquetFile(f)
        for batch in pf.iter_batches(batch_size=1, columns=["image", "annotation"]):
            row = batch.to_pylist()[0]
            im = Image.open(io.BytesIO(row["image"]["bytes"])).convert("RGB")
            size = target_size(*im.size, max_side)
            np.asarray(im.resize(size, Image.Resampling.BOX))
            del im
            mk = Image.open(io.BytesIO(row["annotation"]["bytes"]))
            np.asarray(mk.resize(size, Image.Resampling.NEAREST))
            del mk, row
            n += 1
    return {"seconds": time.perf_counter() - t0, "rows": n}


def child_prepare(src: Path, out: Path, max_side: int) -> dict:
    from hcli.data.prepare import prepare

    t0 = time.perf_counter()
    report = prepare(str(src), out, max_side=max_side, workers=1, progress=False)
    return {"seconds": time.perf_counter() - t0, "rows": len(report.manifest.samples)}


def _peak_rss_mb() -> float:
    """VmHWM of this process: unlike ru_maxrss it is not inherited from the forking parent."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _run_child(*args: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", *args], check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--big", default="12000x9000", help="WxH of the one huge image")
    ap.add_argument("--rows", type=int, default=6, help="3000x2000 images besides the huge one")
    ap.add_argument("--max-side", type=int, default=2048)
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        kind, *paths = a.child
        res = (child_baseline(Path(paths[0]), a.max_side) if kind == "baseline"
               else child_prepare(Path(paths[0]), Path(paths[1]), a.max_side))
        res["peak_rss_mb"] = _peak_rss_mb()
        print(json.dumps(res))
        return
    big = tuple(int(x) for x in a.big.split("x"))
    with tempfile.TemporaryDirectory(prefix="bench_prepare_") as tmp:
        src, out = Path(tmp) / "src", Path(tmp) / "out"
        t0 = time.perf_counter()
        build_source(src, big, a.rows)  # type: ignore[arg-type]
        size_mb = sum(p.stat().st_size for p in src.rglob("*.parquet")) / 2**20
        print(f"source: 1 image {big[0]}x{big[1]} ({big[0] * big[1] / 1e6:.0f} MP) + {a.rows} "
              f"images 3000x2000, {size_mb:.0f} MB parquet (built in "
              f"{time.perf_counter() - t0:.0f} s)")
        base = _run_child("baseline", str(src), "--max-side", str(a.max_side))
        prep = _run_child("prepare", str(src), str(out), "--max-side", str(a.max_side))
    assert base["rows"] == prep["rows"], (base, prep)
    ratio = base["seconds"] / prep["seconds"]
    print(f"baseline decode+resize: {base['seconds']:.2f} s for {base['rows']} rows "
          f"({base['rows'] / base['seconds']:.2f} rows/s), peak RSS {base['peak_rss_mb']:.0f} MB")
    print(f"hcli data prepare:      {prep['seconds']:.2f} s for {prep['rows']} rows "
          f"({prep['rows'] / prep['seconds']:.2f} rows/s), peak RSS {prep['peak_rss_mb']:.0f} MB")
    print(f"throughput ratio prepare/baseline: {ratio:.2f} (goal >= 0.8)  "
          f"peak RSS: {prep['peak_rss_mb'] / 1024:.2f} GB (goal < 1.5 GB)")


if __name__ == "__main__":
    main()
