"""Metrics against a hand-computed case; sliding-window inference; overlays."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hcli.classes import BACKGROUND_COLOUR, CLASS_NAMES, palette
from hcli.errors import UserError
from jobs.metrics import SegMetrics, overlay, sliding_window_predict

# Ten pixels; the two labelled 255 are ignored (so the 5 predicted there counts nowhere).
TARGET = torch.tensor([[[0, 0, 0, 1, 1, 2, 3, 255, 255, 0]]])
PRED = torch.tensor([[[0, 0, 1, 1, 1, 2, 4, 5, 0, 4]]])
# Valid (truth, pred): (0,0)x2 (0,1) (1,1)x2 (2,2) (3,4) (0,4)
#   Clean: TP 2 FN 2 FP 0 -> IoU 1/2, F1 4/6      Material loss: TP 2 FP 1 -> IoU 2/3, F1 4/5
#   Peel: IoU 1, F1 1     Dust: only in truth -> 0     Scratch: only in prediction -> 0
#   Hair (predicted only on an ignored pixel) and ids 6..15: absent from both -> None
IOU = {0: 1 / 2, 1: 2 / 3, 2: 1.0, 3: 0.0, 4: 0.0}
F1 = {0: 4 / 6, 1: 4 / 5, 2: 1.0, 3: 0.0, 4: 0.0}


def _metrics() -> SegMetrics:
    return SegMetrics(rare_classes=["Peel", "Dust", "Hair"])


def test_hand_computed_example() -> None:
    m = _metrics()
    m.update(PRED, TARGET)
    r = m.compute()
    for c, name in enumerate(CLASS_NAMES):
        if c in IOU:
            assert r["per_class_iou"][name] == pytest.approx(IOU[c])
            assert r["per_class_f1"][name] == pytest.approx(F1[c])
        else:
            assert r["per_class_iou"][name] is None and r["per_class_f1"][name] is None
    assert r["miou"] == pytest.approx(sum(IOU.values()) / 5)
    # Binary: Clean TP 2 FN 2 -> 1/2; Damage TP 4 FP 2 -> 2/3.
    assert r["binary_miou"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    # Default groups: Material loss, Peel, Scratch -> structural (1); Dust -> deposits (2).
    # (0,0)x2 (0,1)x2 (1,1)x3 (2,1) -> Clean 2/4, structural 3/6, deposits 0; others None.
    assert r["coarse_miou"] == pytest.approx((0.5 + 0.5 + 0.0) / 3)
    assert r["per_coarse_iou"]["additions"] is None
    # Rare: Peel 1, Dust 0, Hair None -> mean over the defined two.
    assert r["rare_miou"] == pytest.approx(0.5)
    assert r["pixel_accuracy"] == pytest.approx(5 / 8)


def test_confusion_rows_normalised() -> None:
    m = _metrics()
    m.update(PRED, TARGET)
    r = m.compute()
    conf = np.array(r["confusion"])
    counts = np.array(r["confusion_counts"])
    assert conf.shape == (16, 16) and counts.sum() == 8
    assert conf[0].tolist()[:5] == pytest.approx([0.5, 0.25, 0, 0, 0.25])
    present = counts.sum(1) > 0
    assert np.allclose(conf[present].sum(1), 1.0)
    assert np.all(conf[~present] == 0)


def test_logits_and_accumulation_agree() -> None:
    whole = _metrics()
    whole.update(PRED, TARGET)
    split = _metrics()
    logits = torch.nn.functional.one_hot(PRED, 16).permute(0, 3, 1, 2).float()
    split.update(logits[..., :4], TARGET[..., :4])
    split.update(logits[..., 4:], TARGET[..., 4:])
    assert split.compute() == whole.compute()
    split.reset()
    assert split.compute()["miou"] is None


def test_unknown_rare_class_rejected() -> None:
    with pytest.raises(UserError, match="Mould"):
        SegMetrics(rare_classes=["Mould"])


class _PixelModel(torch.nn.Module):
    """Per-pixel logits (no context), so any tiling must reproduce the whole-image output."""

    def __init__(self, fixed: int | None = None) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 16, 1)
        self.fixed_input_size = fixed

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"fine": self.conv(x)}


@pytest.mark.parametrize("hw", [(50, 70), (20, 13), (32, 32), (33, 64)])
def test_sliding_window_matches_whole_image(hw: tuple[int, int]) -> None:
    torch.manual_seed(0)
    model = _PixelModel()
    image = torch.randn(1, 3, *hw)
    out = sliding_window_predict(model, image, window=32, stride=20)
    assert out.shape == (1, 16, *hw)
    assert torch.allclose(out, model(image)["fine"], atol=1e-5)


def test_sliding_window_averages_overlaps() -> None:
    calls: list[tuple[int, ...]] = []

    def model(x: torch.Tensor) -> torch.Tensor:
        calls.append(tuple(x.shape))
        # Each window paints its own index into its logits: the average reveals the overlaps.
        base = len(calls) - 1
        out = torch.zeros(x.shape[0], 2, *x.shape[-2:])
        for i in range(x.shape[0]):
            out[i] = base * 10 + i
        return out

    out = sliding_window_predict(model, torch.zeros(1, 3, 8, 12), 8, 4, num_classes=2)
    # Windows at x = 0, 4 in one call (values 0, 1); columns 4..7 are covered by both.
    assert calls == [(2, 3, 8, 8)]
    assert out[0, 0, 0, :4].tolist() == [0.0] * 4
    assert out[0, 0, 0, 4:8].tolist() == [0.5] * 4
    assert out[0, 0, 0, 8:].tolist() == [1.0] * 4


def test_sliding_window_rejects_a_window_swin_cannot_take() -> None:
    with pytest.raises(UserError, match="data.eval_window"):
        sliding_window_predict(_PixelModel(fixed=64), torch.zeros(1, 3, 80, 80), 32, 16)


def test_overlay_colours() -> None:
    image = np.full((2, 3, 3), 100, dtype=np.uint8)
    mask = np.array([[0, 1, 255], [15, 2, 255]])
    full = overlay(image, mask, alpha=1.0)
    pal = palette()
    bg = tuple(int(BACKGROUND_COLOUR[i : i + 2], 16) for i in (1, 3, 5))
    assert full.dtype == np.uint8 and full.shape == (2, 3, 3)
    assert tuple(full[0, 1]) == pal[1] and tuple(full[1, 0]) == pal[15]
    assert tuple(full[0, 2]) == bg and tuple(full[1, 2]) == bg
    half = overlay(image, torch.from_numpy(mask), alpha=0.5)
    assert tuple(half[0, 0]) == (50, 50, 50)  # Clean is black
    assert tuple(half[0, 1]) == tuple(round((100 + c) / 2) for c in pal[1])
