"""The embedded model's synthetic world: short clips of simple shapes, with captions.

Every clip is a pure function of its seed (no model, no files): one or two shapes (circle,
square, triangle) in a vocabulary colour on a vocabulary background, moving left / right /
up / down, staying still, growing or shrinking, at constant speed. Edges are anti-aliased
from a signed distance (coverage = clamp(0.5 - d, 0, 1), d in pixels), which keeps the
clips smooth enough for a tiny VAE to reconstruct.

Some (colour, shape, motion) combinations are held out of training (`HELD_OUT`) so that
evaluation measures composition, not recall.

The "walls" split holds clips of one object that moves left / right / up / down at the same
speeds until its track reaches the margin the other clips keep from the frame's edge, and rests
there for the rest of the clip (from the first frame on when it starts at the margin). A long
video's storyboard can ask for more travel than the frame has; these clips show what happens then.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

import torch

from ..model.embedded.vocab import BACKGROUNDS, COLOURS, MOTIONS, SHAPES, words_for

SIZE = 64     # frames are SIZE x SIZE pixels
FRAMES = 17   # 4k+1 frames, as the causal VAE wants

# The (colour, shape, motion) triples never shown in training: 11 of 168, chosen by a fixed
# rule so that every colour, shape and motion still occurs in training in other triples.
HELD_OUT: frozenset[tuple[str, str, str]] = frozenset(
    (c, s, m)
    for ci, c in enumerate(COLOURS)
    for si, s in enumerate(SHAPES)
    for mi, m in enumerate(MOTIONS)
    if (ci + 3 * si + 5 * mi) % 14 == 0
)

# Caption templates: {obj} is "a <colour> <shape>", {motion} a motion phrase, {bg} a background.
_TEMPLATES: tuple[str, ...] = (
    "{obj} {motion} across a {bg} background",
    "{obj} {motion} on a {bg} background",
    "on a {bg} background, {obj} {motion}",
    "{obj} {motion} against a plain {bg} backdrop",
    "a {bg} scene where {obj} {motion}",
    "{obj} {motion}, {bg} background",
    "{obj} {motion}",
)
_PAIR_TEMPLATES: tuple[str, ...] = (
    "{obj} {motion} and {obj2} {motion2} on a {bg} background",
    "on a {bg} background, {obj} {motion} while {obj2} {motion2}",
    "{obj} {motion} and {obj2} {motion2}",
)
_PAIR_MOTIONS: tuple[str, ...] = ("left", "right", "still", "grow", "shrink")


@dataclass(frozen=True)
class ObjectSpec:
    """One object's appearance and straight-line track (pixels; y grows downward)."""

    colour: str
    shape: str
    motion: str
    start: tuple[float, float]   # centre (x, y) at the first frame
    end: tuple[float, float]     # centre (x, y) at the last frame
    size: tuple[float, float]    # radius-like size at the first and last frame
    stop: float = 1.0            # fraction of the clip at which the centre reaches `end`, then rests


@dataclass(frozen=True)
class Clip:
    """A generated clip: video [3, T, H, W] in [-1, 1], its caption, and its labels."""

    video: torch.Tensor
    caption: str
    background: str
    objects: tuple[ObjectSpec, ...]
    labels: dict = field(default_factory=dict)


def _sdf(shape: str, xx: torch.Tensor, yy: torch.Tensor, cx: float, cy: float, r: float) -> torch.Tensor:
    """Signed distance in pixels (negative inside) of a shape of size r centred at (cx, cy).

    A circle has radius r; a square has half-side 0.9 r; a triangle is equilateral, pointing
    up, with circumradius 1.3 r, centred on its centroid (so scaling keeps the centroid).
    """
    dx, dy = xx - cx, yy - cy
    if shape == "circle":
        return torch.sqrt(dx * dx + dy * dy) - r
    if shape == "square":
        return torch.maximum(dx.abs(), dy.abs()) - 0.9 * r
    if shape == "triangle":
        R = 1.3 * r
        inradius = R / 2
        # Edge normals of an up-pointing triangle: down (base) and the two slanted sides.
        d_base = dy - inradius
        s, c = math.sin(math.pi / 6), math.cos(math.pi / 6)
        d_right = c * dx - s * dy - inradius
        d_left = -c * dx - s * dy - inradius
        return torch.maximum(d_base, torch.maximum(d_right, d_left))
    raise ValueError(f"unknown shape {shape!r}; valid shapes: {', '.join(SHAPES)}")


def render(objects: tuple[ObjectSpec, ...], background: str, frames: int = FRAMES,
           size: int = SIZE) -> torch.Tensor:
    """Draw the objects' tracks over a plain background. Returns [3, T, H, W] in [-1, 1]."""
    if frames < 1 or size < 8:
        raise ValueError(f"frames={frames}, size={size}: need frames >= 1 and size >= 8")
    coords = torch.arange(size, dtype=torch.float32) + 0.5
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")                  # (H, W)
    bg = torch.tensor(BACKGROUNDS[background], dtype=torch.float32) / 255
    video = bg.view(3, 1, 1, 1).expand(3, frames, size, size).clone()       # (3, T, H, W)
    for obj in objects:
        col = torch.tensor(COLOURS[obj.colour], dtype=torch.float32).view(3, 1, 1) / 255
        for t in range(frames):
            a = t / max(frames - 1, 1)
            w = min(a / obj.stop, 1.0) if obj.stop > 0 else 1.0
            cx = obj.start[0] + w * (obj.end[0] - obj.start[0])
            cy = obj.start[1] + w * (obj.end[1] - obj.start[1])
            # Sizes change geometrically so growth looks steady.
            r = obj.size[0] * (obj.size[1] / obj.size[0]) ** a
            cover = (0.5 - _sdf(obj.shape, xx, yy, cx, cy, r)).clamp(0, 1)  # (H, W)
            video[:, t] = video[:, t] * (1 - cover) + col * cover
    return video * 2 - 1


def _track(rng: random.Random, motion: str, size: int, r: float,
           y_range: tuple[float, float] | None = None) -> tuple[tuple, tuple, tuple]:
    """Start, end and size pair of a straight track that stays inside the frame."""
    margin = 1.35 * r + 2
    lo_y, hi_y = y_range if y_range else (margin, size - margin)
    dist = rng.uniform(0.3, 0.45) * size
    sizes = (r, r)
    if motion in ("left", "right"):
        y = rng.uniform(lo_y, hi_y)
        x0 = rng.uniform(margin, size - margin - dist)
        start, end = (x0, y), (x0 + dist, y)
        if motion == "left":
            start, end = end, start
    elif motion in ("up", "down"):
        x = rng.uniform(margin, size - margin)
        y0 = rng.uniform(margin, size - margin - dist)
        start, end = (x, y0), (x, y0 + dist)
        if motion == "up":
            start, end = end, start
    else:
        big = r * 1.6 if motion in ("grow", "shrink") else r
        m = 1.35 * big + 2
        c = (rng.uniform(m, size - m), rng.uniform(max(lo_y, m), min(hi_y, size - m)) if y_range
             else rng.uniform(m, size - m))
        start = end = c
        if motion == "grow":
            sizes = (r, big)
        elif motion == "shrink":
            sizes = (r * 1.6, r)
    return start, end, sizes


def _wall_track(rng: random.Random, motion: str, size: int, r: float) -> tuple[tuple, tuple, tuple, float]:
    """Start, end, size pair and stop fraction of a track that moves at a training speed and
    rests at the margin of the frame once it gets there."""
    margin = 1.35 * r + 2
    dist = rng.uniform(0.3, 0.45) * size          # travel over the clip at this speed
    ahead = rng.uniform(0.0, dist)                # travel left before the margin
    across = rng.uniform(margin, size - margin)
    wall = margin if motion in ("left", "up") else size - margin
    along = (wall + ahead) if motion in ("left", "up") else (wall - ahead)
    if motion in ("left", "right"):
        start, end = (along, across), (wall, across)
    elif motion in ("up", "down"):
        start, end = (across, along), (across, wall)
    else:
        raise ValueError(f"motion {motion!r}: a walls clip moves left, right, up or down")
    return start, end, (r, r), ahead / dist


def _phrase(rng: random.Random, colour: str, shape: str) -> str:
    return f"a {rng.choice(words_for(colour))} {rng.choice(words_for(shape))}"


def describe(objects: tuple[ObjectSpec, ...], background: str, rng: random.Random) -> str:
    """A caption of a clip, drawn from the templates and synonyms with `rng` (training can
    re-describe the same clip with fresh words every epoch)."""
    first = objects[0]
    if len(objects) == 1:
        return rng.choice(_TEMPLATES).format(
            obj=_phrase(rng, first.colour, first.shape), bg=rng.choice(words_for(background)),
            motion=rng.choice(words_for(first.motion)))
    second = objects[1]
    return rng.choice(_PAIR_TEMPLATES).format(
        obj=_phrase(rng, first.colour, first.shape), motion=rng.choice(words_for(first.motion)),
        obj2=_phrase(rng, second.colour, second.shape), motion2=rng.choice(words_for(second.motion)),
        bg=rng.choice(words_for(background)))


def sample_clip(seed: int, split: str = "train", frames: int = FRAMES, size: int = SIZE,
                pair_prob: float = 0.15, combo: tuple[str, str, str] | None = None,
                background: str | None = None) -> Clip:
    """The clip of a seed. `split` "train" avoids the `HELD_OUT` triples, "heldout" draws
    only from them (single objects), "walls" is a single object of a training triple that moves
    until it rests at the frame's margin (see the module's docstring); `combo` forces (colour,
    shape, motion)."""
    if split not in ("train", "heldout", "walls"):
        raise ValueError(f"split={split!r}: use 'train', 'heldout' or 'walls'")
    rng = random.Random(f"{split}:{seed}")
    bg = background or rng.choice(list(BACKGROUNDS))
    if split == "walls":
        while combo is None or combo in HELD_OUT:
            combo = (rng.choice(list(COLOURS)), rng.choice(SHAPES), rng.choice(("left", "right", "up", "down")))
        r = rng.uniform(0.1, 0.15) * size
        objs = (ObjectSpec(*combo, *_wall_track(rng, combo[2], size, r)),)
        labels = {"colour": combo[0], "shape": combo[1], "motion": combo[2], "background": bg, "objects": 1}
        return Clip(render(objs, bg, frames, size), describe(objs, bg, rng), bg, objs, labels)
    if combo is None:
        if split == "heldout":
            combo = rng.choice(sorted(HELD_OUT))
        else:
            while True:
                combo = (rng.choice(list(COLOURS)), rng.choice(SHAPES), rng.choice(MOTIONS))
                if combo not in HELD_OUT:
                    break
    pair = split == "train" and combo[2] in _PAIR_MOTIONS and rng.random() < pair_prob
    if not pair:
        r = rng.uniform(0.1, 0.15) * size
        start, end, sizes = _track(rng, combo[2], size, r)
        objs = (ObjectSpec(*combo, start, end, sizes),)
    else:
        while True:  # a second object of another colour, also not a held-out triple
            c2 = (rng.choice(list(COLOURS)), rng.choice(SHAPES), rng.choice(_PAIR_MOTIONS))
            if c2 not in HELD_OUT and c2[0] != combo[0]:
                break
        r1, r2 = (rng.uniform(0.08, 0.11) * size for _ in range(2))
        a = _track(rng, combo[2], size, r1, y_range=(1.35 * r1 * 1.6 + 2, size / 2 - 2))
        b = _track(rng, c2[2], size, r2, y_range=(size / 2 + 2, size - 1.35 * r2 * 1.6 - 2))
        objs = (ObjectSpec(*combo, *a), ObjectSpec(*c2, *b))
    caption = describe(objs, bg, rng)
    labels = {"colour": objs[0].colour, "shape": objs[0].shape, "motion": objs[0].motion,
              "background": bg, "objects": len(objs)}
    return Clip(render(objs, bg, frames, size), caption, bg, objs, labels)


def batch(seeds: list[int], split: str = "train", **kw) -> tuple[torch.Tensor, list[str], list[dict]]:
    """Clips of several seeds stacked: video [B, 3, T, H, W], captions, labels."""
    clips = [sample_clip(s, split, **kw) for s in seeds]
    return torch.stack([c.video for c in clips]), [c.caption for c in clips], [c.labels for c in clips]


def caption_for(colour: str, shape: str, motion: str, background: str) -> str:
    """The plain canonical caption of an attribute set (used for evaluation prompts)."""
    motion_phrase = words_for(motion)[0]
    return f"a {colour} {shape} {motion_phrase} across a {background} background"
