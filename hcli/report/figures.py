"""The report's figures (matplotlib, Agg backend), each saved as PNG and PDF.

Sizes are fixed in inches at `DPI` and saved without `bbox_inches="tight"`, so a figure's pixel
size is known in advance (the tests check it) and two collects write identical bytes (the PDF's
creation date is left out).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from hcli.classes import BACKGROUND_COLOUR, CLASS_COLOURS, CLASS_NAMES, IGNORE_INDEX, palette

if TYPE_CHECKING:
    import numpy as np

    from hcli.report.load import RunRecord
    from hcli.report.tables import Group

__all__ = [
    "CONFUSION_SIZE",
    "CURVES_SIZE",
    "DPI",
    "MAX_SAMPLES",
    "PER_CLASS_SIZE",
    "SAMPLE_ROW_IN",
    "SAMPLES_LEGEND_IN",
    "SAMPLES_WIDTH_IN",
    "confusion_figure",
    "group_stem",
    "learning_curves",
    "mean_confusion",
    "per_class_bars",
    "qualitative_grid",
    "samples_size",
]

DPI = 100
PER_CLASS_SIZE = (14.0, 5.0)
CONFUSION_SIZE = (9.0, 8.0)
CURVES_SIZE = (10.0, 4.0)
SAMPLES_WIDTH_IN, SAMPLE_ROW_IN, SAMPLES_LEGEND_IN = 9.0, 3.0, 1.0
MAX_SAMPLES = 4
_THUMB = 512  # long side the grid shows; large scans are shrunk before plotting


def samples_size(n: int) -> tuple[int, int]:
    """Pixel size of a qualitative grid with n sample rows."""
    return (round(SAMPLES_WIDTH_IN * DPI), round((SAMPLE_ROW_IN * n + SAMPLES_LEGEND_IN) * DPI))


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, stem: Path) -> list[Path]:
    stem.parent.mkdir(parents=True, exist_ok=True)
    png, pdf = Path(f"{stem}.png"), Path(f"{stem}.pdf")
    fig.savefig(png, dpi=DPI)
    fig.savefig(pdf, metadata={"CreationDate": None})
    _pyplot().close(fig)
    return [png, pdf]


def per_class_bars(groups: list[Group], rare: list[str], stem: Path) -> list[Path]:
    """Per-class IoU (%) bars, one bar per group, error bars = sample std over its runs."""
    from hcli.report.tables import class_iou

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=PER_CLASS_SIZE, dpi=DPI)
    n = max(1, len(groups))
    width = 0.8 / n
    for i, g in enumerate(groups):
        means, errs = [], []
        for name in CLASS_NAMES:
            st = g.stat(class_iou(name))
            means.append(st.mean * 100 if st else float("nan"))  # absent class: no bar
            errs.append(st.std * 100 if st and st.std is not None else 0.0)
        xs = [k - 0.4 + width * (i + 0.5) for k in range(len(CLASS_NAMES))]
        ax.bar(xs, means, width, yerr=errs, label=g.label, capsize=2)
    ax.set_xticks(range(len(CLASS_NAMES)))
    ax.set_xticklabels([c + ("†" if c in rare else "") for c in CLASS_NAMES],
                       rotation=45, ha="right")
    ax.set_ylabel("IoU (%)")
    ax.set_ylim(0, 100)
    ax.set_title("Per-class IoU († rare class; error bars: std over folds and seeds)")
    if groups:
        ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    return _save(fig, stem)


def mean_confusion(runs: list[RunRecord]) -> tuple[np.ndarray, int] | None:
    """Mean of the runs' row-normalised confusion matrices (rows: truth) and how many runs had
    one; None if none has."""
    import numpy as np

    mats = []
    for r in runs:
        m = np.asarray(r.confusion if r.confusion is not None else [], dtype=float)
        if m.shape != (len(CLASS_NAMES), len(CLASS_NAMES)):
            continue
        sums = m.sum(axis=1, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            mats.append(np.where(sums > 0, m / sums, np.nan))
    if not mats:
        return None
    stacked = np.stack(mats)
    out = np.full(stacked.shape[1:], np.nan)
    seen = ~np.isnan(stacked).all(axis=0)
    out[seen] = np.nanmean(stacked[:, seen], axis=0)
    return out, len(mats)


def confusion_figure(matrix: np.ndarray, title: str, stem: Path) -> list[Path]:
    """Normalised confusion matrix (rows: ground truth sum to 1), class names on both axes."""
    import numpy as np

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=CONFUSION_SIZE, dpi=DPI)
    im = ax.imshow(np.ma.masked_invalid(matrix), vmin=0.0, vmax=1.0, cmap="Blues")
    ticks = range(len(CLASS_NAMES))
    ax.set_xticks(ticks)
    ax.set_xticklabels(CLASS_NAMES, rotation=90, fontsize=8)
    ax.set_yticks(ticks)
    ax.set_yticklabels(CLASS_NAMES, fontsize=8)
    ax.set_xlabel("prediction")
    ax.set_ylabel("ground truth")
    for (i, j), v in np.ndenumerate(matrix):
        if np.isfinite(v) and v >= 0.005:
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=5,
                    color="white" if v > 0.5 else "black")
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    return _save(fig, stem)


def learning_curves(run: RunRecord, stem: Path) -> list[Path]:
    """Training loss and validation mIoU against step; dashed lines where the job was requeued,
    dotted ones where a curriculum stage began."""
    plt = _pyplot()
    fig, (ax_loss, ax_val) = plt.subplots(1, 2, figsize=CURVES_SIZE, dpi=DPI)
    if run.train_curve:
        ax_loss.plot(*zip(*run.train_curve, strict=True), lw=1)
    if run.val_curve:
        steps, vals = zip(*run.val_curve, strict=True)
        ax_val.plot(steps, [v * 100 for v in vals], marker="o", ms=3, lw=1)
    for ax in (ax_loss, ax_val):
        for k, step in enumerate(run.requeue_steps):
            ax.axvline(step, color="tab:red", ls="--", lw=1, label="requeued" if k == 0 else None)
        for k, step in enumerate(run.stage_steps):
            ax.axvline(step, color="tab:green", ls=":", lw=1,
                       label="curriculum stage" if k == 0 else None)
        ax.set_xlabel("step")
    ax_loss.set_ylabel("train loss")
    ax_val.set_ylabel("val mIoU (%)")
    if run.requeue_steps or run.stage_steps:
        ax_val.legend(fontsize=8)
    fig.suptitle(run.run_id + (" (in progress)" if run.in_progress else ""), fontsize=10)
    fig.tight_layout()
    return _save(fig, stem)


def _colour_mask(img: Any) -> np.ndarray:
    """An index mask (mode L/P/I) in ARTeFACT colours; an RGB picture is taken as drawn."""
    import numpy as np

    if img.mode in ("RGB", "RGBA"):
        return np.asarray(img.convert("RGB"))
    idx = np.asarray(img).astype(np.int64)  # for mode P the array holds the palette indices
    lut = np.full((256, 3), 128, dtype=np.uint8)  # unknown ids show grey
    lut[: len(CLASS_NAMES)] = palette()
    lut[IGNORE_INDEX] = [int(BACKGROUND_COLOUR[i : i + 2], 16) for i in (1, 3, 5)]
    return lut[np.clip(idx, 0, 255)]


def qualitative_grid(run: RunRecord, stem: Path) -> list[Path]:
    """Rows of image | ground truth | prediction from the run's sample triplets."""
    from matplotlib.patches import Patch
    from PIL import Image

    plt = _pyplot()
    samples = run.samples[:MAX_SAMPLES]
    n = len(samples)
    fig = plt.figure(figsize=(SAMPLES_WIDTH_IN, SAMPLE_ROW_IN * n + SAMPLES_LEGEND_IN), dpi=DPI)
    legend_frac = SAMPLES_LEGEND_IN / (SAMPLE_ROW_IN * n + SAMPLES_LEGEND_IN)
    axes = fig.subplots(n, 3, squeeze=False,
                        gridspec_kw={"bottom": legend_frac, "top": 0.97, "hspace": 0.15})
    for row, (sid, *paths) in enumerate(samples):
        for col, (path, title) in enumerate(zip(paths, ("image", "ground truth", "prediction"),
                                                strict=True)):
            with Image.open(path) as img:
                img.thumbnail((_THUMB, _THUMB),
                              Image.Resampling.BILINEAR if col == 0 else Image.Resampling.NEAREST)
                shown = img.convert("RGB") if col == 0 else _colour_mask(img)
            ax = axes[row][col]
            ax.imshow(shown, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(title, fontsize=9)
            if col == 0:
                ax.set_ylabel(sid, fontsize=7)
    handles = [Patch(color=c, label=name) for name, c in
               zip(CLASS_NAMES, CLASS_COLOURS, strict=True)]
    handles.append(Patch(color=BACKGROUND_COLOUR, label="Background"))
    fig.legend(handles=handles, loc="lower center", ncol=6, fontsize=6, frameon=False)
    return _save(fig, stem)


def group_stem(prefix: str, label: str, used: set[str]) -> str:
    """A file-safe, unique name for a group's figure."""
    base = prefix + ("".join(c if c.isalnum() else "_" for c in label).strip("_").lower()[:60]
                     or "group")
    name, k = base, 2
    while name in used:
        name, k = f"{base}_{k}", k + 1
    used.add(name)
    return name

