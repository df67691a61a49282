"""What a prepared dataset holds, computed from its manifest alone (no image is read).

Definitions used throughout:
- Pixel share of class c: n_c / sum(n_0..n_15), over annotated pixels only; Background (255) is
  never counted in shares, rare classes or weights (it is the ignore label). Its share of *all*
  pixels is reported separately as `background_share`.
- Images containing c: samples whose `class_pixels[c] > 0` (after the prepare resize).
- Rare: share below `rare_threshold` (default 1 %); absent classes are listed separately.

Class weights (policy, with f_c the pixel share of class c among classes present, f_c > 0):
- `inverse`:       w_c = 1 / f_c
- `inverse_sqrt`:  w_c = 1 / sqrt(f_c)
- `log`:           w_c = 1 / ln(1.02 + f_c)   (ENet, Paszke et al. 2016)
Then the weights are rescaled so their mean over present classes is 1 and clipped to [1/c, c]
(c = `clip`, the spec's loss.weight_clip). Both hold exactly: the scale s is the one for which
mean(clip(s·w)) = 1, found by bisection (mean(clip(s·w)) increases with s). Classes absent from
the counts get weight 1 (they never appear in the targets, so only a neutral value is safe).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from hcli.classes import CLASS_NAMES, NUM_CLASSES
from hcli.data.manifest import Manifest, SampleEntry
from hcli.data.splits import Fold, make_splits
from hcli.errors import UserError

__all__ = [
    "WeightPolicy",
    "WEIGHT_POLICIES",
    "ClassStat",
    "FoldReport",
    "domain_counts",
    "class_pixel_totals",
    "class_table",
    "rare_classes",
    "weights_from_counts",
    "class_weights",
    "fold_report",
    "protocol_feasibility",
    "summarize",
    "plot_stats",
]

WeightPolicy = Literal["inverse", "inverse_sqrt", "log"]
WEIGHT_POLICIES: tuple[str, ...] = ("inverse", "inverse_sqrt", "log")
_ENET_C = 1.02


@dataclass
class ClassStat:
    id: int
    name: str
    pixels: int
    share: float  # of annotated pixels (ids 0..15)
    images: int  # samples in which the class appears


@dataclass
class FoldReport:
    index: int
    name: str
    held_out: str
    train: int
    val: int
    test: int
    missing_in_train: list[str]
    missing_in_test: list[str]
    flags: list[str]
    feasible: bool  # no blocking flag (hcli.data.splits.fold_flags)


def _select(manifest: Manifest, ids: Iterable[str] | None) -> list[SampleEntry]:
    if ids is None:
        return list(manifest.samples)
    by_id = manifest.by_id()
    return [by_id[i] for i in ids]


def domain_counts(manifest: Manifest) -> dict[str, dict[str, int]]:
    """Samples per material and per content, largest first."""
    out = {}
    for key in ("material", "content"):
        counts = Counter(getattr(s, key) for s in manifest.samples)
        out[key] = dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
    return out


def class_pixel_totals(manifest: Manifest, ids: Iterable[str] | None = None) -> list[int]:
    """Summed pixel counts of ids 0..15 (Background dropped)."""
    totals = [0] * NUM_CLASSES
    for s in _select(manifest, ids):
        for c in range(NUM_CLASSES):
            totals[c] += s.class_pixels[c]
    return totals


def class_table(manifest: Manifest, ids: Iterable[str] | None = None) -> list[ClassStat]:
    samples = _select(manifest, ids)
    totals = class_pixel_totals(manifest, [s.id for s in samples])
    annotated = sum(totals)
    return [
        ClassStat(
            id=c,
            name=CLASS_NAMES[c],
            pixels=totals[c],
            share=totals[c] / annotated if annotated else 0.0,
            images=sum(1 for s in samples if s.class_pixels[c] > 0),
        )
        for c in range(NUM_CLASSES)
    ]


def rare_classes(table: Sequence[ClassStat], threshold: float = 0.01) -> list[str]:
    """Present classes whose share is below `threshold`, rarest first."""
    rare = [t for t in table if 0 < t.share < threshold]
    return [t.name for t in sorted(rare, key=lambda t: t.share)]


def _raw_weight(f: float, policy: str) -> float:
    if policy == "inverse":
        return 1.0 / f
    if policy == "inverse_sqrt":
        return 1.0 / math.sqrt(f)
    if policy == "log":
        return 1.0 / math.log(_ENET_C + f)
    raise UserError(
        f"unknown class-weight policy {policy!r}; use one of {', '.join(WEIGHT_POLICIES)}"
    )


def weights_from_counts(counts: Sequence[int], policy: str, clip: float = 10.0) -> list[float]:
    """Class weights for ids 0..15 from their pixel counts (see the module docstring)."""
    if clip < 1:
        raise UserError(f"clip={clip} must be >= 1 (weights are clipped to [1/clip, clip])")
    counts = list(counts)[:NUM_CLASSES]
    total = sum(counts)
    present = [c for c, n in enumerate(counts) if n > 0]
    weights = [1.0] * len(counts)
    if not present:
        return weights
    raw = {c: _raw_weight(counts[c] / total, policy) for c in present}
    lo, hi = 1.0 / clip, clip

    def mean_at(scale: float) -> float:
        return sum(min(hi, max(lo, scale * w)) for w in raw.values()) / len(raw)

    # mean_at is continuous and non-decreasing in scale, 1/clip at scale→0 and clip at scale→∞,
    # so bisection in log space finds mean 1 (the interval is wide enough for any counts).
    a, b = 1e-30, 1e30
    for _ in range(200):
        mid = math.sqrt(a * b)
        if mean_at(mid) < 1.0:
            a = mid
        else:
            b = mid
    scale = math.sqrt(a * b)
    for c, w in raw.items():
        weights[c] = min(hi, max(lo, scale * w))
    return weights


def class_weights(
    manifest: Manifest, policy: str, *, clip: float = 10.0, ids: Iterable[str] | None = None
) -> list[float]:
    """Weights for ids 0..15 from the pixel counts of `ids` (default: all samples)."""
    return weights_from_counts(class_pixel_totals(manifest, ids), policy, clip)


def fold_report(manifest: Manifest, fold: Fold) -> FoldReport:
    """Sizes and the classes a fold cannot learn (absent from train+val) or cannot test (absent
    from test). Only classes present somewhere in the data are listed: classes absent from the
    whole dataset are reported once by `summarize`, not in every fold."""
    seen_train = class_pixel_totals(manifest, fold.train + fold.val)
    seen_test = class_pixel_totals(manifest, fold.test)
    seen_all = class_pixel_totals(manifest)
    return FoldReport(
        index=fold.index,
        name=fold.name,
        held_out=fold.held_out,
        train=len(fold.train),
        val=len(fold.val),
        test=len(fold.test),
        missing_in_train=[
            CLASS_NAMES[c] for c in range(NUM_CLASSES) if seen_all[c] and not seen_train[c]
        ],
        missing_in_test=[
            CLASS_NAMES[c] for c in range(NUM_CLASSES) if seen_all[c] and not seen_test[c]
        ],
        flags=list(fold.flags),
        feasible=fold.feasible,
    )


def protocol_feasibility(
    manifest: Manifest,
    protocol: str,
    *,
    k: int = 5,
    seed: int = 0,
    val_fraction: float = 0.15,
    groups: Mapping[str, Sequence[str]] | None = None,
    min_fold_size: int = 10,
) -> list[FoldReport]:
    """Every fold of `protocol` with its sizes, flags and the classes it cannot learn or test:
    what `hcli data splits` and `hcli data stats` both show, from the folds jobs use."""
    folds = make_splits(
        manifest,
        protocol,
        k=k,
        seed=seed,
        val_fraction=val_fraction,
        groups=groups,
        min_fold_size=min_fold_size,
    )
    return [fold_report(manifest, f) for f in folds]


def summarize(
    manifest: Manifest,
    *,
    protocols: Sequence[str] = ("kfold", "lomo", "lomo-grouped", "locontent"),
    rare_threshold: float = 0.01,
    clip: float = 10.0,
    k: int = 5,
    seed: int = 0,
    val_fraction: float = 0.15,
    groups: Mapping[str, Sequence[str]] | None = None,
    min_fold_size: int = 10,
) -> dict[str, Any]:
    """Everything `hcli data stats` shows, as plain JSON-able data."""
    table = class_table(manifest)
    all_pixels = sum(sum(s.class_pixels) for s in manifest.samples)
    background = sum(s.class_pixels[-1] for s in manifest.samples)
    totals = [t.pixels for t in table]
    return {
        "samples": len(manifest.samples),
        "skipped": len(manifest.skipped),
        "domains": domain_counts(manifest),
        "classes": [asdict(t) for t in table],
        "background_share": background / all_pixels if all_pixels else 0.0,
        "rare_threshold": rare_threshold,
        "rare": rare_classes(table, rare_threshold),
        "absent": [t.name for t in table if t.pixels == 0],
        "class_weights": {
            p: dict(zip(CLASS_NAMES, weights_from_counts(totals, p, clip), strict=True))
            for p in WEIGHT_POLICIES
        },
        "weight_clip": clip,
        "protocols": {
            p: [
                asdict(r)
                for r in protocol_feasibility(
                    manifest,
                    p,
                    k=k,
                    seed=seed,
                    val_fraction=val_fraction,
                    groups=groups,
                    min_fold_size=min_fold_size,
                )
            ]
            for p in protocols
        },
    }


def plot_stats(manifest: Manifest, path: Path, *, rare_threshold: float = 0.01) -> Path:
    """A PNG: class pixel shares on a log axis (rare ones highlighted, image counts annotated)
    beside samples per material and per content."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from hcli.classes import CLASS_COLOURS

    table = class_table(manifest)
    domains = domain_counts(manifest)
    fig, axes = plt.subplots(1, 3, figsize=(15, 5.5), gridspec_kw={"width_ratios": [2.2, 1.2, 1]})
    ax = axes[0]
    order = sorted(table, key=lambda t: -t.share)
    present = [t.share * 100 for t in order if t.pixels]
    left = min(min(present, default=1.0), rare_threshold * 100) / 10
    ys = range(len(order))
    # Bars start at the axis' left edge (a log axis has no zero); absent classes get no bar.
    widths = [t.share * 100 - left if t.pixels else 0.0 for t in order]
    colours = [CLASS_COLOURS[t.id] for t in order]
    ax.barh(ys, widths, left=left, color=colours, edgecolor="black", lw=0.5)
    ax.set_yticks(list(ys), [t.name for t in order])
    ax.set_xscale("log")
    ax.set_xlim(left, 100 * 30)
    ax.invert_yaxis()
    ax.axvline(rare_threshold * 100, color="red", ls="--", lw=1)
    ax.text(
        rare_threshold * 100,
        len(order) - 0.5,
        f" rare < {rare_threshold:.0%}",
        color="red",
        va="bottom",
        fontsize=8,
    )
    for y, t in zip(ys, order, strict=True):
        if t.pixels:
            ax.text(t.share * 110, y, f"{t.share:.3%} · {t.images} img", va="center", fontsize=8)
        else:
            ax.text(left * 1.2, y, "absent", va="center", fontsize=8, color="grey")
    ax.set_xlabel("share of annotated pixels (%, log scale)")
    ax.set_title(f"Classes ({len(manifest.samples)} samples)")
    for ax, key in zip(axes[1:], ("material", "content"), strict=True):
        names, counts = list(domains[key]), list(domains[key].values())
        ax.barh(names, counts, color="#4c72b0")
        ax.invert_yaxis()
        for y, n in enumerate(counts):
            ax.text(n, y, f" {n}", va="center", fontsize=8)
        ax.set_title(f"Samples per {key}")
        ax.set_xlim(right=max(counts) * 1.2)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
