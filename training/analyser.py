"""A deterministic reader of the embedded world's clips: colour, shape and motion.

No model: plain pixel statistics, so it can judge what the embedded model generates.

1. Background: the median colour of the border pixels over all frames, named by the nearest
   vocabulary background.
2. Object pixels: every pixel is explained as a mix ``bg + alpha * (c - bg)`` of the
   background and each vocabulary colour c; it belongs to the colour with the smallest
   residual among those with alpha >= 0.3. Mixing with the background is what anti-aliased
   edges do, so edge pixels join their object instead of a wrong colour.
3. Shape, from each frame's coverage map (alpha summed over the object), by two measures that
   change little when a clip is blurred or an edge smeared along the motion by a pixel or two,
   as every decoded clip is:
   - the skewness of the row sums (mass per image row): the world's up-pointing triangle puts
     its mass low, skewness -2*sqrt(2)/5 = -0.57, a circle and a square 0. Blur adds to the
     variance but leaves the third cumulant unchanged; |skew| > 0.28 (halfway) is a triangle.
   - the profile ratio: the largest column sum times the largest row sum, over the area:
     1 for an axis-aligned square, 4/pi = 1.27 for a circle (flat-topped profiles, so blur
     leaves their maxima alone); below the geometric mean 1.13 is a square, else a circle.
   The box fill (coverage over the box of pixels with alpha >= 0.5) grows with blur, so it is
   only reported, as `fill`.
4. Motion: least-squares slopes of the coverage-weighted centroid and of log(area) over time.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..model.embedded.vocab import BACKGROUNDS, COLOURS

_FG_DIST = 0.15       # pixels closer than this to the background (RGB 0..1) are background
_MIN_ALPHA = 0.3
_MOVE_FRAC = 0.08     # displacement over the clip, as a fraction of the width, that counts as motion
_SIZE_LOG = 0.4       # |log(area ratio)| that counts as growing / shrinking


@dataclass(frozen=True)
class ObjectReport:
    """What was read about one object. Pixel units; y grows downward."""

    colour: str
    shape: str
    motion: str
    fill: float                              # coverage / box area (median over frames)
    profile: float                           # profile ratio (median over frames): square / circle
    skew: float                              # row-sum skewness (median over frames): triangle or not
    displacement: tuple[float, float]        # fitted (dx, dy) from first to last frame
    log_area_ratio: float                    # fitted log(area_last / area_first)
    centroids: tuple[tuple[float, float], ...]
    areas: tuple[float, ...]
    coverage: float                          # mean area per frame (pixels)

    @property
    def max_step(self) -> float:
        """The largest frame-to-frame centroid move (pixels): a jump shows up here."""
        c = self.centroids
        return max((math.dist(a, b) for a, b in zip(c, c[1:])), default=0.0)


@dataclass(frozen=True)
class Analysis:
    """The whole clip: its background and objects (top to bottom); the largest one's
    colour, shape and motion are repeated at the top level."""

    background: str
    objects: tuple[ObjectReport, ...]

    @property
    def main(self) -> ObjectReport | None:
        """The largest object (None when nothing was found)."""
        return max(self.objects, key=lambda o: o.coverage, default=None)

    @property
    def colour(self) -> str | None:
        m = self.main
        return m.colour if m else None

    @property
    def shape(self) -> str | None:
        m = self.main
        return m.shape if m else None

    @property
    def motion(self) -> str | None:
        m = self.main
        return m.motion if m else None


def to_frames(clip: torch.Tensor) -> torch.Tensor:
    """A clip as frames [T, H, W, 3] in 0..1, from [T, H, W, 3] in 0..1 (ComfyUI IMAGE) or
    [3, T, H, W] in -1..1 (the model's layout; a leading batch of 1 is dropped)."""
    x = torch.as_tensor(clip).detach().float().cpu()
    if x.dim() == 5 and x.shape[0] == 1:
        x = x[0]
    if x.dim() != 4:
        raise ValueError(f"clip of shape {tuple(x.shape)}: expected [T,H,W,3] in 0..1 or [3,T,H,W] in -1..1")
    if x.shape[-1] == 3 and x.shape[0] != 3:
        return x.clamp(0, 1)
    if x.shape[0] == 3:
        return ((x.permute(1, 2, 3, 0) + 1) / 2).clamp(0, 1)
    raise ValueError(f"clip of shape {tuple(x.shape)}: expected [T,H,W,3] in 0..1 or [3,T,H,W] in -1..1")


def _nearest(rgb: torch.Tensor, table: dict[str, tuple[int, int, int]]) -> str:
    names = list(table)
    ref = torch.tensor([table[n] for n in names], dtype=torch.float32) / 255
    return names[int((ref - rgb).norm(dim=1).argmin())]


def _slope(values: torch.Tensor, times: torch.Tensor) -> float:
    """Least-squares slope of values over times (0 when fewer than two points)."""
    if values.numel() < 2:
        return 0.0
    t = times - times.mean()
    return float((t * (values - values.mean())).sum() / (t * t).sum().clamp_min(1e-9))


_TRIANGLE_SKEW = 0.5 * 2 * math.sqrt(2) / 5                # 0.28: halfway to the triangle's 0.57
_SQUARE_CIRCLE = math.sqrt(1.0 * 4 / math.pi)              # 1.13: between square 1 and circle 4/pi


def _shape_of(profile: float, skew: float) -> str:
    if abs(skew) > _TRIANGLE_SKEW:
        return "triangle"
    return "square" if profile < _SQUARE_CIRCLE else "circle"


def _shape_measures(w: torch.Tensor) -> tuple[float, float]:
    """(profile ratio, row-sum skewness) of one frame's coverage map w [H, W]."""
    area = w.sum().clamp_min(1e-6)
    rows = w.sum(dim=1)                                                  # (H,)
    profile = float(w.sum(dim=0).max() * rows.max() / area)
    y = torch.arange(rows.numel(), dtype=w.dtype)
    mu = (rows * y).sum() / area
    m2 = (rows * (y - mu) ** 2).sum() / area
    m3 = (rows * (y - mu) ** 3).sum() / area
    return profile, float(m3 / m2.clamp_min(1e-6) ** 1.5)


def _motion_of(dx: float, dy: float, log_ratio: float, width: int) -> str:
    disp = math.hypot(dx, dy)
    if disp > _MOVE_FRAC * width and (abs(log_ratio) < _SIZE_LOG or disp > 0.2 * width):
        if abs(dx) >= abs(dy):
            return "right" if dx > 0 else "left"
        return "down" if dy > 0 else "up"
    if abs(log_ratio) >= _SIZE_LOG:
        return "grow" if log_ratio > 0 else "shrink"
    return "still"


def analyse(clip: torch.Tensor, min_area: float = 12.0) -> Analysis:
    """Read background, objects, their colour, shape and motion from a clip (see the module
    docstring). `min_area`: mean pixels per frame below which a colour is noise."""
    f = to_frames(clip)                                                   # (T, H, W, 3)
    T, H, W, _ = f.shape
    border = torch.cat([f[:, 0], f[:, -1], f[:, :, 0], f[:, :, -1]], dim=1).reshape(-1, 3)
    bg = border.median(dim=0).values                                     # (3,)
    names = list(COLOURS)
    ref = torch.tensor([COLOURS[n] for n in names], dtype=torch.float32) / 255  # (K, 3)
    d = f - bg                                                            # (T, H, W, 3)
    u = ref - bg                                                          # (K, 3)
    alpha = torch.einsum("thwc,kc->thwk", d, u) / (u * u).sum(1).clamp_min(1e-6)
    resid = (d.unsqueeze(-2) - alpha.unsqueeze(-1) * u).norm(dim=-1)     # (T, H, W, K)
    resid = torch.where(alpha >= _MIN_ALPHA, resid, torch.full_like(resid, float("inf")))
    best = resid.argmin(dim=-1)                                          # (T, H, W)
    fg = (d.norm(dim=-1) > _FG_DIST) & torch.isfinite(resid.min(dim=-1).values)
    a_best = alpha.gather(-1, best.unsqueeze(-1)).squeeze(-1).clamp(0, 1)
    times = torch.arange(T, dtype=torch.float32)
    ys = torch.arange(H, dtype=torch.float32).view(1, H, 1) + 0.5
    xs = torch.arange(W, dtype=torch.float32).view(1, 1, W) + 0.5
    objects = []
    for k, name in enumerate(names):
        w = torch.where(fg & (best == k), a_best, torch.zeros_like(a_best))  # (T, H, W)
        area = w.sum(dim=(1, 2))                                          # (T,)
        if float(area.mean()) < min_area:
            continue
        seen = area >= min_area / 2
        cx = (w * xs).sum(dim=(1, 2)) / area.clamp_min(1e-6)
        cy = (w * ys).sum(dim=(1, 2)) / area.clamp_min(1e-6)
        fills, profiles, skews = [], [], []
        for t in torch.nonzero(seen).flatten().tolist():
            core = torch.nonzero(w[t] >= 0.5)
            if core.shape[0] < 4:
                continue
            box = (core.max(0).values - core.min(0).values + 1).prod()
            fills.append(float(area[t]) / float(box))
            profile, skew = _shape_measures(w[t])
            profiles.append(profile)
            skews.append(skew)
        fill, profile, skew = (float(torch.tensor(v).median()) if v else 0.0 for v in (fills, profiles, skews))
        dx = _slope(cx[seen], times[seen]) * (T - 1)
        dy = _slope(cy[seen], times[seen]) * (T - 1)
        lr = _slope(area[seen].clamp_min(1e-3).log(), times[seen]) * (T - 1)
        objects.append(ObjectReport(
            colour=name, shape=_shape_of(profile, skew), motion=_motion_of(dx, dy, lr, W), fill=fill,
            profile=profile, skew=skew,
            displacement=(dx, dy), log_area_ratio=lr,
            centroids=tuple((float(cx[t]), float(cy[t])) for t in range(T) if seen[t]),
            areas=tuple(float(a) for a in area), coverage=float(area.mean())))
    objects.sort(key=lambda o: sum(c[1] for c in o.centroids) / max(len(o.centroids), 1))
    return Analysis(background=_nearest(bg, BACKGROUNDS), objects=tuple(objects))
