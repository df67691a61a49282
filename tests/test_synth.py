"""`hcli data synth`: hub schema, determinism, realism (domains, damages, frequencies)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from hcli.classes import CLASS_NAMES, IGNORE_INDEX, MATERIALS, palette
from hcli.data import synth_render as R
from hcli.data.synth import HUB_COLUMNS, domain_stats, label_lut, render_sample, synthesize
from hcli.errors import UserError


def _decode(cell: dict) -> Image.Image:
    return Image.open(io.BytesIO(cell["bytes"]))


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    synthesize(out, n=12, seed=3, size=96, shards=3)
    return out


def test_read_back_with_datasets_has_hub_features(synth_dir: Path) -> None:
    from datasets import Image as HFImage
    from datasets import Value, load_dataset

    files = sorted(str(p) for p in (synth_dir / "data").glob("*.parquet"))
    assert [Path(f).name for f in files] == [f"train-{i:05d}-of-00003.parquet" for i in range(3)]
    ds = load_dataset("parquet", data_files=files, split="train")
    assert ds.num_rows == 12
    assert list(ds.features) == list(HUB_COLUMNS)
    for c in ("image", "annotation", "annotation_rgb"):
        assert isinstance(ds.features[c], HFImage)
    for c in ("id", "material", "content", "type", "damage_description"):
        assert ds.features[c] == Value("string")
    row = ds[0]
    assert row["image"].mode == "RGB" and row["annotation"].mode == "L"
    assert row["image"].size == row["annotation"].size == row["annotation_rgb"].size
    # the parquet schema carries the `huggingface` metadata and {bytes, path} structs
    schema = pq.read_schema(files[0])
    assert b"huggingface" in (schema.metadata or {})
    assert [f.name for f in schema.field("image").type] == ["bytes", "path"]


def test_deterministic_in_seed(tmp_path: Path) -> None:
    a = [render_sample(7, i, 64) for i in range(3)]
    b = [render_sample(7, i, 64) for i in range(3)]
    c = [render_sample(8, i, 64) for i in range(3)]
    assert [r["image"]["bytes"] for r in a] == [r["image"]["bytes"] for r in b]
    assert [r["id"] for r in a] == [r["id"] for r in b]
    assert [r["id"] for r in a] != [r["id"] for r in c]
    # the shard count does not change the rows
    synthesize(tmp_path / "one", n=4, seed=7, size=64, shards=1)
    synthesize(tmp_path / "two", n=4, seed=7, size=64, shards=2)
    ids1 = pq.read_table(tmp_path / "one/data/train-00000-of-00001.parquet")["id"].to_pylist()
    ids2 = [i for p in sorted((tmp_path / "two/data").glob("*.parquet"))
            for i in pq.read_table(p)["id"].to_pylist()]
    assert ids1 == ids2


def test_rows_are_consistent_and_domains_real() -> None:
    st = domain_stats()
    lut = label_lut()
    assert tuple(lut[IGNORE_INDEX]) == (0x5A, 0x00, 0x07)
    assert [tuple(x) for x in lut[:16]] == palette()
    for i in range(6):
        r = render_sample(0, i, 96)
        assert len(r["id"]) == 25 and r["id"].isalnum() and r["id"].islower()
        assert (r["material"], r["content"]) in st.pairs
        mask = np.asarray(_decode(r["annotation"]))
        rgb = np.asarray(_decode(r["annotation_rgb"]))
        img = _decode(r["image"])
        assert img.size == (mask.shape[1], mask.shape[0])
        assert 0.8 * 96 <= max(img.size) <= 1.2 * 96
        assert np.array_equal(rgb, lut[mask])
        assert set(np.unique(mask)) <= set(range(16)) | {IGNORE_INDEX}
        names = [CLASS_NAMES[c] for c in np.unique(mask) if 0 < c < 16]
        assert all(n in r["damage_description"] for n in names)


def test_materials_look_different() -> None:
    feats = {}
    for m in MATERIALS:
        img = R.render_substrate(np.random.default_rng(1), m, "Artistic depiction", 96, 96)
        lum = img.mean(2)
        hf = np.abs(np.diff(lum, axis=1)).mean()
        feats[m] = np.r_[img.reshape(-1, 3).mean(0), lum.std(), 5 * hf]
    dist = [np.abs(feats[a] - feats[b]).max()
            for i, a in enumerate(MATERIALS) for b in MATERIALS[i + 1:]]
    assert min(dist) > 0.05


@pytest.mark.parametrize("cls", range(1, 16))
def test_each_damage_is_drawn_and_visible(cls: int) -> None:
    rng = np.random.default_rng(cls)
    for material in ("Paper", "Wood"):
        img = R.render_substrate(rng, material, "Artistic depiction", 160, 160)
        before = img.copy()
        mask = np.zeros((160, 160), np.uint8)
        R.render_damage(rng, cls, img, mask, material)
        region = mask == cls
        assert region.sum() > 0, CLASS_NAMES[cls]
        assert np.all(mask[~region] == 0)  # labels only where it painted
        change = np.abs(img - before)[region].mean()
        assert change > 0.05, f"{CLASS_NAMES[cls]} on {material} barely visible ({change:.3f})"


def test_frequencies_roughly_like_the_real_data() -> None:
    counts = np.zeros(256, np.int64)
    seen = set()
    for i in range(45):
        mask = np.asarray(_decode(render_sample(0, i, 128)["annotation"]))
        b = np.bincount(mask.ravel(), minlength=256)
        counts += b
        seen |= set(np.flatnonzero(b))
    assert set(range(16)) | {IGNORE_INDEX} <= seen  # every class and a Background border
    share = counts / counts.sum()
    damage = share[1:16]
    assert share[0] > 0.75
    big = {int(np.argmax(damage)) + 1, int(np.argsort(damage)[-2]) + 1}
    assert big == {1, 2}  # Peel and Material loss lead the damages
    assert int(np.argmin(damage)) + 1 == CLASS_NAMES.index("Burn marks")


def test_synthesize_refuses_mixing_and_bad_args(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "other.parquet").write_bytes(b"x")
    with pytest.raises(UserError, match="other parquet"):
        synthesize(tmp_path, n=2, size=64)
    with pytest.raises(UserError, match="--shards"):
        synthesize(tmp_path / "x", n=2, size=64, shards=3)
