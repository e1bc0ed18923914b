"""The canvas: placing known frames on a latent video before sampling (plain PyTorch).

Every Sora-style capability is a placement of known frames (Brooks et al., "Video generation
models as world simulators", OpenAI 2024): none (text-to-video), frame 0 (image-to-video), the
last frames of a clip at the start (extend forward), its first frames at the end (extend
backward), both ends (connect, loop). This module holds the arithmetic of that placement:

* sizes of a canvas (the rules and messages are ``model/sizes.py``), snapped or checked;
* the pixel canvas: ``[T, H, W, 3]`` frames in 0..1, mid-grey where unknown, plus a per-frame
  "known" flag; the kept latents are the whole canvas encoded at once (:func:`known_latents`),
  so the causal VAE sees the frames in their true order (as ComfyUI's
  ``WanFirstLastFrameToVideo`` does), with the unknown frames before a known run first filled
  with that run's first frame (a still lead-in), so that a latent whose last frames are known
  (e.g. one end image) is still a faithful, keepable latent;
* masks in ComfyUI's convention (``noise_mask``: 1 = generate, 0 = keep), per latent frame:
  latent 0 holds frame 0, latent ``t >= 1`` holds frames ``4t-3 .. 4t``, and it is known when
  its known frames are a non-empty suffix of its group (the rest is the lead-in);
* the 4-channel concat mask of Wan 2.1 I2V / FLF2V (frame 0 counted four times, as the
  official ``wan/image2video.py`` builds ``msk``);
* what the model sees of the known latents at each step: clean, with per-token timestep 0
  (models trained that way: Wan 2.2 TI2V, whose official ``wan/textimage2video.py`` gives
  first-frame tokens timestep 0, and the embedded model), or re-noised to the step's sigma
  (Wan 2.1, as ComfyUI's inpainting sampler does).

The ComfyUI nodes and ``pipeline.generate`` both build their canvas with these functions.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from .sizes import frames_problem, nearest_length, nearest_multiple, side_problem

GREY = 0.5  # the value of unknown pixels (0 in the VAE's [-1, 1] input range)


class CanvasError(ValueError):
    """A placement that does not fit the canvas; the message names the values and the fix."""


# --- sizes -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class CanvasSize:
    """A valid canvas: pixel size and the latent grid it maps to."""
    width: int
    height: int
    length: int
    stride: tuple[int, int, int]   # VAE (t, h, w)
    patch: tuple[int, int, int]    # DiT (t, h, w)
    channels: int                  # latent channels

    @property
    def latent_shape(self) -> tuple[int, int, int, int]:
        """``(C, T', H', W')`` of the raw latent."""
        st, sh, sw = self.stride
        return (self.channels, (self.length - 1) // st + 1, self.height // sh, self.width // sw)

    @property
    def grid(self) -> tuple[int, int, int]:
        """The patch grid ``(T', H'/p, W'/p)``."""
        _, t, h, w = self.latent_shape
        return (t // self.patch[0], h // self.patch[1], w // self.patch[2])

    @property
    def tokens(self) -> int:
        return math.prod(self.grid)


def snap_canvas(width: int, height: int, length: int, stride: tuple[int, int, int] = (4, 8, 8),
                patch: tuple[int, int, int] = (1, 2, 2), channels: int = 16) -> tuple[CanvasSize, list[str]]:
    """The nearest valid canvas and one note per value that had to change."""
    mult_h, mult_w = stride[1] * patch[1], stride[2] * patch[2]
    new = (nearest_multiple(width, mult_w), nearest_multiple(height, mult_h),
           nearest_length(length, stride[0]))
    notes = []
    for name, old, value, rule in (("width", width, new[0], f"a multiple of {mult_w}"),
                                   ("height", height, new[1], f"a multiple of {mult_h}"),
                                   ("length", length, new[2], f"{stride[0]}k+1 frames")):
        if old != value:
            notes.append(f"{name} {old} -> {value} (must be {rule})")
    return CanvasSize(*new, stride=tuple(stride), patch=tuple(patch), channels=channels), notes


def check_canvas(width: int, height: int, length: int, stride: tuple[int, int, int] = (4, 8, 8),
                 patch: tuple[int, int, int] = (1, 2, 2)) -> list[str]:
    """Problems with an exact size (empty when valid), each naming the nearest valid values."""
    why = "the VAE stride times the DiT patch"
    problems = [side_problem("width", width, stride[2] * patch[2], why),
                side_problem("height", height, stride[1] * patch[1], why),
                frames_problem(length, stride[0])]
    return [p for p in problems if p]


def estimate_peak_bytes(size: CanvasSize, dim: int, layers: int, ffn_dim: int, weight_bytes: float,
                        act_bytes: int = 2) -> int:
    """A rough peak-memory estimate of one DiT forward pass with CFG batch 2: the weights plus
    the largest activations (the FFN hidden state and q/k/v of the full sequence).

    Weights: ``layers * (4*dim^2 (self-attn) + 4*dim^2 (cross-attn) + 2*dim*ffn_dim)``.
    """
    params = layers * (8 * dim * dim + 2 * dim * ffn_dim)
    acts = 2 * size.tokens * (ffn_dim + 6 * dim) * act_bytes
    return int(params * weight_bytes + acts)


# --- frames and masks ---------------------------------------------------------------------------

def new_pixel_canvas(length: int, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A grey pixel canvas ``[T, H, W, 3]`` and its known flags ``[T]`` (all False)."""
    return torch.full((length, height, width, 3), GREY), torch.zeros(length, dtype=torch.bool)


def start_frame(position: str | int, length: int, count: int) -> int:
    """The canvas frame where ``count`` frames placed at ``position`` begin: ``"start"`` (0),
    ``"end"`` (the last ``count`` frames) or a frame index."""
    if position == "start":
        return 0
    if position == "end":
        return length - count
    if isinstance(position, int) and not isinstance(position, bool):
        return position
    raise CanvasError(f"position {position!r}: use 'start', 'end' or a frame index")


def place(pixels: torch.Tensor, known: torch.Tensor, frames: torch.Tensor, at: int) -> None:
    """Write ``frames`` ``[N, H, W, 3]`` into the canvas at frame ``at`` (in place); checks that
    the frames fit in time and match the canvas size."""
    length, height, width = pixels.shape[:3]
    n = frames.shape[0]
    if tuple(frames.shape[1:3]) != (height, width):
        raise CanvasError(f"frames are {frames.shape[2]}x{frames.shape[1]} (WxH) but the canvas is "
                          f"{width}x{height}: resize them first (e.g. with an Upscale Image node)")
    if at < 0 or at + n > length:
        raise CanvasError(f"{n} frame(s) at frame {at} do not fit in a {length}-frame canvas: "
                          f"valid start frames are 0..{length - n}" if n <= length else
                          f"{n} frames are more than the canvas length {length}")
    pixels[at:at + n] = frames[..., :3].to(pixels.dtype)
    known[at:at + n] = True


def latent_known(known: torch.Tensor, stride_t: int = 4) -> torch.Tensor:
    """Per-latent-frame known flags ``[T']`` from per-frame flags ``[T]``: latent 0 when frame
    0 is known; a later latent when its group of ``stride_t`` frames ends in known frames and
    has no unknown frame after a known one (unknown, ..., known, known: the lead-in case)."""
    group = known[1:].reshape(-1, stride_t)  # (T'-1, 4)
    suffix = group[:, -1] & (group[:, 1:] >= group[:, :-1]).all(dim=1)  # non-decreasing, ends True
    return torch.cat([known[:1], suffix])


def fill_lead_in(pixels: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    """A copy of the canvas where each unknown frame before a known one shows the next known
    frame (a still lead-in); unknown frames after the last known one stay as they are."""
    out = pixels.clone()
    nxt = None
    for t in range(len(known) - 1, -1, -1):  # walk backwards, remembering the next known frame
        if known[t]:
            nxt = t
        elif nxt is not None:
            out[t] = pixels[nxt]
    return out


def known_latents(encode: Callable[[torch.Tensor], torch.Tensor], pixels: torch.Tensor,
                  known: torch.Tensor) -> torch.Tensor:
    """The latents to keep (where :func:`noise_mask` is 0): ``encode`` (a VAE taking the pixel
    canvas ``[T, H, W, 3]`` in 0..1, returning ``[1, C, T', h, w]``) of the canvas with its
    lead-ins filled. The whole canvas is encoded at once, so the causal VAE sees the frames in
    their true order."""
    return encode(fill_lead_in(pixels, known))


def noise_mask(known: torch.Tensor, latent_hw: tuple[int, int], stride_t: int = 4) -> torch.Tensor:
    """ComfyUI's ``noise_mask`` ``[1, 1, T', H', W']``: 0 where the latent is known, 1 elsewhere."""
    m = (~latent_known(known, stride_t)).float()  # (T',)
    return m.view(1, 1, -1, 1, 1).expand(1, 1, m.shape[0], *latent_hw).contiguous()


def concat_mask(known: torch.Tensor, latent_hw: tuple[int, int], stride_t: int = 4) -> torch.Tensor:
    """The Wan 2.1 I2V/FLF2V mask ``[1, stride_t, T', H', W']`` in ComfyUI's ``concat_mask``
    convention (0 = known): frame 0 repeated ``stride_t`` times, then one channel per frame."""
    m = (~known).float()
    m = torch.cat([m[:1].repeat(stride_t), m[1:]])  # (4*T',)
    m = m.view(-1, stride_t).transpose(0, 1)  # (4, T')
    return m.view(1, stride_t, -1, 1, 1).expand(1, stride_t, m.shape[1], *latent_hw).contiguous()


def replace_known(x: torch.Tensor, known_latent: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Latent replacement: keep ``x`` where ``mask`` is 1, the known latents where it is 0."""
    return x * mask + known_latent * (1 - mask)


def known_input(x: torch.Tensor, known_latent: torch.Tensor, mask: torch.Tensor, sigma: float | None = None,
                noise: torch.Tensor | None = None) -> torch.Tensor:
    """The model input with the known latents imposed: clean (``noise`` None; per-token models,
    which then get timestep 0 there, see :func:`token_timesteps`) or re-noised to ``sigma``
    with the run's own ``noise`` (``(1 - sigma)·known + sigma·noise``; Wan 2.1)."""
    if noise is not None:
        known_latent = torch.lerp(known_latent.to(x.dtype), noise.to(x.dtype), float(sigma))
    return replace_known(x, known_latent.to(x.dtype), mask)


def token_timesteps(mask: torch.Tensor, timestep: torch.Tensor,
                    patch: tuple[int, int, int] = (1, 2, 2)) -> torch.Tensor:
    """Per-token timesteps ``[B, tokens]`` from a denoise mask ``[B or 1, C or 1, T', H', W']``:
    each token's timestep is ``timestep`` times the mean mask over its patch, so known tokens
    (mask 0) get timestep 0. Tokens are ordered ``(t, h, w)``, as the DiT flattens them."""
    b = timestep.shape[0]
    m = mask.float().mean(dim=1, keepdim=True)  # (B, 1, T', H', W')
    m = F.avg_pool3d(m, kernel_size=patch, stride=patch).flatten(1)  # (B, tokens)
    m = m.expand(b, -1) if m.shape[0] == 1 else m
    return m * timestep.view(b, 1).to(m.dtype)


def clip_end(frames: torch.Tensor, count: int, which: str) -> torch.Tensor:
    """The first or last ``count`` frames of a clip, with a clear error when it is shorter."""
    n = frames.shape[0]
    if count < 1 or count > n:
        raise CanvasError(f"asked for the {which} {count} frame(s) of a {n}-frame clip: "
                          f"choose 1..{n} frames")
    return frames[:count] if which == "first" else frames[n - count:]
