"""Long Video: a storyboard to one long clip, window by window, streamed into a video file.

The node calls ``long_video.generate_long`` with a window sampler built on ComfyUI's own
machinery (the Spacetime guider and solvers, as the Sampler node), so any Wan MODEL works and
its patches (LoRAs, the step cache) apply. Every finished window is checkpointed in a run folder
under the output folder (``spacetime_runs/<key>``, the key derived from the settings): queue the
same graph again after an interrupt, a crash or an out-of-memory and it goes on from the first
missing window. The frames go straight into the MP4 as each window is decoded; the node returns
the written file as a ComfyUI VIDEO (native Save/Preview Video take it) and shows it.
"""
from __future__ import annotations

import itertools
import logging
from pathlib import Path

import comfy.model_management
import comfy.utils
import folder_paths
import torch
from comfy_api.latest import InputImpl, io, ui
from PIL import Image

from .. import samplers
from ..model import canvas
from ..long_video import CheckpointError, StoryboardError
from ..long_video.checkpoint import settings_key
from ..long_video.generate import ANCHOR_DEFAULT, OVERLAP_DEFAULT, expand_segments, long_frames
from ..long_video.storyboard import parse_storyboard
from ..long_video.timeline import CONTINUITY
from .embedded_nodes import TextEncoder, _conditioning
from .errors import SpacetimeNodeError, node_error
from .sampler import CLIP_VISION_HINT, _concat_channels, _needs_clip_vision, sample_latent
from .video_file import VideoWriteError, write_new_video
from .video_io import _prefix_problem
from .validation import SpacetimeNode

log = logging.getLogger("spacetime.nodes")

EXPAND = ("off", "embedded", "wan2.1", "wan2.2")
RUNS = "spacetime_runs"   # folder of run checkpoints inside ComfyUI's output folder
STORYBOARD_EXAMPLE = ("4: a red circle moves to the right on a black background\n"
                      "4: a red circle moves to the left on a black background")


def _progress_text(node_id):
    """text -> a line shown on the node (ComfyUI's progress text, which the front end draws under
    the node's widgets), sent to the client that queued the prompt only (as ComfyUI's progress: a
    broadcast would land on node ``node_id`` of every open page); a no-op without a server, a node
    id or a client."""
    try:
        from server import PromptServer
    except ImportError:
        return lambda text: None
    server = getattr(PromptServer, "instance", None)
    client = getattr(server, "client_id", None)
    if server is None or node_id is None or client is None:
        return lambda text: None
    return lambda text: server.send_progress_text(text, str(node_id), client)


def _encoder(text_encoder, clip):
    """text -> CONDITIONING tensor [1, L, D], from the embedded text encoder or a ComfyUI CLIP."""
    if text_encoder is not None:
        return lambda text: _conditioning(text_encoder, text)[0][0]
    return lambda text: clip.encode_from_tokens_scheduled(clip.tokenize(text))[0][0]


def _mix(tensors: list[torch.Tensor], weights: dict[int, float]) -> torch.Tensor:
    """The weighted sum of text conditionings, the shorter ones padded with zeros."""
    length = max(tensors[j].shape[1] for j in weights)
    out = None
    for j, w in weights.items():
        t = torch.nn.functional.pad(tensors[j].float(), (0, 0, 0, length - tensors[j].shape[1]))
        out = w * t if out is None else out + w * t
    return out


def _window_latent(vae, place, i2v: bool, seen) -> dict:
    """A window as the canvas LATENT the sampler takes: its known latents and noise mask, and for
    I2V models the image channels (the pixel canvas, grey where unknown) and the CLIP-vision view."""
    latent = {"samples": place.known, "noise_mask": place.mask}
    if i2v and place.pixels is not None:
        st = vae.wan.config.stride[0]
        latent["concat_latent_image"] = vae.encode(place.pixels)
        latent["concat_mask"] = canvas.concat_mask(place.flags, tuple(place.known.shape[-2:]), st)
    if seen is not None:
        latent["spacetime"] = {"clip_vision": [seen]}
    return latent


def _fingerprint(model, vae) -> str:
    """What identifies the weights in a run's settings (cheap: shapes and a few sums)."""
    inner = model.model.diffusion_model
    w = inner.patch_embedding.weight.detach()
    z = vae.wan.conv2.weight.detach()
    patches = sorted(str(k) for k in getattr(model, "patches", {}))
    return f"{type(inner).__name__}:{tuple(w.shape)}:{float(w.float().sum()):.6e}:{float(z.float().sum()):.6e}:" \
           f"{len(patches)}:{hash(tuple(patches)) & 0xffffffff:x}"


def _input_of(e: StoryboardError) -> str:
    """The input a storyboard/window error is about (its message starts with the value's name)."""
    text = str(e)
    for name in ("overlap", "window", "fps", "anchor", "seconds"):
        if text.startswith(name) or f" {name} " in text[:40]:
            return name
    return "width/height" if " is not a valid size" in text else "storyboard"


class SpacetimeLongVideo(SpacetimeNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SpacetimeLongVideo",
            display_name="Long Video from Storyboard (Spacetime)",
            category="Spacetime/long video",
            description="A long clip from a storyboard (one 'SECONDS: prompt' line per segment), made window by "
                        "window; every window continues the last one's frames, is checkpointed, and is written to "
                        "the video file as soon as it is done. Queue it again to resume after an interrupt.",
            inputs=[
                io.Model.Input("model", tooltip="any Wan model (Spacetime or native loader); its patches apply"),
                io.Vae.Input("vae", tooltip="the model family's VAE, loaded by a Spacetime loader"),
                io.String.Input("storyboard", multiline=True, default=STORYBOARD_EXAMPLE,
                                tooltip="one segment per line, 'SECONDS: prompt'; blank lines and # comments are "
                                        "skipped. A single prompt without seconds uses the `seconds` input"),
                io.String.Input("negative", multiline=True, default="", tooltip="what every window should not show"),
                io.Float.Input("fps", default=16.0, min=1.0, max=60.0, step=1.0,
                               tooltip="frames per second of the video; the storyboard's seconds count at this rate"),
                io.Float.Input("seconds", default=5.0, min=0.1, max=3600.0, step=0.1,
                               tooltip="length of a storyboard that is a single prompt without 'SECONDS:'"),
                io.Int.Input("width", default=832, min=16, max=4096, step=16, tooltip="pixels; a multiple of 16 (Wan 2.2 5B: 32)"),
                io.Int.Input("height", default=480, min=16, max=4096, step=16, tooltip="pixels; a multiple of 16 (Wan 2.2 5B: 32)"),
                io.Int.Input("window", default=81, min=5, max=1001, step=4,
                             tooltip="frames per window: the model's native length, 1 + 4k (Wan: 81; embedded: 17)"),
                io.Int.Input("overlap", default=OVERLAP_DEFAULT, min=1, max=250,
                             tooltip="latent frames each window keeps from the one before (1 + 4 (overlap - 1) "
                                     "video frames); less than the window's latent frames. 2: five frames, so "
                                     "the speed carries across joints; 1: the last frame alone (I2V "
                                     "families, whose image condition is one frame)"),
                io.Combo.Input("continuity", options=list(CONTINUITY), default=CONTINUITY[0],
                               tooltip="pixels: each window is a clip of its own that starts with the last frames "
                                       "(as extend forward); latents: one latent video decoded as one"),
                io.Float.Input("anchor", default=ANCHOR_DEFAULT, min=0.0, max=1.0, step=0.05,
                               tooltip="drift control: hold each window's colour statistics to the first window's "
                                       "(0 off, 1 matched exactly)"),
                io.Boolean.Input("blend", default=False,
                                 tooltip="a window that straddles two segments mixes both prompts in proportion"),
                io.Combo.Input("expand_prompts", options=list(EXPAND), default="off",
                               tooltip="turn each segment's prompt into a detailed caption for this model family "
                                       "first (the offline prompt expander, seeded, cached)"),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFF, control_after_generate=True,
                             tooltip="window i draws its noise from seed + i"),
                io.Int.Input("steps", default=30, min=1, max=1000, tooltip="sampling steps of every window"),
                io.Float.Input("cfg", default=5.0, min=0.0, max=100.0, step=0.1, round=0.01,
                               tooltip="guidance scale (Wan: 5; embedded: 2, lower than its single clips' 4)"),
                io.Combo.Input("solver", options=list(samplers.SOLVERS), default="unipc", tooltip="the solver of every window"),
                io.Float.Input("shift", default=5.0, min=0.1, max=100.0, step=0.1, tooltip="schedule shift (Wan: 5; embedded: 2)"),
                io.String.Input("filename_prefix", default="spacetime/long",
                                tooltip="the MP4's name inside the output folder; checkpoints go to spacetime_runs/"),
                TextEncoder.Input("text_encoder", optional=True, tooltip="the embedded model's text encoder"),
                io.Clip.Input("clip", optional=True, tooltip="the umT5 text encoder (CLIPLoader, type wan)"),
                io.Image.Input("image", optional=True,
                               tooltip="frames the clip starts with (image to long video; I2V models need one)"),
                io.ClipVision.Input("clip_vision", optional=True,
                                    tooltip="Wan 2.1 I2V: encodes each window's image condition (CLIPVisionLoader)"),
                io.Boolean.Input("reanchor", default=True, optional=True,
                                 tooltip="I2V: every window's CLIP-vision condition is the start image (holds the "
                                         "subject); off: the previous window's last frame"),
                io.Model.Input("low_noise_model", optional=True, tooltip="Wan 2.2 A14B: the low-noise expert, "
                                                                         "run after the high-noise one in every window"),
                io.Float.Input("boundary", default=samplers.WAN22_BOUNDARY["t2v"], min=0.0, max=1.0, step=0.005,
                               optional=True, tooltip="switch to the low-noise expert below this fraction of 1000 "
                                                      "timesteps"),
                io.Float.Input("low_noise_cfg", default=3.0, min=0.0, max=100.0, step=0.1, optional=True,
                               tooltip="guidance scale of the low-noise expert"),
            ],
            outputs=[io.Video.Output("video", display_name="video"),
                     io.String.Output("run_folder", display_name="run_folder",
                                      tooltip="the folder of this run's window checkpoints, under output/")],
            hidden=[io.Hidden.prompt, io.Hidden.extra_pnginfo, io.Hidden.unique_id],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, model, vae, storyboard, negative, fps, seconds, width, height, window, overlap, continuity,
                anchor, blend, expand_prompts, seed, steps, cfg, solver, shift, filename_prefix, text_encoder=None,
                clip=None, image=None, clip_vision=None, reanchor=True, low_noise_model=None,
                boundary=samplers.WAN22_BOUNDARY["t2v"], low_noise_cfg=3.0) -> io.NodeOutput:
        if text_encoder is None and clip is None:
            raise node_error(cls, "text_encoder/clip", "connect a text encoder: the embedded model's (its loader's "
                             "text_encoder output) or a CLIP (CLIPLoader, type wan)")
        if getattr(vae, "wan", None) is None:
            raise node_error(cls, "vae", "this node decodes with the Spacetime VAE: load the VAE with 'Load VAE "
                             "(Spacetime)' or the embedded loader")
        out_dir = folder_paths.get_output_directory()
        problem = _prefix_problem(filename_prefix, out_dir)
        if problem:
            raise node_error(cls, "filename_prefix", problem)
        expand = None if expand_prompts == "off" else expand_prompts
        try:
            segments = expand_segments(parse_storyboard(storyboard, seconds), expand, seed)
        except StoryboardError as e:
            raise node_error(cls, "storyboard", str(e)) from None
        encode = _encoder(text_encoder, clip)
        conds = [encode(s.prompt) for s in segments]
        uncond = encode(negative)
        sigmas = samplers.flow_sigmas(steps, shift)
        pbar = comfy.utils.ProgressBar(steps)
        state = {"window": 0, "windows": 1}                    # progress: windows done, windows in all
        say = _progress_text(cls.hidden.unique_id)
        i2v = _concat_channels(model) > 0
        if i2v and (image is None or continuity != "pixels"):
            raise node_error(cls, "image" if image is None else "continuity",
                             "an I2V model makes every window from an image: connect the start `image`, and keep "
                             "continuity 'pixels' (each window's image is the previous window's last frame)")
        if clip_vision is None and _needs_clip_vision(model):
            raise node_error(cls, "clip_vision", CLIP_VISION_HINT)
        start = None if image is None else image[..., :3].float().cpu()
        if start is not None and tuple(start.shape[1:3]) != (height, width):
            raise node_error(cls, "image", f"the image is {start.shape[2]}x{start.shape[1]} but the video is "
                             f"{width}x{height}: resize it (e.g. Upscale Image) or set width/height to its size")
        see = (lambda frame: clip_vision.encode_image(frame[None], crop=False)) if clip_vision is not None else None
        reference = see(start[0]) if see is not None and start is not None and reanchor else None

        def sample_window(win, weights, noise, place):
            seen = None
            if see is not None and place.flags is not None and bool(place.flags.any()):
                seen = reference if reference is not None else see(place.pixels[place.flags][-1])
            latent = _window_latent(vae, place, i2v, seen)

            def step(i, *_):
                comfy.model_management.throw_exception_if_processing_interrupted()
                pbar.update_absolute(win.index * steps + i + 1, state["windows"] * steps)
                say(f"window {win.index + 1} of {state['windows']}: step {i + 1} of {steps}")

            return sample_latent(model, [[_mix(conds, weights), {}]], [[uncond, {}]], latent, latent["samples"], noise,
                                 sigmas, seed=seed, cfg=cfg, solver=solver, low_noise_model=low_noise_model,
                                 boundary=boundary, low_noise_cfg=low_noise_cfg, callback=step,
                                 name=f"SpacetimeLongVideo window {win.index + 1}")

        def progress(done, total):
            state["window"], state["windows"] = done, total
            log.info("SpacetimeLongVideo: window %d of %d done", done, total)
            resumed = run.state.resumed        # called while ``run`` (below) is iterated
            say(f"{done} of {total} windows done" + (f", {resumed} read back from checkpoints" if resumed else ""))

        inner = model.model.diffusion_model
        settings_name = _fingerprint(model, vae)
        # every input that changes the result names the run folder (the file name does not): the
        # same graph queued again finds its checkpoints, any other setting starts a folder of its own
        key = dict(model=settings_name, storyboard=storyboard, negative=negative, fps=fps, seconds=seconds,
                   width=width, height=height, window=window, overlap=overlap, continuity=continuity, anchor=anchor,
                   blend=blend, expand=expand, seed=seed, steps=steps, cfg=cfg, solver=solver, shift=shift,
                   image=None if start is None else float(start.double().sum()), clip_vision=clip_vision is not None,
                   reanchor=reanchor, low_noise=None if low_noise_model is None else _fingerprint(low_noise_model, vae),
                   boundary=boundary, low_noise_cfg=low_noise_cfg)
        run_dir = Path(out_dir) / RUNS / settings_key(key)
        try:
            run = long_frames(storyboard, None, vae.wan, None, width=width, height=height, window=window, fps=fps,
                              seconds=seconds, overlap=overlap, steps=steps, guidance=cfg, shift=shift, solver=solver,
                              seed=seed, negative=negative, anchor=anchor, blend=blend, continuity=continuity,
                              run_dir=run_dir, progress=progress, model_name=settings_name,
                              sample_window=sample_window, patch=tuple(inner.patch_embedding.kernel_size),
                              expand=expand, start=start)
        except StoryboardError as e:
            raise node_error(cls, _input_of(e), str(e)) from None
        folder, name, counter, subfolder, _ = folder_paths.get_save_image_path(filename_prefix, out_dir, width, height)
        metadata = {"storyboard": storyboard, "seed": seed, "run_folder": f"{RUNS}/{run_dir.name}"}
        if cls.hidden.prompt is not None:
            metadata["prompt"] = cls.hidden.prompt
        names = (f"{name}_{c:05}_.mp4" for c in itertools.count(counter))
        try:
            with torch.no_grad():
                path = write_new_video(folder, names, _previewed(run, pbar, steps, state), fps, metadata)
        except VideoWriteError as e:
            raise node_error(cls, "filename_prefix", f"{e}. The finished windows are kept in {RUNS}/{run_dir.name}: "
                             "free some disk space and queue it again to resume") from None
        except CheckpointError as e:       # a checkpoint that cannot be used: nothing is deleted
            raise SpacetimeNodeError(f"SpacetimeLongVideo: {e} (in {RUNS}/)") from None
        st = run.state
        n = state["windows"]
        say(f"done: {n} window{'s' if n != 1 else ''} ({st.resumed} read back from checkpoints), {st.frames_out} "
            f"frames in {path.name}")
        video = InputImpl.VideoFromFile(str(path))
        saved = ui.SavedResult(path.name, subfolder, io.FolderType.output)
        return io.NodeOutput(video, f"{RUNS}/{run_dir.name}", ui=ui.PreviewVideo([saved]))


def _previewed(run, pbar, steps: int, state: dict):
    """The run's frame pieces, each shown as the node's live preview (its last frame) on the way."""
    for frames in run:
        last = Image.fromarray((frames[-1].clamp(0, 1) * 255).byte().cpu().numpy())
        pbar.update_absolute(state["window"] * steps, max(1, state["windows"]) * steps, ("JPEG", last, 512))
        yield frames


NODES = [SpacetimeLongVideo]
