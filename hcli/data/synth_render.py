"""Renderers behind `hcli data synth`: material substrates, content layers and the 15 damages.

Everything works on a float32 RGB canvas in [0, 1] (H, W, 3) and a uint8 label mask (H, W). Shapes
are drawn with PIL.ImageDraw on a one-channel layer and coloured with numpy, so an image of a few
hundred pixels renders in milliseconds. Each damage has its own signature (shape, colour, texture)
that differs from every substrate, so a small model can learn it; the area each damage covers is
chosen so the pixel shares follow the real data's order (see `DAMAGE_PLAN`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

__all__ = [
    "DamagePlan",
    "DAMAGE_PLAN",
    "PAINT_ORDER",
    "render_substrate",
    "render_content",
    "render_damage",
    "add_background_border",
]

Rng = np.random.Generator
F32 = np.float32

# ---------------------------------------------------------------------------------------------
# small helpers


def smooth_noise(rng: Rng, h: int, w: int, cell: float) -> np.ndarray:
    """Value noise in [0, 1] with features about `cell` pixels wide (bicubic upsampling)."""
    gh, gw = max(2, int(h / cell) + 2), max(2, int(w / cell) + 2)
    small = Image.fromarray(rng.random((gh, gw), dtype=F32), mode="F")
    out = np.asarray(small.resize((w, h), Image.Resampling.BICUBIC), dtype=F32)
    lo, hi = float(out.min()), float(out.max())
    return (out - lo) / (hi - lo + 1e-6)


def _layer(h: int, w: int) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    im = Image.new("L", (w, h), 0)
    return im, ImageDraw.Draw(im)


def _mask_of(im: Image.Image) -> np.ndarray:
    return np.asarray(im) > 0


def _blob(rng: Rng, h: int, w: int, cy: float, cx: float, radius: float, rough: float = 0.5):
    """An irregular blob: a disk whose edge is perturbed by smooth noise."""
    yy, xx = np.ogrid[:h, :w]
    d = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2, dtype=F32) / max(radius, 1.0)
    n = smooth_noise(rng, h, w, max(4.0, radius / 2))
    return d < 1.0 - rough * (n - 0.5) * 2 * 0.6


def _edge(region: np.ndarray) -> np.ndarray:
    """Pixels of `region` with a neighbour outside it (a 1-px inner contour)."""
    inner = region.copy()
    inner[1:, :] &= region[:-1, :]
    inner[:-1, :] &= region[1:, :]
    inner[:, 1:] &= region[:, :-1]
    inner[:, :-1] &= region[:, 1:]
    return region & ~inner


def _paint(img: np.ndarray, mask: np.ndarray, region: np.ndarray, colour, alpha: float, cls: int):
    """Blend `colour` (RGB triple or an (H, W, 3) array) into `region` and label it `cls`."""
    col = np.asarray(colour, dtype=F32)
    if col.ndim == 3:
        col = col[region]
    img[region] = img[region] * (1 - alpha) + col * alpha
    mask[region] = cls


def _luma(img: np.ndarray, region: np.ndarray | None = None) -> float:
    px = img if region is None or not region.any() else img[region]
    return float(px.mean())


def _polyline_walk(rng: Rng, start, angle: float, steps: int, step: float, turn: float):
    """Points of a random walk whose heading drifts by up to `turn` radians per step."""
    headings = angle + np.cumsum(rng.normal(0, turn, steps))
    pts = np.cumsum(np.stack([np.cos(headings), np.sin(headings)], 1) * step, 0) + start
    return [tuple(p) for p in np.vstack([start, pts])]


# ---------------------------------------------------------------------------------------------
# substrates: one look per material, so leave-one-material-out is a real domain shift


def _weave(h: int, w: int, period: float) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w].astype(F32)
    a = np.sin(2 * np.pi * xx / period)
    b = np.sin(2 * np.pi * yy / period)
    return (0.5 + 0.5 * np.where((np.floor(xx / period) + np.floor(yy / period)) % 2 == 0, a, b))


def render_substrate(rng: Rng, material: str, content: str, h: int, w: int) -> np.ndarray:
    grain = rng.standard_normal((h, w), dtype=F32)
    low = smooth_noise(rng, h, w, max(h, w) / 3)
    if material == "Paper":
        tint = np.array([0.93, 0.9, 0.8], F32) + rng.normal(0, 0.02, 3).astype(F32)
        fib = np.asarray(
            Image.fromarray(grain).resize((w // 3 + 1, h), Image.Resampling.BILINEAR)
            .resize((w, h), Image.Resampling.BILINEAR)
        )
        lum = 1 + 0.04 * (low - 0.5) + 0.025 * fib + 0.01 * grain
    elif material == "Parchment":
        tint = np.array([0.84, 0.72, 0.52], F32) + rng.normal(0, 0.03, 3).astype(F32)
        blot = smooth_noise(rng, h, w, max(h, w) / 10)
        lum = 1 + 0.12 * (low - 0.5) + 0.1 * (blot - 0.5) + 0.015 * grain
    elif material == "Glass":
        tint = np.array([0.72, 0.8, 0.84], F32)
        yy, xx = np.mgrid[:h, :w].astype(F32)
        sheen = np.exp(-(((xx + yy * 0.6) / max(h, w) - rng.uniform(0.3, 1.2)) ** 2) / 0.01)
        lum = 0.95 + 0.05 * low + 0.18 * sheen + 0.008 * grain
        if content == "Artistic depiction":  # stained glass: coloured panes and dark leading
            cells = _cells(rng, h, w, n=int(rng.integers(8, 16)))
            pane_cols = rng.choice(_GLASS_PANES, size=cells.max() + 1)
            tint = np.ones(3, F32)
            out = pane_cols[cells] * lum[..., None]
            lead = _edge_labels(cells)
            out[lead] = 0.08
            return out.astype(F32)
    elif material == "Tesserae":
        tile = int(rng.integers(6, 11))
        gy, gx = h // tile + 1, w // tile + 1
        cols = rng.choice(_STONES, size=(gy, gx)) * rng.uniform(0.85, 1.1, (gy, gx, 1))
        out = np.repeat(np.repeat(cols, tile, 0), tile, 1)[:h, :w].astype(F32)
        yy, xx = np.ogrid[:h, :w]
        grout = ((yy % tile) < 1) | ((xx % tile) < 1)
        out[grout] = (0.55, 0.53, 0.5)
        return (out * (1 + 0.05 * grain[..., None])).astype(F32)
    elif material == "Wood":
        tint = np.array([0.6, 0.4, 0.22], F32) * rng.uniform(0.85, 1.15)
        yy, xx = np.mgrid[:h, :w].astype(F32)
        warp = smooth_noise(rng, h, w, max(h, w) / 4) * 25
        rings = 0.5 + 0.5 * np.sin((xx + warp) * rng.uniform(0.25, 0.5) + yy * 0.01)
        lum = 0.85 + 0.25 * rings + 0.03 * grain
    elif material == "Canvas":
        tint = np.array([0.78, 0.72, 0.6], F32)
        lum = 0.85 + 0.18 * _weave(h, w, float(rng.uniform(3, 5))) + 0.02 * grain
    elif material == "Lime plaster":
        tint = np.array([0.88, 0.8, 0.68], F32) + rng.normal(0, 0.02, 3).astype(F32)
        mid = smooth_noise(rng, h, w, 6)
        lum = 1 + 0.1 * (low - 0.5) + 0.08 * (mid - 0.5) + 0.04 * grain
    elif material == "Film emulsion":
        tint = np.array([0.8, 0.75, 0.66], F32)
        lum = 0.9 + 0.1 * low + 0.08 * grain
    elif material == "Textile":
        thread = rng.choice(_THREADS, size=2)
        wv = _weave(h, w, float(rng.uniform(2.5, 4)))[..., None]
        out = thread[0] * wv + thread[1] * (1 - wv)
        return (out * (0.9 + 0.1 * low[..., None] + 0.03 * grain[..., None])).astype(F32)
    elif material == "Ceramic":
        tint = np.array([0.95, 0.95, 0.97], F32)
        yy, xx = np.mgrid[:h, :w].astype(F32)
        cy, cx = rng.uniform(0.2, 0.8) * h, rng.uniform(0.2, 0.8) * w
        spec = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (0.02 * h * w))
        lum = 0.92 + 0.12 * spec + 0.004 * grain
    else:  # an unknown material still gets a plain substrate
        tint = np.array([0.8, 0.8, 0.8], F32)
        lum = 0.95 + 0.05 * low
    return (lum[..., None] * tint).astype(F32)


_GLASS_PANES = np.array(
    [[0.15, 0.3, 0.75], [0.75, 0.12, 0.12], [0.2, 0.6, 0.25], [0.9, 0.7, 0.15], [0.6, 0.2, 0.6],
     [0.85, 0.85, 0.8]], F32)
_STONES = np.array(
    [[0.85, 0.8, 0.7], [0.7, 0.35, 0.2], [0.55, 0.55, 0.6], [0.8, 0.6, 0.3], [0.25, 0.3, 0.45],
     [0.9, 0.88, 0.85], [0.35, 0.25, 0.2]], F32)
_THREADS = np.array(
    [[0.6, 0.12, 0.15], [0.15, 0.2, 0.5], [0.2, 0.4, 0.25], [0.8, 0.7, 0.45], [0.85, 0.82, 0.75]],
    F32)


def _cells(rng: Rng, h: int, w: int, n: int) -> np.ndarray:
    """Voronoi labels of `n` random seeds, computed at 1/4 resolution and upsampled."""
    sh, sw = max(1, h // 4), max(1, w // 4)
    seeds = rng.random((n, 2)) * (sh, sw)
    yy, xx = np.mgrid[:sh, :sw]
    d = (yy[None] - seeds[:, 0, None, None]) ** 2 + (xx[None] - seeds[:, 1, None, None]) ** 2
    lab = np.argmin(d, 0).astype(np.uint8)
    return np.asarray(Image.fromarray(lab).resize((w, h), Image.Resampling.NEAREST)).astype(int)


def _edge_labels(lab: np.ndarray) -> np.ndarray:
    e = np.zeros(lab.shape, bool)
    e[1:, :] |= lab[1:, :] != lab[:-1, :]
    e[:, 1:] |= lab[:, 1:] != lab[:, :-1]
    e[:-1, :] |= e[1:, :].copy()
    return e


# ---------------------------------------------------------------------------------------------
# content: what the artwork depicts, multiplied onto the substrate so its texture stays visible


def render_content(rng: Rng, img: np.ndarray, material: str, content: str) -> None:
    h, w = img.shape[:2]
    s = float(np.sqrt(h * w))
    if content == "Photographic depiction":
        field = 0.6 * smooth_noise(rng, h, w, s / 3) + 0.4 * smooth_noise(rng, h, w, s / 8)
        lum = 0.25 + 0.75 * field
        img *= lum[..., None]
        if material in ("Film emulsion", "Glass", "Paper"):  # monochrome prints and plates
            g = img.mean(2, keepdims=True)
            img[:] = g * np.array([1.02, 1.0, 0.95], F32)
        return
    layer = Image.new("RGB", (w, h), (255, 255, 255))
    draw = ImageDraw.Draw(layer)
    if content == "Artistic depiction":
        for _ in range(int(rng.integers(4, 9))):
            col = tuple(int(c) for c in rng.integers(40, 230, 3))
            cx, cy = rng.uniform(0, w), rng.uniform(0, h)
            r = rng.uniform(0.08, 0.3) * s
            angles = np.linspace(0, 2 * np.pi, 9)[:-1]
            radii = r * rng.uniform(0.6, 1.2, (8, 2))
            pts = list(zip((cx + radii[:, 0] * np.cos(angles)).tolist(),
                           (cy + radii[:, 1] * np.sin(angles)).tolist(), strict=True))
            draw.polygon(pts, fill=col, outline=(60, 40, 30), width=max(1, int(s / 150)))
        # soft edges like brushwork: down- and up-sample
        layer = layer.resize((max(1, w // 3), max(1, h // 3)), Image.Resampling.BILINEAR).resize(
            (w, h), Image.Resampling.BILINEAR)
        a = 0.75
    elif content == "Geometric patterns":
        period = int(rng.integers(12, 28))
        col = tuple(int(c) for c in rng.integers(30, 200, 3))
        kind = int(rng.integers(3))
        for y in range(0, h + period, period):
            for x in range(0, w + period, period):
                if kind == 0:
                    draw.rectangle([x, y, x + period // 2, y + period // 2], fill=col)
                elif kind == 1:
                    draw.ellipse([x, y, x + period * 0.7, y + period * 0.7], outline=col, width=2)
                else:
                    draw.polygon([(x, y + period // 2), (x + period // 2, y),
                                  (x + period, y + period // 2), (x + period // 2, y + period)],
                                 outline=col, width=2)
        a = 0.6
    else:  # Line art
        for _ in range(int(rng.integers(6, 14))):
            pts = _polyline_walk(rng, rng.uniform((0, 0), (w, h)), rng.uniform(0, 2 * np.pi),
                                 int(rng.integers(10, 30)), s / 30, 0.25)
            draw.line(pts, fill=(35, 30, 30), width=max(1, int(s / 200)))
        a = 0.9
    lay = np.asarray(layer, dtype=F32) / 255
    img *= (1 - a) + a * lay


# ---------------------------------------------------------------------------------------------
# damages


@dataclass(frozen=True)
class DamagePlan:
    """How often a damage appears and how much of the image it covers when it does."""

    cls: int
    p: float  # probability that an image carries it
    area: tuple[float, float]  # range of the covered fraction (shape-dependent, approximate)


# Tuned so that over ~100 images the pixel shares follow the real order:
# Clean >> Peel > Material loss > Background > Staining > Fold > Lightleak > Cracks > Dirt >
# Scratch > Sticker > Writing > Stamp > Dust > Puncture > Hair > Burn marks.
DAMAGE_PLAN: dict[int, DamagePlan] = {
    1: DamagePlan(1, 0.35, (0.04, 0.14)),  # Material loss
    2: DamagePlan(2, 0.35, (0.08, 0.3)),  # Peel
    3: DamagePlan(3, 0.3, (0.0, 0.0)),  # Dust (count driven)
    4: DamagePlan(4, 0.35, (0.0, 0.0)),  # Scratch (length driven)
    5: DamagePlan(5, 0.08, (0.0, 0.0)),  # Hair
    6: DamagePlan(6, 0.3, (0.004, 0.015)),  # Dirt
    7: DamagePlan(7, 0.2, (0.0, 0.0)),  # Fold
    8: DamagePlan(8, 0.1, (0.0, 0.0)),  # Writing
    9: DamagePlan(9, 0.25, (0.0, 0.0)),  # Cracks
    10: DamagePlan(10, 0.3, (0.012, 0.045)),  # Staining
    11: DamagePlan(11, 0.08, (0.006, 0.024)),  # Stamp
    12: DamagePlan(12, 0.1, (0.003, 0.01)),  # Sticker
    13: DamagePlan(13, 0.1, (0.0, 0.0)),  # Puncture
    14: DamagePlan(14, 0.01, (0.0, 0.0)),  # Burn marks
    15: DamagePlan(15, 0.12, (0.0, 0.0)),  # Lightleak
}

# Later damages are painted over earlier ones (a sticker covers a stain, dust lies on a sticker).
PAINT_ORDER: tuple[int, ...] = (10, 15, 6, 7, 1, 2, 9, 4, 8, 11, 12, 5, 3, 13, 14)

# What a loss exposes under each material: support, mortar, body, clear base.
_LOSS_COLOUR = {
    "Paper": (0.55, 0.42, 0.3), "Parchment": (0.45, 0.32, 0.2), "Glass": (0.06, 0.06, 0.08),
    "Tesserae": (0.62, 0.6, 0.56), "Wood": (0.93, 0.82, 0.6), "Canvas": (0.7, 0.66, 0.55),
    "Lime plaster": (0.62, 0.58, 0.55), "Film emulsion": (0.98, 0.98, 0.96),
    "Textile": (0.35, 0.3, 0.25), "Ceramic": (0.78, 0.45, 0.3),
}


def _rand_point(rng: Rng, h: int, w: int, margin: float = 0.1) -> tuple[float, float]:
    return (rng.uniform(margin, 1 - margin) * h, rng.uniform(margin, 1 - margin) * w)


def _material_loss(rng: Rng, img, mask, material: str, area: float) -> None:
    h, w = mask.shape
    cy, cx = _rand_point(rng, h, w, 0.0)
    region = _blob(rng, h, w, cy, cx, np.sqrt(area * h * w / np.pi), rough=0.8)
    base = np.array(_LOSS_COLOUR.get(material, (0.5, 0.45, 0.4)), F32)
    rough = smooth_noise(rng, h, w, 3)[..., None]
    _paint(img, mask, region, base * (0.8 + 0.4 * rough), 1.0, 1)
    img[_edge(region)] *= 0.55  # a torn, shadowed rim


def _peel(rng: Rng, img, mask, material: str, area: float) -> None:
    h, w = mask.shape
    cy, cx = _rand_point(rng, h, w)
    zone = _blob(rng, h, w, cy, cx, np.sqrt(area * 1.6 * h * w / np.pi), rough=0.6)
    flakes = smooth_noise(rng, h, w, max(3.0, np.sqrt(h * w) / 40)) > 0.4
    region = zone & flakes
    lifted = img[region] * 0.5 + np.array([0.92, 0.9, 0.86], F32) * 0.5
    img[region] = lifted
    mask[region] = 2
    img[_edge(region)] = (0.2, 0.16, 0.12)  # curled flake edges cast a dark line


def _dust(rng: Rng, img, mask, material: str, area: float) -> None:
    h, w = mask.shape
    n = int(rng.integers(30, 120) * h * w / 384**2) + 10
    ys, xs = rng.integers(0, h, n), rng.integers(0, w, n)
    col = 0.97 if _luma(img) < 0.6 else 0.25
    region = np.zeros((h, w), bool)
    region[ys, xs] = True
    big = rng.random(n) < 0.3  # some specks are 2×2
    region[np.minimum(ys[big] + 1, h - 1), xs[big]] = True
    region[ys[big], np.minimum(xs[big] + 1, w - 1)] = True
    _paint(img, mask, region, (col, col, col * 0.97), 0.9, 3)


def _scratch(rng: Rng, img, mask, material: str, area: float) -> None:
    h, w = mask.shape
    im, draw = _layer(h, w)
    s = np.sqrt(h * w)
    for _ in range(int(rng.integers(2, 7))):
        y, x = _rand_point(rng, h, w, 0.05)
        ang, length = rng.uniform(0, np.pi), rng.uniform(0.3, 0.8) * s
        dx, dy = np.cos(ang) * length / 2, np.sin(ang) * length / 2
        draw.line([(x - dx, y - dy), (x + dx, y + dy)], fill=255, width=1)
    region = _mask_of(im)
    col = 0.98 if _luma(img, region) < 0.65 else 0.3
    _paint(img, mask, region, (col, col, col), 0.85, 4)


def _hair(rng: Rng, img, mask, material: str, area: float) -> None:
    h, w = mask.shape
    im, draw = _layer(h, w)
    s = np.sqrt(h * w)
    for _ in range(1):
        pts = _polyline_walk(rng, rng.uniform((0, 0), (w, h)), rng.uniform(0, 2 * np.pi),
                             int(rng.integers(12, 30)), s / 60, 0.15)
        draw.line(pts, fill=255, width=1)
    region = _mask_of(im)
    col = 0.04 if _luma(img, region) > 0.35 else 0.9
    _paint(img, mask, region, (col, col * 0.95, col * 0.9), 0.95, 5)


def _dirt(rng: Rng, img, mask, material: str, area: float) -> None:
    h, w = mask.shape
    k = int(rng.integers(2, 6))
    for _ in range(k):
        cy, cx = _rand_point(rng, h, w, 0.05)
        region = _blob(rng, h, w, cy, cx, np.sqrt(area / k * h * w / np.pi), rough=0.9)
        shade = 0.45 + 0.15 * smooth_noise(rng, h, w, 3)[region][:, None]
        img[region] *= shade * np.array([0.95, 0.85, 0.7], F32)
        mask[region] = 6


def _fold(rng: Rng, img, mask, material: str, area: float) -> None:
    h, w = mask.shape
    yy, xx = np.mgrid[:h, :w].astype(F32)
    ang = rng.choice([0.0, np.pi / 2]) + rng.normal(0, 0.08)
    cy, cx = _rand_point(rng, h, w, 0.2)
    d = (xx - cx) * np.sin(ang) - (yy - cy) * np.cos(ang)  # signed distance to the crease
    half = rng.uniform(2.5, 6.0) * max(1.0, np.sqrt(h * w) / 384)
    region = np.abs(d) < half
    shade = np.where(d < 0, 0.55, 1.35)[region]  # one side in shadow, one catching light
    img[region] = np.clip(img[region] * shade[:, None], 0, 1)
    mask[region] = 7


def _writing(rng: Rng, img, mask, material: str, area: float) -> None:
    h, w = mask.shape
    im, draw = _layer(h, w)
    s = np.sqrt(h * w)
    size = max(4.0, s / 40)
    y0, x0 = _rand_point(rng, h, w, 0.1)
    for line in range(int(rng.integers(2, 6))):
        n = int(rng.integers(20, 60))
        t = np.arange(n, dtype=F32)
        xs = x0 + t * size * 0.35 + rng.normal(0, 0.5, n)
        ys = y0 + line * size * 1.8 + size * 0.5 * np.sin(t * rng.uniform(1.5, 2.5)) * rng.uniform(
            0.5, 1, n)
        draw.line(list(zip(xs.tolist(), ys.tolist(), strict=True)), fill=255, width=1)
    region = _mask_of(im)
    ink = rng.choice(np.array([[0.1, 0.08, 0.25], [0.25, 0.12, 0.05], [0.05, 0.05, 0.05]], F32))
    _paint(img, mask, region, ink, 0.9, 8)


def _cracks(rng: Rng, img, mask, material: str, area: float) -> None:
    h, w = mask.shape
    im, draw = _layer(h, w)
    s = np.sqrt(h * w)
    width = 2 if s < 500 else 3
    trunks = [(rng.uniform((0, 0), (w, h)), rng.uniform(0, 2 * np.pi), 1)
              for _ in range(int(rng.integers(2, 5)))]
    while trunks:  # branching: each segment may spawn shorter children
        start, ang, depth = trunks.pop()
        pts = _polyline_walk(rng, start, ang, int(rng.integers(8, 20)), s / 70, 0.35)
        draw.line(pts, fill=255, width=width)
        if depth < 4:
            for _ in range(int(rng.integers(1, 3))):
                p = np.array(pts[int(rng.integers(1, len(pts)))])
                trunks.append((p, ang + rng.choice([-1, 1]) * rng.uniform(0.4, 1.2), depth + 1))
    region = _mask_of(im)
    _paint(img, mask, region, (0.1, 0.08, 0.06), 0.92, 9)


def _staining(rng: Rng, img, mask, material: str, area: float) -> None:
    h, w = mask.shape
    cy, cx = _rand_point(rng, h, w, 0.05)
    region = _blob(rng, h, w, cy, cx, np.sqrt(area * h * w / np.pi), rough=0.7)
    tint = rng.choice(np.array([[0.85, 0.6, 0.25], [0.6, 0.5, 0.3], [0.7, 0.45, 0.5]], F32))
    img[region] *= 0.35 + 0.65 * tint  # translucent: the substrate shows through
    img[_edge(region)] *= 0.6  # a darker tide line
    mask[region] = 10


def _stamp(rng: Rng, img, mask, material: str, area: float) -> None:
    h, w = mask.shape
    im, draw = _layer(h, w)
    r = np.sqrt(area * h * w / np.pi)
    cy, cx = _rand_point(rng, h, w, 0.15)
    lw = max(2, int(r / 8))
    if rng.random() < 0.6:
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=255, width=lw)
        draw.ellipse([cx - r * 0.6, cy - r * 0.6, cx + r * 0.6, cy + r * 0.6], outline=255, width=1)
    else:
        draw.rectangle([cx - r, cy - r * 0.6, cx + r, cy + r * 0.6], outline=255, width=lw)
    for k in range(-1, 2):
        draw.line([(cx - r * 0.4, cy + k * r * 0.25), (cx + r * 0.4, cy + k * r * 0.25)],
                  fill=255, width=1)
    region = _mask_of(im)
    ink = (0.75, 0.1, 0.15) if rng.random() < 0.6 else (0.12, 0.2, 0.65)
    _paint(img, mask, region, ink, 0.85, 11)


def _sticker(rng: Rng, img, mask, material: str, area: float) -> None:
    h, w = mask.shape
    im, draw = _layer(h, w)
    side = np.sqrt(area * h * w)
    ww, hh = side * rng.uniform(1.2, 2.0), side / rng.uniform(1.2, 2.0)
    cy, cx = _rand_point(rng, h, w, 0.1)
    a = rng.normal(0, 0.15)
    c, s_ = np.cos(a), np.sin(a)
    half = ((-ww / 2, -hh / 2), (ww / 2, -hh / 2), (ww / 2, hh / 2), (-ww / 2, hh / 2))
    corners = [(cx + c * dx - s_ * dy, cy + s_ * dx + c * dy) for dx, dy in half]
    draw.polygon(corners, fill=255)
    region = _mask_of(im)
    paper = np.array([0.98, 0.96, 0.82] if rng.random() < 0.5 else [0.97, 0.97, 0.97], F32)
    _paint(img, mask, region, paper, 1.0, 12)
    lines = Image.new("L", (w, h), 0)
    ld = ImageDraw.Draw(lines)
    for k in range(3):
        y = cy - hh / 4 + k * hh / 4
        ld.line([(cx - ww / 3, y), (cx + ww / 4, y)], fill=255, width=1)
    text = _mask_of(lines) & region
    img[text] = 0.3


def _puncture(rng: Rng, img, mask, material: str, area: float) -> None:
    h, w = mask.shape
    im, draw = _layer(h, w)
    core, _ = _layer(h, w)
    cd = ImageDraw.Draw(core)
    scale = max(1.0, np.sqrt(h * w) / 384)
    for _ in range(int(rng.integers(1, 5))):
        y, x = _rand_point(rng, h, w, 0.05)
        r = rng.uniform(1.5, 4) * scale
        draw.ellipse([x - r - 1.5, y - r - 1.5, x + r + 1.5, y + r + 1.5], fill=255)
        cd.ellipse([x - r, y - r, x + r, y + r], fill=255)
    region = _mask_of(im)
    _paint(img, mask, region, (0.85, 0.8, 0.7), 0.7, 13)  # torn, lighter rim
    img[_mask_of(core)] = 0.02  # the hole itself


def _burn(rng: Rng, img, mask, material: str, area: float) -> None:
    h, w = mask.shape
    cy, cx = _rand_point(rng, h, w, 0.1)
    r = rng.uniform(1.5, 3.0) * max(1.0, np.sqrt(h * w) / 384)
    yy, xx = np.ogrid[:h, :w]
    d = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2, dtype=F32) / r
    region = d < 1.0
    t = d[region][:, None]
    scorched = np.array([0.05, 0.03, 0.02], F32) * (1 - t) + np.array([0.55, 0.3, 0.1], F32) * t
    _paint(img, mask, region, scorched, 1.0, 14)


def _lightleak(rng: Rng, img, mask, material: str, area: float) -> None:
    h, w = mask.shape
    yy, xx = np.mgrid[:h, :w].astype(F32)
    side = int(rng.integers(4))
    d = (yy, h - 1 - yy, xx, w - 1 - xx)[side]
    reach = rng.uniform(0.04, 0.12) * (h if side < 2 else w)
    glow = np.exp(-d / reach) * (0.85 + 0.3 * smooth_noise(rng, h, w, max(h, w) / 4))
    region = glow > 0.5
    col = np.array([1.0, 0.55, 0.15] if rng.random() < 0.7 else [1.0, 0.3, 0.35], F32)
    g = np.clip(glow[region], 0, 1)[:, None]
    # a tinted glow: shifts hue even on white paper, where a pure brightening would vanish
    a = 0.75 * g
    img[region] = np.clip(img[region] * (1 - a) + col * a + 0.1 * g, 0, 1)
    mask[region] = 15


_RENDERERS: dict[int, Callable[..., None]] = {
    1: _material_loss, 2: _peel, 3: _dust, 4: _scratch, 5: _hair, 6: _dirt, 7: _fold,
    8: _writing, 9: _cracks, 10: _staining, 11: _stamp, 12: _sticker, 13: _puncture,
    14: _burn, 15: _lightleak,
}


def render_damage(rng: Rng, cls: int, img: np.ndarray, mask: np.ndarray, material: str) -> None:
    plan = DAMAGE_PLAN[cls]
    area = float(rng.uniform(*plan.area)) if plan.area[1] > 0 else 0.0
    _RENDERERS[cls](rng, img, mask, material, area)


def add_background_border(rng: Rng, img: np.ndarray, mask: np.ndarray) -> None:
    """A mount or scanner bed around (some sides of) the artwork, labelled 255."""
    h, w = mask.shape
    colour = rng.choice(np.array([[0.12, 0.12, 0.13], [0.02, 0.02, 0.02], [0.55, 0.55, 0.57]], F32))
    sides = rng.random(4) < 0.6
    if not sides.any():
        sides[int(rng.integers(4))] = True
    region = np.zeros((h, w), bool)
    for i, on in enumerate(sides):
        if not on:
            continue
        t = max(2, int(rng.uniform(0.01, 0.04) * (h if i < 2 else w)))
        if i == 0:
            region[:t] = True
        elif i == 1:
            region[-t:] = True
        elif i == 2:
            region[:, :t] = True
        else:
            region[:, -t:] = True
    noise = rng.normal(0, 0.01, (int(region.sum()), 1)).astype(F32)
    img[region] = colour + noise
    mask[region] = 255
