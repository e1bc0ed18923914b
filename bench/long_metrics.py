"""How coherent a long clip of the embedded world is: the measures of bench/bench_long_video.py.

All from pixels, with the project's analyser (training/analyser.py) for colour, shape and
motion; ``frames`` are IMAGE ``[n, 64, 64, 3]`` in 0..1 and ``segments`` the storyboard's
``(seconds, colour, shape, motion)``.

- identity: the share of 1-second slices whose main object has the storyboard's colour and shape;
- motion: the share of segments whose main object moves in the storyboard's direction;
- one object: the share of frames with exactly one object (a connected blob of foreground
  pixels of at least ``MIN_BLOB`` pixels), and the share of consecutive frame pairs whose
  object centre moves at most ``MAX_STEP`` pixels;
- seams: the largest mean absolute frame-to-frame change over the median one; and the same
  without the clip's first change (frame 0 to 1), which the causal VAE's first frame, decoded
  alone, makes large in any clip of this model, a single window or a VAE round trip of a clip
  drawn by the world alike; and, given the frames where one window's new frames begin (``joints``:
  the change from frame j to j + 1), the largest change at a joint over the median one;
- drift: the largest per-channel difference (in 1/255) between the background colour (median
  of the border pixels) of the last second and of the first.

``room``: for each segment that asks for a direction, how far (pixels) its object's centre can
still travel that way from where the segment starts before it leaves the embedded world's tracks
(which keep a centre ``TRACK_MARGIN`` pixels inside the frame), and whether the segment moved
that way: where the storyboard asks for more travel than the frame holds.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from scipy import ndimage

from spacetime_video.training.analyser import analyse

FG_DIST = 0.15     # as the analyser: farther than this from the background is an object pixel
MIN_BLOB = 6       # pixels
MAX_STEP = 6.0     # pixels between consecutive frames
TRACK_MARGIN = 12.8  # training/world.py: a track keeps its centre 1.35 r + 2 px inside (r about 8 px)


def background(frames: torch.Tensor) -> torch.Tensor:
    border = torch.cat([frames[:, 0], frames[:, -1], frames[:, :, 0], frames[:, :, -1]], dim=1).reshape(-1, 3)
    return border.median(dim=0).values


def blobs(frame: torch.Tensor, bg: torch.Tensor) -> list[tuple[float, float, int]]:
    """(x, y, pixels) of each object blob in one frame."""
    fg = ((frame - bg).norm(dim=-1) > FG_DIST).numpy()
    labels, n = ndimage.label(fg)
    out = []
    for i in range(1, n + 1):
        ys, xs = np.nonzero(labels == i)
        if len(xs) >= MIN_BLOB:
            out.append((float(xs.mean()), float(ys.mean()), len(xs)))
    return out


def measure(frames: torch.Tensor, segments: list[tuple[float, str, str, str]], fps: float,
            joints: list[int] | None = None) -> dict:
    n = frames.shape[0]
    second = int(round(fps))
    # identity per 1-second slice
    ends, t = [], 0.0
    for s in segments:
        t += s[0]
        ends.append(t * fps)

    def segment_at(frame: float) -> tuple:
        return segments[next((j for j, e in enumerate(ends) if frame < e), len(segments) - 1)]

    ident = []
    for a in range(0, n - second, second):
        seg = segment_at(a + second / 2)
        rep = analyse(frames[a:a + second + 1])
        ident.append(rep.colour == seg[1] and rep.shape == seg[2])
    motion, start = [], 0.0
    for s, e in zip(segments, ends):
        a, b = int(math.ceil(start)), min(n, int(math.floor(e)) + 1)
        motion.append(analyse(frames[a:b]).motion == s[3])
        start = e
    bg = background(frames)
    per_frame = [blobs(frames[i], bg) for i in range(n)]
    one = [len(b) == 1 for b in per_frame]
    steps = []
    for b0, b1 in zip(per_frame, per_frame[1:]):
        if b0 and b1:
            c0, c1 = max(b0, key=lambda b: b[2]), max(b1, key=lambda b: b[2])
            steps.append(math.dist(c0[:2], c1[:2]) <= MAX_STEP)
        else:
            steps.append(False)
    change = (frames[1:] - frames[:-1]).abs().mean(dim=(1, 2, 3))
    drift = (background(frames[-second:]) - background(frames[:second])).abs().max() * 255
    return {"identity": sum(ident) / max(len(ident), 1), "motion": sum(motion) / len(motion),
            "one_object": sum(one) / n, "smooth": sum(steps) / max(len(steps), 1),
            "seam_ratio": float(change.max() / change.median().clamp_min(1e-6)),
            "seam_ratio_late": float(change[1:].max() / change.median().clamp_min(1e-6)),
            "seam_ratio_joints": float(change[list(joints)].max() / change.median().clamp_min(1e-6)) if joints
            else float("nan"), "drift": float(drift),
            "frames": n}


def room(frames: torch.Tensor, segments: list[tuple[float, str, str, str]], fps: float) -> list[tuple[float, bool]]:
    """(pixels of travel left ahead at the segment's first frame, moved the storyboard's way) per
    segment with a direction whose first frame shows an object."""
    n, size, bg, out, start = frames.shape[0], frames.shape[2], background(frames), [], 0.0
    for s in segments:
        end = start + s[0] * fps
        a, b = int(math.ceil(start)), min(n, int(math.floor(end)) + 1)
        start = end
        found = blobs(frames[a], bg) if a < n else []
        if s[3] not in ("left", "right", "up", "down") or not found:
            continue
        x, y, _ = max(found, key=lambda t: t[2])
        ahead = {"right": size - x, "left": x, "up": y, "down": size - y}[s[3]] - TRACK_MARGIN
        out.append((ahead, analyse(frames[a:b]).motion == s[3]))
    return out


def room_line(rows: list[tuple[float, bool]], split: float = 20.0) -> str:
    near = [ok for r, ok in rows if r < split]
    far = [ok for r, ok in rows if r >= split]
    return (f"segments starting with under {split:g} px of travel left: {sum(near)} / {len(near)} move the right "
            f"way; with {split:g} px or more: {sum(far)} / {len(far)}")


def row(name: str, m: dict, extra: str = "") -> str:
    return (f"| {name} | {100 * m['identity']:.0f}% | {100 * m['motion']:.0f}% | {100 * m['one_object']:.0f}% | "
            f"{100 * m['smooth']:.0f}% | {m['seam_ratio']:.2f} ({m['seam_ratio_late']:.2f}; "
            f"{'-' if math.isnan(m['seam_ratio_joints']) else format(m['seam_ratio_joints'], '.2f')}) | "
            f"{m['drift']:.1f} | {extra} |")


HEADER = ("| method | identity (1-s slices) | motion (segments) | one object (frames) | centre step <= 6 px "
          "| largest / median frame change (from frame 1 on; at joints) | background drift (1/255) | notes |\n"
          "|---|---|---|---|---|---|---|---|")

