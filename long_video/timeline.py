"""A long clip, window by window: the loop that reads like a sampling loop.

Each window: place the end of the clip so far on the canvas as known frames (exactly the frames
the previous window made), sample the rest under the storyboard's prompt, checkpoint the
window's latent (``checkpoint.py``), decode, hold the new frames to the first window's
statistics (``drift.py``), and hand them straight to the caller (a video file) instead of
piling them up in memory. What crosses windows is :class:`Timeline`; on resume it is rebuilt
from the checkpoints.

Two ways to continue a window (``continuity``):

- ``"pixels"`` (the default): the known frames are the previous window's last ``1 + 4 (k - 1)``
  video frames, encoded with the window as a clip of its own (the canvas, as "extend forward"
  does): the model sees a window exactly as it was trained, a first frame and then groups of
  four. Each window is decoded on its own and its new frames are appended.
- ``"latents"``: the whole clip is one latent video; a window's known frames are the last ``k``
  latent frames of the timeline, and the new latent frames are decoded continuing the VAE's
  causal cache, so the joint is decoded as one video. The model sees a window whose first
  latent frame is a group of four, which it was not trained on: on the embedded model this
  measured worse (bench/RESULTS.md), so it is the choice for models trained on such windows.

How the known frames act depends on the model (the canvas' two rules): Wan 2.2 TI2V and the
embedded model see them clean with timestep 0 (per-token timesteps); Wan 2.1 T2V sees them
re-noised to each step's sigma with the window's own noise, and its output there is replaced
by them.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch

from ..model import canvas
from ..model.vae import WanVAE
from .checkpoint import finished_windows, save_window
from .drift import Anchor, hold_to_anchor
from .storyboard import Segment, Window, window_weights

log = logging.getLogger("spacetime.long_video")



@dataclass(frozen=True)
class WindowCanvas:
    """What a window keeps: ``known`` raw latent ``[1, C, W, h, w]`` (zeros where not known) and
    ``mask`` ``[1, 1, W, h, w]`` (ComfyUI's noise mask: 1 = generate, 0 = keep); with pixels
    continuity also the window's pixel canvas ``[F, H, W, 3]`` and its per-frame known ``flags``
    (what an I2V model's image channels and CLIP-vision input are made from)."""

    known: torch.Tensor
    mask: torch.Tensor
    pixels: torch.Tensor | None = None
    flags: torch.Tensor | None = None


# (window, segment weights, noise [1, C, W, h, w], canvas) -> raw latent [1, C, W, h, w]
WindowSampler = Callable[[Window, dict[int, float], torch.Tensor, WindowCanvas], torch.Tensor]
# (windows finished, windows in all) after each window, and at the start
Progress = Callable[[int, int], None]


@dataclass
class Timeline:
    """What one window hands to the next (and what the checkpoints rebuild on resume)."""

    keep: int                                 # what to remember: latent frames, or video frames
    tail: torch.Tensor | None = None          # the clip's last raw latent frames [1, C, t, h, w] or frames [n, H, W, 3]
    anchor: Anchor | None = None              # the first window's statistics
    resumed: int = 0                          # windows read back from checkpoints
    frames_out: int = 0                       # video frames handed out so far

    def add(self, new: torch.Tensor, dim: int) -> None:
        self.tail = new if self.tail is None else torch.cat([self.tail, new], dim=dim)
        self.tail = self.tail.narrow(dim, max(0, self.tail.shape[dim] - self.keep),
                                     min(self.keep, self.tail.shape[dim])).clone()


def known_count(win: Window) -> int:
    """Latent frames window ``win`` keeps from before."""
    return win.known_end - win.start


def latent_canvas(win: Window, tail: torch.Tensor | None, shape: tuple[int, ...]) -> WindowCanvas:
    """(known raw latent, noise mask) of window ``win`` on one latent timeline: its first ``k``
    latent frames are the timeline's last ones, kept (mask 0); the rest is generated (mask 1)."""
    c, t, h, w = shape
    known = torch.zeros(1, c, t, h, w)
    mask = torch.ones(1, 1, t, h, w)
    k = known_count(win)
    if k:
        known[:, :, :k] = tail[:, :, -k:]
        mask[:, :, :k] = 0
    return WindowCanvas(known, mask)


def pixel_canvas(frames: torch.Tensor | None, vae: WanVAE, shape: tuple[int, ...]) -> WindowCanvas:
    """A window as a clip of its own with ``frames`` (IMAGE ``[n, H, W, 3]``: the last frames of
    the clip so far, or the start frames of the first window) at its start, encoded with the canvas."""
    c, t, h, w = shape
    st, sh, sw = vae.config.stride
    length = 1 + st * (t - 1)
    pixels, flags = canvas.new_pixel_canvas(length, h * sh, w * sw)
    if frames is None:
        return WindowCanvas(torch.zeros(1, c, t, h, w), canvas.noise_mask(flags, (h, w), st), pixels, flags)
    canvas.place(pixels, flags, frames, 0)
    video = canvas.fill_lead_in(pixels, flags).permute(3, 0, 1, 2).unsqueeze(0) * 2 - 1
    known = vae.encode(video.to(vae.device, vae.dtype)).float().cpu()
    return WindowCanvas(known, canvas.noise_mask(flags, (h, w), st), pixels, flags)


def window_noise(seed: int, win: Window, shape: tuple[int, ...]) -> torch.Tensor:
    """The window's own noise, drawn on the CPU from ``seed + index`` (a resumed run draws the same)."""
    return torch.randn((1, *shape), generator=torch.Generator().manual_seed(seed + win.index))


def to_image(video: torch.Tensor) -> torch.Tensor:
    """VAE output ``[1, 3, n, H, W]`` in -1..1 -> ComfyUI IMAGE ``[n, H, W, 3]`` in 0..1 (float32)."""
    return ((video[0].float().permute(1, 2, 3, 0) + 1) / 2).clamp(0, 1)


CONTINUITY = ("pixels", "latents")


class TimelineRun:
    """The clip's frames, window by window, as an iterable of IMAGE pieces ``[n, H, W, 3]``;
    ``state`` is its :class:`Timeline`.

    ``shape`` is one window's latent ``(C, W, h, w)``. Options: ``seed``, ``settings`` (what the
    checkpoints record), ``run_dir`` (None: no checkpoints), ``continuity``, ``anchor_strength``,
    ``blend``, ``progress``, ``start`` (IMAGE frames the clip starts with, kept in the first
    window: image to long video). Finished windows found in ``run_dir`` are read back instead of
    sampled (and decoded again, so the output is whole); every window sampled is saved there
    before its frames are handed out.
    """

    def __init__(self, segments: list[Segment], fps: float, windows: list[Window], shape: tuple[int, int, int, int],
                 sample_window: WindowSampler, vae: WanVAE, *, seed: int, settings: dict,
                 run_dir: Path | None = None, continuity: str = "pixels", anchor_strength: float = 0.5,
                 blend: bool = False, progress: Progress | None = None, start: torch.Tensor | None = None) -> None:
        if continuity not in CONTINUITY:
            raise ValueError(f"continuity {continuity!r}: choose one of {', '.join(CONTINUITY)}")
        self.segments, self.fps, self.windows, self.shape = segments, fps, windows, shape
        self.sample_window, self.vae, self.seed, self.settings = sample_window, vae, seed, settings
        self.run_dir, self.continuity, self.strength, self.blend = run_dir, continuity, anchor_strength, blend
        self.progress, self.start = progress, start
        st = vae.config.stride[0]
        self.pixels = continuity == "pixels"
        self.state = Timeline(keep=1 + st * (shape[1] - 2) if self.pixels else shape[1] - 1)

    def _sample(self, win: Window) -> torch.Tensor:
        """The window's raw latent ``[1, C, end - start, h, w]``, sampled."""
        shape = (*self.shape[:1], win.end - win.start, *self.shape[2:])
        k, st = known_count(win), self.vae.config.stride[0]
        if win.index == 0:
            place = pixel_canvas(self.start, self.vae, shape)
            if not self.pixels:               # one latent timeline: the start frames' latents, nothing else
                place = WindowCanvas(place.known, place.mask)
        elif self.pixels:
            place = pixel_canvas(self.state.tail[-(1 + st * (k - 1)):], self.vae, shape)
        else:
            place = latent_canvas(win, self.state.tail, shape)
        weights = window_weights(self.segments, self.fps, win, self.blend)
        out = self.sample_window(win, weights, window_noise(self.seed, win, shape), place).float().cpu()
        # the kept frames are the known ones exactly (a sampler's way through its normalised space
        # rounds them in the last bit)
        return torch.where(place.mask.expand_as(out) == 0, place.known, out)

    def __iter__(self) -> Iterator[torch.Tensor]:
        state, st = self.state, self.vae.config.stride[0]
        session = None if self.pixels else self.vae.decode_session()
        saved = finished_windows(self.run_dir, self.windows, self.settings)
        if self.progress:
            self.progress(0, len(self.windows))
        for win in self.windows:
            latent = next(saved, None)
            if latent is not None:
                state.resumed += 1
                log.info("long video: window %d of %d read back from its checkpoint", win.index + 1, len(self.windows))
            else:
                saved = iter(())              # after the first missing window, every later one is made anew
                latent = self._sample(win)
                if self.run_dir is not None:
                    save_window(self.run_dir, win, latent, self.settings)
            k = known_count(win)
            if self.pixels:                   # decode the window alone; its new frames follow the known ones
                frames = to_image(self.vae.decode(latent.to(self.vae.dtype)))[(1 + st * (k - 1)) if k else 0:]
                if state.anchor is None:
                    state.anchor = Anchor.of(frames, -1)
                else:
                    frames = hold_to_anchor(frames, state.anchor, self.strength).clamp(0, 1)
                state.add(frames, 0)
            else:                             # one latent timeline, decoded as one video
                new = latent[:, :, k:]
                if state.anchor is None:
                    state.anchor = Anchor.of(new, 1)
                else:
                    new = hold_to_anchor(new, state.anchor, self.strength)
                state.add(new, 2)
                frames = to_image(session.decode(new))
            state.frames_out += frames.shape[0]
            yield frames
            if self.progress:
                self.progress(win.index + 1, len(self.windows))
