"""The HDF5 training loader: window reads, determinism across workers, sampler resume, repeat
factors, evaluation dataset."""

from __future__ import annotations

import pickle

import h5py
import numpy as np
import pytest
import torch

from hcli.classes import IGNORE_INDEX
from hcli.spec import Spec
from jobs.data import (
    CropDataset,
    DrawKey,
    EvalDataset,
    RepeatFactorSampler,
    build_eval_dataset,
    build_train_loader,
    repeat_factors,
    resume_state,
)
from jobs.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from tests.data_fixtures import build_dataset, manifest_only

CROP = 64


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("h5")
    manifest = build_dataset(
        root,
        ["Paper", "Glass", "Wood", "Canvas"] * 3,
        sizes=[(300, 280), (90, 120), (40, 50)],  # larger and smaller than the crop
        labels=[(0,), (0, 5), (0, 1, 9)],
        per_shard=5,
    )
    return root, manifest


def ids_of(manifest):
    return [s.id for s in manifest.samples]


def normalise(image: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(image).permute(2, 0, 1).float() / 255
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (x - mean) / std


def plain(root, manifest, **kw):
    return CropDataset(
        root,
        manifest,
        ids_of(manifest),
        crop_size=CROP,
        scale_range=(1.0, 1.0),
        flips=False,
        rotate90=False,
        colour=False,
        **kw,
    )


def test_crop_equals_window_of_full_array_and_reads_only_it(data, monkeypatch):
    root, manifest = data
    ds = plain(root, manifest)
    calls: list[tuple] = []
    original = h5py.Dataset.__getitem__

    def spy(self, args, *rest, **kw):
        calls.append((self.shape, args))
        return original(self, args, *rest, **kw)

    monkeypatch.setattr(h5py.Dataset, "__getitem__", spy)
    for index in (0, 3, 4):  # 300×280 and 90×120 images
        calls.clear()
        item = ds[DrawKey(index, epoch=1, position=0, draw=index)]
        y0, x0, h, w = item["window"]
        assert (h, w) == (CROP, CROP)
        reads = [args for _, args in calls]
        assert reads == [(slice(y0, y0 + h), slice(x0, x0 + w))] * 2  # image and mask
        entry = manifest.samples[index]
        with h5py.File(root / entry.shard) as fh:
            full_image = original(fh[entry.id]["image"], ())
            full_mask = original(fh[entry.id]["mask"], ())
        expect = normalise(full_image[y0 : y0 + h, x0 : x0 + w])
        assert torch.allclose(item["image"], expect, atol=1e-5)
        assert torch.equal(
            item["mask"], torch.from_numpy(full_mask[y0 : y0 + h, x0 : x0 + w])
        )
        # uint8 labels cross the loader's process boundary; the losses widen them.
        assert item["image"].dtype == torch.float32 and item["mask"].dtype == torch.uint8


def test_small_image_padded_with_ignore(data):
    root, manifest = data
    item = plain(root, manifest)[2]  # 40×50 image, crop 64
    assert item["image"].shape == (3, CROP, CROP)
    mask = item["mask"]
    assert (mask[40:, :] == IGNORE_INDEX).all() and (mask[:, 50:] == IGNORE_INDEX).all()
    assert (mask[:40, :50] != IGNORE_INDEX).all()


def test_random_scale_resizes_window(data):
    root, manifest = data
    ds = CropDataset(root, manifest, ids_of(manifest), crop_size=CROP, scale_range=(0.5, 0.5))
    item = ds[DrawKey(0, 0, 0, 0)]
    _, _, h, w = item["window"]
    assert (h, w) == (2 * CROP, 2 * CROP)  # 128 source pixels become the 64-pixel crop
    assert item["image"].shape == (3, CROP, CROP)


def test_same_key_same_sample_and_augmentation_varies(data):
    root, manifest = data
    ds = CropDataset(root, manifest, ids_of(manifest), crop_size=CROP, seed=3)
    a, b = ds[DrawKey(0, 2, 5, 5)], ds[DrawKey(0, 2, 5, 5)]
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
    others = [ds[DrawKey(0, e, 0, d)]["image"] for e in range(3) for d in range(3)]
    assert sum(not torch.equal(a["image"], o) for o in others) >= 7


def test_dataset_pickles_without_open_files(data):
    root, manifest = data
    ds = plain(root, manifest)
    assert ds.reader._files == {}  # nothing opened by __init__
    first = ds[0]
    assert ds.reader._files  # opened lazily on first read
    clone = pickle.loads(pickle.dumps(ds))
    assert clone.reader._files == {}
    assert torch.equal(clone[0]["image"], first["image"])


def spec_for(root, **data_kw):
    return Spec.model_validate(
        {
            "seed": 11,
            "data": {"root": str(root), "crop_size": CROP, **data_kw},
            "train": {"batch_size": 4},
        }
    )


def test_loader_identical_with_zero_and_two_workers(data):
    root, manifest = data
    spec = spec_for(root, rare_repeat_threshold=0.5)
    batches = {}
    for workers in (0, 2):
        loader, _ = build_train_loader(spec, manifest, ids_of(manifest), num_workers=workers)
        it = iter(loader)
        batches[workers] = [next(it) for _ in range(5)]  # crosses an epoch boundary
    for a, b in zip(batches[0], batches[2], strict=True):
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
        assert a["id"] == b["id"] and a["epoch"] == b["epoch"]
    assert max(batches[0][-1]["epoch"]) >= 1


def test_hierarchical_batches_carry_one_uint8_block_of_targets(data):
    from hcli.classes import DEFAULT_COARSE_GROUPS
    from jobs.hierarchy import derive_targets, fine_to_coarse_lut

    root, manifest = data
    spec = spec_for(root)
    lut = fine_to_coarse_lut(DEFAULT_COARSE_GROUPS)
    plain_loader, _ = build_train_loader(spec, manifest, ids_of(manifest), num_workers=0)
    loader, _ = build_train_loader(spec, manifest, ids_of(manifest), num_workers=1,
                                   target_lut=lut)
    masks, batch = next(iter(plain_loader))["mask"], next(iter(loader))
    assert "mask" not in batch  # the fine target replaces it
    targets = batch["targets"]
    assert all(t.dtype == torch.uint8 and t.shape == masks.shape for t in targets.values())
    expect = derive_targets(masks.long(), lut)
    assert all(torch.equal(targets[k].long(), expect[k]) for k in expect)


def test_loader_resumes_mid_epoch_from_batch_state(data):
    root, manifest = data
    spec = spec_for(root, rare_repeat_threshold=0.5)
    ids = ids_of(manifest)
    loader, _ = build_train_loader(spec, manifest, ids, num_workers=0)
    it = iter(loader)
    run = [next(it) for _ in range(7)]
    state = resume_state(run[2])
    loader2, _ = build_train_loader(spec, manifest, ids, num_workers=0, state=state)
    it2 = iter(loader2)
    for expected in run[3:]:
        got = next(it2)
        assert got["id"] == expected["id"]
        assert torch.equal(got["image"], expected["image"])


def test_sampler_state_dict_resume():
    factors = [1.0, 2.5, 1.0, 1.3, 4.0, 1.0]
    ref = RepeatFactorSampler(factors, seed=5)
    whole = list(ref) + list(ref)  # two epochs
    for n in (0, 3, len(whole) // 2 - 1, len(whole) // 2, len(whole) - 2):
        s = RepeatFactorSampler(factors, seed=5)
        it = iter(s)
        drawn = []
        while len(drawn) < n:
            try:
                drawn.append(next(it))
            except StopIteration:  # epoch ended: the next pass is the next epoch
                it = iter(s)
        fresh = RepeatFactorSampler(factors, seed=5)
        fresh.load_state_dict(s.state_dict())
        rest = list(fresh)
        if fresh.epoch == 1 and len(drawn) + len(rest) < len(whole):
            rest += list(fresh)
        assert drawn + rest == whole, n
    with pytest.raises(ValueError, match="seed"):
        RepeatFactorSampler(factors, seed=6).load_state_dict(ref.state_dict())


def test_sampler_deterministic_per_epoch_and_seed():
    factors = np.full(20, 1.0)
    a, b = RepeatFactorSampler(factors, seed=1), RepeatFactorSampler(factors, seed=1)
    assert list(a) == list(b)
    e0, e1 = a.epoch_indices(0), a.epoch_indices(1)
    assert sorted(e0.tolist()) == list(range(20)) and not np.array_equal(e0, e1)
    assert not np.array_equal(e0, RepeatFactorSampler(factors, seed=2).epoch_indices(0))


def test_distributed_ranks_slice_one_permutation():
    factors = [1.0, 1.5, 2.0, 1.0, 3.2, 1.0, 1.0]
    world = 3
    full = RepeatFactorSampler(factors, seed=4, world_size=world).epoch_indices(0)
    per_rank = [
        list(RepeatFactorSampler(factors, seed=4, rank=r, world_size=world)) for r in range(world)
    ]
    assert len({len(p) for p in per_rank}) == 1
    merged = [None] * len(full)
    for r, keys in enumerate(per_rank):
        for k in keys:
            merged[k.draw] = k.index
            assert k.draw % world == r
    assert merged == full.tolist()


def test_repeat_factors_by_value():
    # 10 images all hold Clean; one also holds Hair (f = 0.1), two hold Cracks (f = 0.2).
    pix = [[100] + [0] * 16 for _ in range(10)]
    pix[0][5] = 3
    pix[1][9] = pix[2][9] = 4
    pix[3][16] = 50  # Background never counts
    m = manifest_only(["Paper"] * 10, class_pixels=pix)
    ids = [s.id for s in m.samples]
    r = repeat_factors(m, ids, threshold=0.4)
    # r(Hair) = sqrt(0.4 / 0.1) = 2; r(Cracks) = sqrt(0.4 / 0.2) = 1.4142; r(Clean) = 1
    assert r == pytest.approx([2.0, 2**0.5, 2**0.5] + [1.0] * 7)
    assert repeat_factors(m, ids, threshold=0.0).tolist() == [1.0] * 10
    sampler = RepeatFactorSampler(r, seed=0)
    draws = np.array([np.bincount(sampler.epoch_indices(e), minlength=10) for e in range(400)])
    assert (draws[:, 0] == 2).all()  # integer factor: exactly twice per epoch
    assert draws[:, 1].mean() == pytest.approx(2**0.5, abs=0.06)  # stochastic rounding
    assert set(draws[:, 1].tolist()) == {1, 2}
    assert (draws[:, 3:] == 1).all()


def test_eval_dataset_whole_images(data):
    root, manifest = data
    ds = build_eval_dataset(root, manifest, ids_of(manifest)[:4])
    assert isinstance(ds, EvalDataset) and len(ds) == 4
    item = ds[1]
    entry = manifest.samples[1]
    assert item["image"].shape == (3, entry.height, entry.width)
    with h5py.File(root / entry.shard) as fh:
        mask = fh[entry.id]["mask"][()]
        image = fh[entry.id]["image"][()]
    assert torch.equal(item["mask"], torch.from_numpy(mask).long())
    assert torch.allclose(item["image"], normalise(image), atol=1e-5)


def test_rotate90_matches_numpy():
    from jobs.data.transforms import Rotate90

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    mask = image[..., 0].copy()
    rot = Rotate90(p=1)
    for k in range(4):
        assert np.array_equal(rot.apply(image, k), np.rot90(image, k)), k
        assert np.array_equal(rot.apply_to_mask(mask, k), np.rot90(mask, k)), k
