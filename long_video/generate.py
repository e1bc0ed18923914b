"""``generate_long``: a storyboard in, a long clip out, window by window, without ComfyUI.

    from spacetime_video.long_video import generate_long_embedded
    clip = generate_long_embedded("4: a red circle moves right on a black background\\n"
                                  "4: a red circle moves left on a black background", seed=0)
    clip.frames          # [n, 64, 64, 3] in 0..1 (without on_frames; with it, frames stream out)

With ``on_frames`` every window's frames go to the caller as soon as they are decoded and are
not kept (e.g. ``nodes.video_file.VideoStream.write``: memory stays flat in clip length); with
``run_dir`` every finished window is checkpointed there and a second call with the same
settings goes on where the first stopped, to the same result bit for bit.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ..model.dit import WanDiT
from ..model.embedded import EmbeddedModel, load_embedded
from ..model.embedded import config as C
from ..model.prompt_expander import expand_prompt
from ..model.vae import WanVAE
from ..pipeline import sample_canvas
from ..samplers import flow_sigmas
from .storyboard import Segment, StoryboardError, check_fps, latent_length, parse_storyboard, plan_windows
from .timeline import Progress, TimelineRun, WindowSampler

ANCHOR_DEFAULT = 0.5
OVERLAP_DEFAULT = 2


@dataclass
class LongClip:
    frames: torch.Tensor | None     # [n, H, W, 3] in 0..1, or None when they were streamed to on_frames
    frame_count: int
    fps: float
    windows: int
    resumed: int                    # windows read back from checkpoints
    run_dir: Path | None


def _checked_size(patch: tuple[int, int, int], vae: WanVAE, width: int, height: int,
                  window: int) -> tuple[int, int, int, int]:
    st, sh, sw = vae.config.stride
    p = patch
    if width % (sw * p[2]) or height % (sh * p[1]) or width <= 0 or height <= 0:
        raise StoryboardError(f"{width}x{height} is not a valid size for this model: width and height must be "
                              f"positive multiples of {sw * p[2]} and {sh * p[1]}")
    if window < 1 + st or (window - 1) % st:
        raise StoryboardError(f"window {window} frames: use 1 + {st}k frames, at least {1 + st} (e.g. "
                              f"{1 + st * max(1, round((window - 1) / st))})")
    return (vae.config.z_dim, (window - 1) // st + 1, height // sh, width // sw)


def long_frames(storyboard: str, dit: WanDiT | None, vae: WanVAE, encode_text: Callable[[str], torch.Tensor] | None,
                *, width: int, height: int, window: int, fps: float = 16.0, seconds: float | None = None,
                overlap: int = OVERLAP_DEFAULT, steps: int = 50, guidance: float = 5.0, shift: float = 5.0,
                solver: str = "unipc", seed: int = 0, negative: str = "", anchor: float = ANCHOR_DEFAULT,
                blend: bool = False, continuity: str = "pixels", per_token: bool | None = None, speed: str = "off",
                run_dir: str | Path | None = None, progress: Progress | None = None, model_name: str = "",
                sample_window: WindowSampler | None = None, patch: tuple[int, int, int] | None = None,
                expand: str | None = None, start: torch.Tensor | None = None) -> TimelineRun:
    """The frames of :func:`generate_long` as an iterable of pieces ``[n, H, W, 3]`` (one per window,
    made when asked for: the caller pulls them into a video file), checked and set up first;
    its ``state`` counts what was made. Same arguments as :func:`generate_long`."""
    segments = expand_segments(parse_storyboard(storyboard, seconds), expand, seed)
    fps = check_fps(fps)
    if not (isinstance(anchor, (int, float)) and math.isfinite(anchor) and 0 <= anchor <= 1):
        raise StoryboardError(f"anchor {anchor!r}: the drift control strength is 0 (off) to 1 (match the first window)")
    if sample_window is None and (dit is None or encode_text is None):
        raise ValueError("generate_long needs a dit and encode_text, or a sample_window")
    shape = _checked_size(patch or dit.config.patch_size, vae, width, height, window)
    total = latent_length(segments, fps, vae.config.stride[0])
    windows = plan_windows(total, shape[1], overlap)
    if per_token is None:
        per_token = dit is not None and dit.config.model_type == "ti2v"
    settings = {"storyboard": [[s.seconds, s.prompt] for s in segments], "fps": fps, "size": [width, height],
                "window": window, "overlap": overlap, "steps": steps, "guidance": guidance, "shift": shift,
                "solver": solver, "seed": seed, "negative": negative, "anchor": anchor, "blend": blend,
                "continuity": continuity, "per_token": per_token, "speed": speed, "model": model_name,
                "start": None if start is None else _digest(start)}
    if sample_window is None:
        sample_window = _dit_sampler(dit, vae, segments, encode_text, negative, steps=steps, guidance=guidance,
                                     shift=shift, solver=solver, per_token=per_token, speed=speed)
    return TimelineRun(segments, fps, windows, shape, sample_window, vae, seed=seed, settings=settings,
                       run_dir=None if run_dir is None else Path(run_dir), continuity=continuity,
                       anchor_strength=anchor, blend=blend, progress=progress, start=start)


def _digest(frames: torch.Tensor) -> str:
    """A short fingerprint of start frames (a checkpoint of another start image is not reused)."""
    data = (frames.detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8).numpy().tobytes()
    return hashlib.sha256(data).hexdigest()[:16]


def generate_long(storyboard: str, dit: WanDiT | None, vae: WanVAE, encode_text: Callable[[str], torch.Tensor] | None,
                  *,
                  width: int, height: int, window: int, fps: float = 16.0, seconds: float | None = None,
                  overlap: int = OVERLAP_DEFAULT, steps: int = 50, guidance: float = 5.0, shift: float = 5.0,
                  solver: str = "unipc", seed: int = 0, negative: str = "", anchor: float = ANCHOR_DEFAULT,
                  blend: bool = False, continuity: str = "pixels", per_token: bool | None = None, speed: str = "off",
                  run_dir: str | Path | None = None, on_frames: Callable[[torch.Tensor], None] | None = None,
                  progress: Progress | None = None, model_name: str = "", sample_window: WindowSampler | None = None,
                  patch: tuple[int, int, int] | None = None, expand: str | None = None,
                  start: torch.Tensor | None = None) -> LongClip:
    """A clip from ``storyboard`` (``SECONDS: prompt`` lines; or one prompt and ``seconds``) with any
    T2V / TI2V Wan ``dit`` and its ``vae``; ``encode_text(text) -> [1, L, text_dim]``.

    ``window``: frames per window (the model's native length, ``1 + 4k``); ``overlap``: latent
    frames each window keeps from the one before (``1 + 4 (overlap - 1)`` video frames);
    ``continuity``: "pixels" or "latents" (``timeline.py``); ``anchor``: drift control strength in 0..1;
    ``blend``: mix the prompts of the segments a window's new frames lie in; ``expand``: a model
    family ("embedded", "wan2.1", "wan2.2") whose prompt expander (offline rules, seeded by
    ``seed`` + the segment's index, cached) turns each segment's prompt into a caption first,
    or None; ``start``: IMAGE frames ``[n, H, W, 3]`` the clip starts with (image to long video).
    Sampling options as
    :func:`pipeline.generate_latent`; the window ``i`` draws its noise from ``seed + i``.

    ``sample_window`` replaces the sampling of a window by ``dit`` (the ComfyUI node samples with
    ComfyUI's own sampler, so model patches apply); ``dit`` and ``encode_text`` may then be None
    and ``patch`` gives the model's patch size.
    """
    run = long_frames(storyboard, dit, vae, encode_text, width=width, height=height, window=window, fps=fps,
                      seconds=seconds, overlap=overlap, steps=steps, guidance=guidance, shift=shift, solver=solver,
                      seed=seed, negative=negative, anchor=anchor, blend=blend, continuity=continuity,
                      per_token=per_token, speed=speed, run_dir=run_dir, progress=progress, model_name=model_name,
                      sample_window=sample_window, patch=patch, expand=expand, start=start)
    pieces = []
    with torch.no_grad():
        for frames in run:
            if on_frames is not None:
                on_frames(frames)
            else:
                pieces.append(frames)
    return LongClip(torch.cat(pieces) if pieces else None, run.state.frames_out, run.fps, len(run.windows),
                    run.state.resumed, None if run_dir is None else Path(run_dir))


def expand_segments(segments: list[Segment], family: str | None, seed: int) -> list[Segment]:
    """Each segment's prompt through the prompt expander of ``family`` (None: unchanged)."""
    if not family:
        return segments
    return [Segment(s.seconds, expand_prompt(s.prompt, "t2v", seed + j, model_family=family))
            for j, s in enumerate(segments)]


def _dit_sampler(dit: WanDiT, vae: WanVAE, segments: list[Segment], encode_text: Callable[[str], torch.Tensor],
                 negative: str, *, steps: int, guidance: float, shift: float, solver: str, per_token: bool,
                 speed: str) -> WindowSampler:
    """A window sampled by ``dit`` with ``pipeline.sample_canvas``, under the segments' text."""
    contexts = [encode_text(s.prompt).float() for s in segments]
    uncond = encode_text(negative).float() if guidance != 1.0 else None
    sigmas = flow_sigmas(steps, shift)

    def sample_window(win, weights, noise, place):
        ctx = sum(w * contexts[j] for j, w in weights.items())
        kept = bool((place.mask == 0).any())
        z = sample_canvas(dit, ctx, uncond, noise=noise, sigmas=sigmas,
                          clean=vae.normalize(place.known) if kept else None, mask=place.mask if kept else None,
                          guidance=guidance, solver=solver, per_token=per_token, speed=speed)
        return vae.denormalize(z)

    return sample_window


def generate_long_embedded(storyboard: str, *, fps: float = 8.0, seconds: float | None = None,
                           overlap: int = OVERLAP_DEFAULT, steps: int = C.DEFAULT_STEPS,
                           guidance: float = C.LONG_GUIDANCE, seed: int = 0, anchor: float = ANCHOR_DEFAULT,
                           model: EmbeddedModel | None = None, **options: object) -> LongClip:
    """:func:`generate_long` with the embedded tiny model and its defaults (64x64, 17-frame windows,
    8 fps: a window is 2 s; guidance ``config.LONG_GUIDANCE``)."""
    m = model or load_embedded()
    return generate_long(storyboard, m.dit, m.vae, lambda text: m.text_encoder.encode([text]), width=C.SIZE,
                         height=C.SIZE, window=C.FRAMES, fps=fps, seconds=seconds, overlap=overlap, steps=steps,
                         guidance=guidance, shift=C.DEFAULT_SHIFT, seed=seed, anchor=anchor, per_token=True,
                         model_name="embedded", **options)
