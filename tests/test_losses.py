"""Losses: 255 ignored, focal/dice by hand, class weights, auxiliary heads, bf16 safety."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from hcli.classes import DEFAULT_COARSE_GROUPS
from hcli.spec import LossSpec
from jobs.hierarchy import derive_targets, fine_to_coarse_lut
from jobs.losses import SegLoss, dice_loss, focal_loss

N_COARSE = 1 + len(DEFAULT_COARSE_GROUPS)


def _batch(seed: int = 0) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    outputs = {
        "fine": torch.randn(2, 16, 6, 6, generator=g),
        "coarse": torch.randn(2, N_COARSE, 6, 6, generator=g),
        "binary": torch.randn(2, 2, 6, 6, generator=g),
    }
    mask = torch.randint(0, 16, (2, 6, 6), generator=g)
    mask[:, :2] = 255
    return outputs, mask


SPECS = [LossSpec(), LossSpec(name="ce"), LossSpec(dice_weight=0), LossSpec(focal_weight=0)]


@pytest.mark.parametrize("spec", SPECS, ids=["dice_focal", "ce", "focal", "dice"])
def test_ignored_pixels_do_not_matter(spec: LossSpec) -> None:
    outputs, mask = _batch()
    targets = derive_targets(mask, fine_to_coarse_lut(DEFAULT_COARSE_GROUPS))
    loss = SegLoss(spec, torch.rand(16) + 0.5, hierarchical=True, n_coarse=N_COARSE)
    before, _ = loss(outputs, targets)
    changed = {k: v.clone() for k, v in outputs.items()}
    for v in changed.values():
        v[:, :, :2] = torch.randn_like(v[:, :, :2]) * 100
    after, _ = loss(changed, targets)
    assert torch.allclose(before, after, atol=1e-6)
    # ...while a change at a labelled pixel does change it.
    changed["fine"][:, :, 3] += torch.randn_like(changed["fine"][:, :, 3]) * 5
    moved, _ = loss(changed, targets)
    assert not torch.allclose(before, moved)


def test_focal_gamma0_is_weighted_cross_entropy() -> None:
    outputs, mask = _batch(1)
    w = torch.rand(16) + 0.1
    ours = focal_loss(outputs["fine"], mask, gamma=0.0, weight=w)
    ref = F.cross_entropy(outputs["fine"], mask, weight=w, ignore_index=255)
    assert torch.allclose(ours, ref, atol=1e-6)


def test_focal_by_hand() -> None:
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]]).T.reshape(1, 2, 1, 2)  # two pixels
    target = torch.tensor([[[0, 0]]])
    p1, p2 = math.exp(2) / (math.exp(2) + 1), 1 / (1 + math.e)
    by_hand = ((1 - p1) ** 2 * -math.log(p1) + (1 - p2) ** 2 * -math.log(p2)) / 2
    assert focal_loss(logits, target, gamma=2.0).item() == pytest.approx(by_hand, rel=1e-5)
    # Class weights: a_y-weighted mean, here both pixels are class 0 so the weight cancels...
    w = torch.tensor([3.0, 1.0])
    assert focal_loss(logits, target, 2.0, w).item() == pytest.approx(by_hand, rel=1e-5)
    # ...but not when the pixels belong to different classes.
    target2 = torch.tensor([[[0, 1]]])
    q2 = 1 - p2
    mixed = (3 * (1 - p1) ** 2 * -math.log(p1) + 1 * (1 - q2) ** 2 * -math.log(q2)) / 4
    assert focal_loss(logits, target2, 2.0, w).item() == pytest.approx(mixed, rel=1e-5)


def test_dice_by_hand_over_present_classes_only() -> None:
    probs = torch.tensor([[0.8, 0.2], [0.6, 0.4]])  # two pixels, both class 0
    logits = probs.log().T.reshape(1, 2, 1, 2)
    target = torch.tensor([[[0, 0]]])
    expected = 1 - (2 * 1.4) / (1.4 + 2)  # class 1 absent: not averaged in
    assert dice_loss(logits, target).item() == pytest.approx(expected, rel=1e-5)
    ignored = torch.tensor([[[0, 255]]])
    assert dice_loss(logits, ignored).item() == pytest.approx(1 - 1.6 / 1.8, rel=1e-5)
    perfect = torch.tensor([[[20.0, 20.0]], [[-20.0, -20.0]]]).unsqueeze(0)
    assert dice_loss(perfect, target).item() == pytest.approx(0.0, abs=1e-6)


def test_class_weights_enter_the_fine_focal_term() -> None:
    outputs, mask = _batch(2)
    spec = LossSpec(dice_weight=0)
    plain, _ = SegLoss(spec)(outputs, mask)
    ones, _ = SegLoss(spec, [1.0] * 16)(outputs, mask)
    assert torch.allclose(plain, ones)
    w = torch.ones(16)
    w[int(mask[0, 3, 3])] = 5.0
    weighted, parts = SegLoss(spec, w)(outputs, mask)
    assert not torch.allclose(plain, weighted)
    ref = focal_loss(outputs["fine"], mask, spec.focal_gamma, w)
    assert torch.allclose(parts["fine_focal"], ref)


def test_total_combines_heads_with_their_weights() -> None:
    outputs, mask = _batch(3)
    targets = derive_targets(mask, fine_to_coarse_lut(DEFAULT_COARSE_GROUPS))
    spec = LossSpec(dice_weight=0.5, focal_weight=2.0, coarse_weight=0.3, binary_weight=0.2)
    total, parts = SegLoss(spec, hierarchical=True, n_coarse=N_COARSE)(outputs, targets)
    fine = 0.5 * dice_loss(outputs["fine"], mask) + 2.0 * focal_loss(outputs["fine"], mask)
    assert torch.allclose(parts["fine"], fine)
    assert torch.allclose(parts["fine_dice"], dice_loss(outputs["fine"], mask))
    assert torch.allclose(total, fine + 0.3 * parts["coarse"] + 0.2 * parts["binary"])
    assert torch.allclose(parts["total"], total)
    coarse = 0.5 * dice_loss(outputs["coarse"], targets["coarse"]) + 2.0 * focal_loss(
        outputs["coarse"], targets["coarse"]
    )
    assert torch.allclose(parts["coarse"], coarse)
    flat, flat_parts = SegLoss(spec)(outputs, mask)
    assert torch.allclose(flat, fine) and "coarse" not in flat_parts


def test_all_ignored_batch_is_zero_with_a_graph() -> None:
    logits = torch.randn(1, 16, 4, 4, requires_grad=True)
    mask = torch.full((1, 4, 4), 255)
    for spec in SPECS[:2]:
        total, _ = SegLoss(spec)({"fine": logits}, mask)
        assert total.item() == 0.0  # not nan, as F.cross_entropy would give
        total.backward()
        assert torch.isfinite(logits.grad).all()


def test_bf16_autocast_is_finite_and_float32() -> None:
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 16, 1)
    x = torch.randn(2, 3, 8, 8) * 200  # logits in the thousands: overflow bait for bf16 softmax
    mask = torch.randint(0, 16, (2, 8, 8))
    mask[0, 0] = 255
    for spec in SPECS:
        conv.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = conv(x)
            assert logits.dtype == torch.bfloat16
            total, parts = SegLoss(spec, torch.rand(16) + 0.5)({"fine": logits}, mask)
        assert total.dtype == torch.float32 and torch.isfinite(total)
        total.backward()
        assert all(torch.isfinite(p.grad).all() for p in conv.parameters())
