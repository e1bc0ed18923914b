"""A storyboard and the windows that cover it on one latent timeline.

A storyboard is text, one segment per line, ``SECONDS: prompt`` (``4: a red circle moves to the
right on a black background``); blank lines and ``#`` comments are skipped. The clip is as long
as the segments together, at the chosen ``fps``.

The clip is one latent video ``[C, T, h, w]`` (T latent frames for ``1 + 4 (T - 1)`` frames,
as the causal VAE encodes a whole clip), made window by window: a window is the model's native
length (``W`` latent frames); each window after the first starts ``overlap`` latent frames
before the end of the one before and keeps those frames as they are (they are its known
frames), so ``W - overlap`` latent frames are new per window. The last window is moved back to
end with the clip (it then keeps more than ``overlap`` frames).

A window is conditioned by the segment in which its first new frame lies, so a segment's frames
are never made under the next segment's prompt; a change of prompt starts with the first window
that begins in the new segment (bench/RESULTS.md compares it with switching at the window that
holds most frames of the new segment). ``blend`` instead mixes the text conditionings of the
segments its new frames lie in, in proportion.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

MAX_SECONDS = 3600.0       # a storyboard longer than an hour is refused
FPS_RANGE = (1.0, 60.0)

_LINE = re.compile(r"^\s*([^:]*?)\s*:\s*(.*?)\s*$")


class StoryboardError(ValueError):
    """A storyboard or window plan that cannot be used; the message names the line or value."""


@dataclass(frozen=True)
class Segment:
    seconds: float
    prompt: str


@dataclass(frozen=True)
class Window:
    """Latent frames ``[start, end)`` of the timeline; ``[start, known_end)`` are kept from before."""

    index: int
    start: int
    end: int
    known_end: int


def parse_storyboard(text: str, seconds: float | None = None) -> list[Segment]:
    """The segments of ``text``. A text with no ``SECONDS:`` line is one prompt: it needs
    ``seconds`` (a storyboard of one line)."""
    if not isinstance(text, str) or not text.strip():
        raise StoryboardError("the storyboard is empty: write one segment per line, e.g. "
                              "'4: a red circle moves to the right on a black background'")
    lines = [(i, line.strip()) for i, line in enumerate(text.splitlines(), 1)]
    lines = [(i, line) for i, line in lines if line and not line.startswith("#")]
    if seconds is not None and not any(_LINE.match(line) and _number(_LINE.match(line)[1]) is not None
                                       for _, line in lines):
        if not lines:
            raise StoryboardError("the storyboard holds only comments: write a prompt")
        return _checked([Segment(_seconds(seconds, "seconds"), " ".join(line for _, line in lines))])
    segments = []
    for i, line in lines:
        m = _LINE.match(line)
        value = _number(m[1]) if m else None
        if value is None:
            raise StoryboardError(f"storyboard line {i} ({_short(line)!r}) has no duration: write "
                                  "'SECONDS: prompt', e.g. '4: a red circle moves to the right'")
        if not (math.isfinite(value) and value > 0):
            raise StoryboardError(f"storyboard line {i}: the duration {m[1]!r} must be a positive number of seconds")
        if not m[2]:
            raise StoryboardError(f"storyboard line {i} has a duration but no prompt after the colon")
        segments.append(Segment(value, m[2]))
    return _checked(segments)


def _number(text: str) -> float | None:
    text = text.strip().removesuffix("s").strip()
    try:
        return float(text)
    except ValueError:
        return None


def _seconds(value: float, name: str) -> float:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise StoryboardError(f"{name} must be a positive number, got {value!r}")
    return float(value)


def _short(line: str) -> str:
    return line if len(line) <= 60 else line[:57] + "..."


def _checked(segments: list[Segment]) -> list[Segment]:
    total = sum(s.seconds for s in segments)
    if total > MAX_SECONDS:
        raise StoryboardError(f"the storyboard lasts {total:g} s; at most {MAX_SECONDS:g} s is allowed")
    return segments


def check_fps(fps: float) -> float:
    lo, hi = FPS_RANGE
    if not (isinstance(fps, (int, float)) and math.isfinite(fps) and lo <= fps <= hi):
        raise StoryboardError(f"fps {fps!r} is not usable: choose {lo:g} to {hi:g} frames per second")
    return float(fps)


def latent_length(segments: list[Segment], fps: float, stride_t: int = 4) -> int:
    """Latent frames of the clip: its ``fps * seconds`` frames rounded up to ``1 + stride_t k``."""
    frames = max(1, round(check_fps(fps) * sum(s.seconds for s in segments)))
    return 1 + math.ceil((frames - 1) / stride_t)


def plan_windows(total: int, window: int, overlap: int) -> list[Window]:
    """Windows of ``window`` latent frames over ``total``, each keeping ``overlap`` from before."""
    if window < 2:
        raise StoryboardError(f"a window of {window} latent frame(s) is too short: at least 2")
    if not 1 <= overlap < window:
        raise StoryboardError(f"overlap {overlap} must be 1 to {window - 1} latent frames (less than the "
                              f"window of {window})")
    if total <= window:
        return [Window(0, 0, total, 0)]
    windows, end = [Window(0, 0, window, 0)], window
    while end < total:
        start = min(end - overlap, total - window)
        windows.append(Window(len(windows), start, start + window, end))
        end = start + window
    return windows


def segment_ends(segments: list[Segment], fps: float) -> list[float]:
    """Where each segment ends (exclusive), in frames of the clip."""
    ends, t = [], 0.0
    for s in segments:
        t += s.seconds
        ends.append(t * fps)
    return ends


def window_weights(segments: list[Segment], fps: float, win: Window, blend: bool,
                   stride_t: int = 4) -> dict[int, float]:
    """Segment index -> weight of its text conditioning in window ``win`` (weights sum to 1)."""
    ends = segment_ends(segments, fps)

    def segment_of(latent: int) -> int:   # by the last frame the latent frame holds: 0, then 4 l
        return next((j for j, e in enumerate(ends) if stride_t * latent < e), len(segments) - 1)

    frames = range(win.known_end, win.end)
    weights: dict[int, float] = {}
    for f in frames:
        j = segment_of(f)
        weights[j] = weights.get(j, 0.0) + 1.0 / len(frames)
    if blend:
        return weights
    return {segment_of(win.known_end): 1.0}
