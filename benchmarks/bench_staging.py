"""Node-local staging (data.stage_to_local): training crops read from a slow directory vs from
the staged copy, and what the staging copy itself costs against the floor of a plain `cp`.

The data: N noisy 2048×1536 images with masks (benchmarks/bench_loader.py's `make_sample`) in
prepared HDF5 shards with a real manifest (sha256 per shard). The slow directories, made here:

- `throttled`: ext4 on a loop device whose reads this process may issue only `--iops` times a
  second (cgroup v1 blkio throttle): a real block device with a network disk's IOPS budget.
- `fuse`: a real FUSE mount of the data (bindfs, `-o direct_io` so every read goes through the
  FUSE daemon, no page cache at the mount; the backing files' pages are evicted before each
  cold round). The cost of a user-space filesystem, nothing added.
- `delay`: a STAND-IN for a network filesystem: a FUSE passthrough (this file, `--serve`, via
  mfusepy) that sleeps `--delay-ms` in every read request, the round trip an NFS/Lustre read pays.
  Real network filesystems also read ahead and keep requests in flight, so this is a simple
  per-read latency model, not a measurement of any real shared filesystem.

Per slow directory: crops/s reading from it (cold) vs from the staged copy (warm: just copied,
and cold: evicted), the staging copy (copy + sha256 while copying), the reuse check of a second
job (sha256 of the local copy), the floors (`cp -r` of the same files, which does not fsync;
the staging copy's own loop without the sha256; an in-memory copy of the same bytes), and the
number of crops after which staging has paid for itself.

Needs root (a loop device and a blkio cgroup for `throttled`), `apt-get install fuse3 bindfs`
for `fuse`, and a Python with mfusepy for `delay` (`--fuse-python`, e.g. a venv with
`pip install mfusepy`). Not run in CI. Figures and their reading: docs/staging.md.

    .venv/bin/python benchmarks/bench_staging.py [--n 12] [--samples 150] [--repeats 3]
        [--modes fuse,delay,throttled] [--iops 300] [--delay-ms 0.5]
        [--fuse-python /tmp/fusevenv/bin/python]
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hcli.data.manifest import Manifest

# The heavy imports (numpy, h5py, torch) are made in main(): `--serve` runs under a Python that
# has mfusepy and maybe nothing else.

# -- the delay filesystem (run as `bench_staging.py --serve SRC MNT DELAY_MS`) ----------------


def serve(src: str, mnt: str, delay_ms: float) -> None:
    """Read-only passthrough of `src` at `mnt`; each read request sleeps `delay_ms` first."""
    import mfusepy as fuse

    delay = delay_ms / 1e3

    class Delayed(fuse.Operations):
        use_ns = True

        def _path(self, path: str) -> str:
            return os.path.join(src, path.lstrip("/"))

        def getattr(self, path, fh=None):
            try:
                st = os.lstat(self._path(path))
            except FileNotFoundError:
                raise fuse.FuseOSError(errno.ENOENT) from None
            keys = ("st_mode", "st_nlink", "st_size", "st_uid", "st_gid", "st_atime_ns",
                    "st_mtime_ns", "st_ctime_ns")
            out = {k: getattr(st, k) for k in keys}
            out.update(st_atime=st.st_atime_ns, st_mtime=st.st_mtime_ns, st_ctime=st.st_ctime_ns)
            return out

        def readdir(self, path, fh):
            return [".", "..", *os.listdir(self._path(path))]

        def open(self, path, flags):
            return os.open(self._path(path), os.O_RDONLY)

        def read(self, path, size, offset, fh):
            time.sleep(delay)
            return os.pread(fh, size, offset)

        def release(self, path, fh):
            os.close(fh)
            return 0

    fuse.FUSE(Delayed(), mnt, foreground=True, ro=True, direct_io=True, allow_other=True)


# -- data ---------------------------------------------------------------------------------------


def write_dataset(root: Path, n: int, shards: int) -> Manifest:
    """Prepared-format shards (one group per sample, 256-px chunks) and a manifest with the real
    sha256 of each shard, which staging checks."""
    import h5py
    import numpy as np
    from bench_loader import make_sample

    from hcli.data.manifest import Manifest

    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    samples, entries = [], []
    per = -(-n // shards)
    for s in range(shards):
        name = f"shard-{s:05d}.h5"
        ids = range(s * per, min(n, (s + 1) * per))
        with h5py.File(root / name, "w", libver=("earliest", "v110")) as fh:
            for i in ids:
                image, mask = make_sample(rng)
                sid = f"bench{i:04d}"
                g = fh.create_group(sid)
                g.create_dataset("image", data=image, chunks=(256, 256, 3), track_times=False)
                g.create_dataset("mask", data=mask, chunks=(256, 256), track_times=False)
                counts = np.bincount(mask.ravel(), minlength=256)
                pixels = [int(c) for c in counts[:16]] + [int(counts[255])]
                samples.append({
                    "id": sid, "shard": name, "material": "Paper", "content": "Line art",
                    "height": image.shape[0], "width": image.shape[1],
                    "orig_height": image.shape[0], "orig_width": image.shape[1],
                    "class_pixels": pixels, "class_pixels_orig": pixels,
                })
        digest = hashlib.sha256((root / name).read_bytes()).hexdigest()
        entries.append({"file": name, "source": "bench", "samples": len(ids), "sha256": digest})
    manifest = {"source": "bench", "created_at": datetime.now(UTC).isoformat(),
                "resize": {"max_side": 2048}, "shards": entries, "samples": samples}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return Manifest.model_validate(manifest)


def evict(folder: Path) -> None:
    """Drop `folder`'s files from the page cache (clean pages only; nothing else is touched)."""
    for path in folder.rglob("*"):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


# -- mounts ---------------------------------------------------------------------------------------


def _wait_mounted(mnt: Path, proc: subprocess.Popen | None = None, timeout: float = 20) -> None:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if os.path.ismount(mnt) and (mnt / "manifest.json").exists():
            return
        if proc is not None and proc.poll() is not None:
            err = proc.stderr.read() if proc.stderr else ""
            raise RuntimeError(f"the FUSE server exited: {err}")
        time.sleep(0.1)
    raise RuntimeError(f"{mnt} did not mount in {timeout} s")


@contextmanager
def slow_dir(mode: str, src: Path, mnt: Path, args: argparse.Namespace) -> Iterator[Path]:
    """`src` at `mnt` through the slow path of `mode`; yields the folder whose page cache must
    be evicted for a cold read."""
    mnt.mkdir(parents=True, exist_ok=True)
    if mode == "throttled":
        with throttled(src, mnt, args.iops):
            yield mnt
        return
    proc = None
    if mode == "fuse":
        subprocess.run(["bindfs", "-r", "-o", "direct_io", str(src), str(mnt)], check=True)
        _wait_mounted(mnt)
    else:
        proc = subprocess.Popen([args.fuse_python, __file__, "--serve", str(src), str(mnt),
                                 str(args.delay_ms)], stderr=subprocess.PIPE, text=True)
        _wait_mounted(mnt, proc)
    try:
        yield src
    finally:
        tool = "fusermount3" if shutil.which("fusermount3") else "fusermount"
        subprocess.run([tool, "-u", str(mnt)], check=False, capture_output=True)
        if proc is not None:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


@contextmanager
def throttled(src: Path, mnt: Path, iops: int) -> Iterator[None]:
    """A copy of `src` on an ext4 loop device whose reads this process may issue only `iops`
    times a second (cgroup v1 blkio throttle): a real block device with a network disk's IOPS
    budget. Buffered reads are throttled in cgroup v1 (buffered writes would not be)."""
    size = sum(p.stat().st_size for p in src.iterdir()) * 13 // 10 + (64 << 20)
    img = mnt.with_suffix(".img")
    with open(img, "wb") as fh:
        fh.truncate(size)
    loop = subprocess.run(["losetup", "-f", "--show", "--direct-io=on", str(img)], check=True,
                          capture_output=True, text=True).stdout.strip()
    group = Path(f"/sys/fs/cgroup/blkio/hcli-bench-staging-{os.getpid()}")
    try:
        subprocess.run(["mkfs.ext4", "-q", loop], check=True)
        subprocess.run(["mount", loop, str(mnt)], check=True)
        for path in src.iterdir():
            shutil.copyfile(path, mnt / path.name)
        os.sync()
        dev = Path(f"/sys/block/{Path(loop).name}/dev").read_text().strip()
        group.mkdir()
        (group / "blkio.throttle.read_iops_device").write_text(f"{dev} {iops}\n")
        (group / "cgroup.procs").write_text(f"{os.getpid()}\n")
        yield
    finally:
        Path("/sys/fs/cgroup/blkio/cgroup.procs").write_text(f"{os.getpid()}\n")
        if group.exists():
            group.rmdir()
        subprocess.run(["umount", str(mnt)], check=False)
        subprocess.run(["losetup", "-d", loop], check=False)
        img.unlink()


# -- measurements ---------------------------------------------------------------------------------


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def warm(folder: Path) -> None:
    """Read `folder`'s files whole: their pages in the page cache, as after a copy."""
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as fh:
                while fh.read(8 << 20):
                    pass


def plain_copy(src: Path, dst: Path) -> None:
    """The staging copy without its sha256: same 8 MiB reads, write, fsync."""
    dst.mkdir()
    for path in src.iterdir():
        if path.is_file():
            with open(path, "rb") as fin, open(dst / path.name, "wb") as fout:
                while block := fin.read(8 << 20):
                    fout.write(block)
                fout.flush()
                os.fsync(fout.fileno())


def crops_per_s(root: Path, manifest: Manifest, samples: int, repeats: int,
                before=None) -> float:
    from bench_loader import CROP, rate

    from jobs.data import CropDataset

    best = 0.0
    for _ in range(repeats):
        if before is not None:
            before()
        ds = CropDataset(root, manifest, [s.id for s in manifest.samples], crop_size=CROP)
        best = max(best, rate(ds, len(manifest.samples), samples))
        ds.reader.close()
    return best


def memcpy_s(nbytes: int) -> float:
    import numpy as np

    src = np.ones(nbytes, np.uint8)
    dst = np.empty_like(src)
    return min(timed(lambda: np.copyto(dst, src)) for _ in range(3))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=12, help="images (2048×1536)")
    ap.add_argument("--shards", type=int, default=3)
    ap.add_argument("--samples", type=int, default=150, help="crops timed per round")
    ap.add_argument("--repeats", type=int, default=2, help="crop rounds; the best is reported")
    ap.add_argument("--copy-repeats", type=int, default=3, help="copy rounds; medians")
    ap.add_argument("--delay-ms", type=float, default=0.5, help="per-read delay of `delay`")
    ap.add_argument("--iops", type=int, default=300, help="read IOPS of `throttled`")
    ap.add_argument("--modes", default="fuse,delay,throttled")
    ap.add_argument("--fuse-python", default=sys.executable,
                    help="a Python with mfusepy, for the `delay` filesystem")
    ap.add_argument("--tmp", type=Path, default=None, help="where data and scratch go")
    ap.add_argument("--serve", nargs=3, metavar=("SRC", "MNT", "DELAY_MS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve(args.serve[0], args.serve[1], float(args.serve[2]))
        return

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import cv2
    import torch

    torch.set_num_threads(1)
    cv2.setNumThreads(0)  # one core per process, as in a DataLoader worker
    with tempfile.TemporaryDirectory(dir=args.tmp, prefix="bench-staging-") as tmp:
        base = Path(tmp)
        shared = base / "shared"
        t = time.perf_counter()
        manifest = write_dataset(shared, args.n, args.shards)
        nbytes = sum(p.stat().st_size for p in shared.iterdir())
        print(f"wrote {args.n} images {2048}×{1536} in {args.shards} shards, "
              f"{nbytes / 2**20:.0f} MiB, in {time.perf_counter() - t:.1f} s")
        mem = memcpy_s(nbytes)
        print(f"floor: in-memory copy of the same bytes {mem * 1e3:.0f} ms "
              f"({nbytes / mem / 2**30:.1f} GiB/s)")
        evict(shared)
        local_cold = crops_per_s(shared, manifest, args.samples, args.repeats,
                                 before=lambda: evict(shared))
        local_warm = crops_per_s(shared, manifest, args.samples, args.repeats,
                                 before=lambda: warm(shared))
        print(f"local disk, no FUSE: cold {local_cold:.1f} crops/s, warm {local_warm:.1f} crops/s")

        for mode in [m for m in args.modes.split(",") if m]:
            measure(mode, base, shared, manifest, nbytes, args)


def measure(mode: str, base: Path, shared: Path, manifest: Manifest, nbytes: int,
            args: argparse.Namespace) -> None:
    mnt = base / f"mnt-{mode}"
    label = {"fuse": "bindfs FUSE (direct_io)",
             "delay": f"STAND-IN delay FUSE, {args.delay_ms} ms per read",
             "throttled": f"ext4 on a loop device throttled to {args.iops} read IOPS (blkio)"}[mode]
    with slow_dir(mode, shared, mnt, args) as cold_dir:
        _measure(mode, label, base, mnt, cold_dir, manifest, nbytes, args)


def _measure(mode: str, label: str, base: Path, mnt: Path, cold_dir: Path, manifest: Manifest,
             nbytes: int, args: argparse.Namespace) -> None:
    from jobs.data.staging import sha256_file, stage_dataset

    print(f"\n== {mode}: {label}")
    slow = crops_per_s(mnt, manifest, args.samples, args.repeats,
                       before=lambda: evict(cold_dir))
    print(f"crops from the slow directory (cold):   {slow:8.1f} crops/s")

    # Interleaved rounds (cp, plain, staging, ...), each from a cold source into a fresh
    # folder; medians: the machine is shared, and a burst of load then hits all three.
    dst = base / f"cp-{mode}"
    said: list[str] = []
    cps, plains, stages = [], [], []
    def settle() -> None:
        # The previous round's writes and deletions flushed outside the timings (an fsync
        # would otherwise pay for them), the source cold again.
        os.sync()
        evict(cold_dir)

    def run_cp(i: int) -> None:  # cp does not fsync: a floor below any durable copy
        cps.append(timed(lambda: subprocess.run(["cp", "-r", str(mnt), str(dst)],
                                                check=True)))
        shutil.rmtree(dst)

    def run_plain(i: int) -> None:
        plains.append(timed(lambda: plain_copy(mnt, dst)))
        shutil.rmtree(dst)

    def run_stage(i: int) -> None:
        scratch = base / f"scratch-{mode}-{i}"
        stages.append(timed(lambda: stage_dataset(mnt, scratch, say=said.append)))

    methods = [run_cp, run_plain, run_stage]
    for i in range(args.copy_repeats):
        for k in range(len(methods)):  # each method first, second and third in turn
            settle()
            methods[(i + k) % len(methods)](i)
    cp, plain, stage = (statistics.median(x) for x in (cps, plains, stages))
    result = stage_dataset(mnt, base / f"scratch-{mode}-0", say=said.append)  # a 2nd job
    assert result.staged and result.reused and result.verify_s is not None, said
    staged = result.read_from
    hash_s = statistics.median(
        timed(lambda: [sha256_file(p) for p in staged.glob("*.h5")]) for _ in range(3))
    print(f"copies, median of {args.copy_repeats} rounds from a cold source (order rotated):")
    print(f"floor: cp -r (no fsync)                 {cp:8.2f} s "
          f"({nbytes / cp / 2**20:.0f} MiB/s)")
    print(f"floor: 8 MiB reads, write, fsync        {plain:8.2f} s "
          f"({nbytes / plain / 2**20:.0f} MiB/s)")
    print(f"staging copy (+ sha256 while copying):  {stage:8.2f} s "
          f"({nbytes / stage / 2**20:.0f} MiB/s), {stage / plain:.2f}× the plain "
          f"copy, {stage / cp:.2f}× cp -r")
    print(f"reuse by a second job (sha256 again):   {result.verify_s:8.2f} s; "
          f"sha256 alone of the local copy {hash_s:.2f} s "
          f"({nbytes / hash_s / 2**20:.0f} MiB/s)")
    hot = crops_per_s(staged, manifest, args.samples, args.repeats,
                      before=lambda: warm(staged))
    cold = crops_per_s(staged, manifest, args.samples, args.repeats,
                       before=lambda: evict(staged))
    print(f"crops from the staged copy: warm {hot:8.1f} crops/s "
          f"({hot / slow:.1f}× slow), cold {cold:.1f} crops/s ({cold / slow:.1f}× slow)")
    for name, fast in (("warm", hot), ("cold", cold)):
        gain = 1 / slow - 1 / fast
        if gain > 0:
            print(f"staging pays for itself after {stage / gain:.0f} crops read "
                  f"({stage / gain / args.n:.1f} crops per image) against the {name} copy")
        else:
            print(f"no gain against the {name} copy: the slow directory is as fast")


if __name__ == "__main__":
    main()
