"""The canvas nodes: an empty latent video of a valid size (Patchify), and placing known frames
on it (chainable). The maths is in ``model/canvas.py``; these nodes only move data.

LATENT keys: ``samples`` (raw latent), ``noise_mask`` (ComfyUI's own key: 1 = generate, 0 =
keep, so native samplers re-impose the known latents too), ``concat_latent_image`` /
``concat_mask`` (Wan 2.1 I2V/FLF2V channels; our Sampler hands them to the model), and
``spacetime`` (canvas size, the pixel canvas, CLIP-vision outputs of placed images).
"""
from __future__ import annotations

import logging
import math

import comfy.model_management as mm
import torch
from comfy_api.latest import io, ui

from ..model import canvas
from .comfy_model import spacetime_dit
from .comfy_vae import vae_geometry
from .errors import blamed_on, node_error
from .validation import SpacetimeNode, allow_large_input, check_fits

log = logging.getLogger("spacetime.nodes")
MODES = ["snap", "error"]


class SpacetimeCanvas(SpacetimeNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SpacetimeCanvas",
            display_name="Canvas / Patchify (Spacetime)",
            category="Spacetime/canvas",
            description="An empty latent video on the VAE x patch grid; invalid sizes snap to the "
                        "nearest valid ones (or fail, if asked). Shows tokens and a memory estimate.",
            inputs=[
                io.Vae.Input("vae", tooltip="the VAE the canvas is for: its stride sets the latent size"),
                io.Int.Input("width", default=832, min=16, max=8192, step=16,
                             tooltip="pixels; a multiple of the VAE stride x patch size (16 for Wan 2.1, 32 for Wan 2.2 5B)"),
                io.Int.Input("height", default=480, min=16, max=8192, step=16,
                             tooltip="pixels; a multiple of the VAE stride x patch size (16 for Wan 2.1, 32 for Wan 2.2 5B)"),
                io.Int.Input("length", default=81, min=1, max=1025, step=4, tooltip="frames, 4k+1"),
                io.Combo.Input("invalid_size", options=MODES, default="snap",
                               tooltip="snap: round an invalid size to the nearest valid one and say so; error: refuse it"),
                io.Model.Input("model", optional=True, tooltip="for the token count and memory estimate"),
                allow_large_input(),
            ],
            outputs=[io.Latent.Output()],
        )

    @classmethod
    def execute(cls, vae, width, height, length, invalid_size, model=None, allow_large=False) -> io.NodeOutput:
        stride, channels = vae_geometry(vae)
        dit = spacetime_dit(model) if model is not None else None
        patch = tuple(dit.config.patch_size) if dit is not None else (1, 2, 2)
        if invalid_size == "error":
            problems = canvas.check_canvas(width, height, length, stride, patch)
            if problems:
                raise node_error(cls, "width/height/length", "; ".join(problems))
        size, notes = canvas.snap_canvas(width, height, length, stride, patch, channels)
        for n in notes:
            log.warning("SpacetimeCanvas: %s", n)
        if dit is not None and dit.config.out_dim != channels:
            raise node_error(cls, "vae", f"this VAE makes {channels}-channel latents but the model denoises "
                             f"{dit.config.out_dim}-channel ones: use the VAE of the model's family "
                             f"(Wan {'2.2' if dit.config.out_dim == 48 else '2.1'})")
        lines = notes + [f"{size.width}x{size.height}, {size.length} frames -> latent {size.latent_shape}, "
                         f"{size.tokens} tokens"]
        check_fits(cls, "width/height/length", 4 * math.prod(size.latent_shape), "the latent", allow_large)
        if dit is not None:
            c = dit.config
            wbytes = dit.blocks[0].ffn[0].weight.element_size()
            peak = canvas.estimate_peak_bytes(size, c.dim, c.num_layers, c.ffn_dim, wbytes,
                                              torch.finfo(dit.compute_dtype).bits // 8)
            lines.append(f"estimated peak memory ~{peak / 2**30:.1f} GiB")
            total = mm.get_total_memory(mm.get_torch_device())
            if peak > total and not allow_large:
                raise node_error(cls, "width/height/length", f"one DiT step needs about {peak / 2**30:.1f} GiB, "
                                 f"more than this device's {total / 2**30:.0f} GiB: lower the size or length, store "
                                 "the DiT in fp8, or set allow_large (ComfyUI then offloads weights: slow)")
        samples = torch.zeros((1, *size.latent_shape), device=mm.intermediate_device())
        info = {"width": size.width, "height": size.height, "length": size.length, "stride": stride,
                "allow_large": bool(allow_large)}
        return io.NodeOutput({"samples": samples, "spacetime": info}, ui=ui.PreviewText("\n".join(lines)))


class SpacetimePlaceFrames(SpacetimeNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SpacetimePlaceFrames",
            display_name="Place Known Frames (Spacetime)",
            category="Spacetime/canvas",
            description="Put an image or frames of a clip on the canvas (start, end or a frame index): "
                        "they are encoded with the VAE and kept while the rest is generated. Chain "
                        "several to extend, connect or loop clips.",
            inputs=[
                io.Latent.Input("latent", tooltip="from a Canvas (or another Place Frames)"),
                io.Vae.Input("vae", tooltip="encodes the placed frames into the canvas's latent"),
                io.Image.Input("images", tooltip="an image or a clip [N, H, W, 3] of the canvas size"),
                io.Combo.Input("position", options=["start", "end", "frame"], default="start",
                               tooltip="where the frames go: the start (image to video, extend forward), the end "
                                       "(extend backward), or from `frame` on"),
                io.Int.Input("frame", default=0, min=0, max=100000, tooltip="start frame when position = frame"),
                io.Combo.Input("use", options=["all", "first", "last"], default="all",
                               tooltip="which frames of the clip: all, or the first / last `count`"),
                io.Int.Input("count", default=1, min=1, max=100000, tooltip="how many frames `use` takes from the clip"),
                io.ClipVisionOutput.Input("clip_vision_output", optional=True,
                                          tooltip="Wan 2.1 I2V/FLF2V: CLIP-vision encoding of this image"),
            ],
            outputs=[io.Latent.Output("latent_out", display_name="latent"),
                     io.Image.Output("frames", display_name="placed_frames",
                                     tooltip="the frames placed (e.g. for CLIP Vision Encode)")],
        )

    @classmethod
    def execute(cls, latent, vae, images, position, frame, use, count, clip_vision_output=None) -> io.NodeOutput:
        info = latent.get("spacetime")
        if info is None:
            raise node_error(cls, "latent", "this LATENT has no canvas: start the chain with a Spacetime Canvas")
        info = dict(info)
        length, height, width = info["length"], info["height"], info["width"]
        with blamed_on(cls, "images"):
            frames = images if use == "all" else canvas.clip_end(images, count, use)
        at = canvas.start_frame(frame if position == "frame" else position, length, frames.shape[0])
        check_fits(cls, "latent", 2 * 4 * 3 * length * height * width, "the pixel canvas (lower the Canvas size)",
                   info.get("allow_large", False))
        if "pixels" in info:
            pixels, known = info["pixels"].clone(), info["known"].clone()
        else:
            pixels, known = canvas.new_pixel_canvas(length, height, width)
        with blamed_on(cls, "frame" if position == "frame" else "images"):
            canvas.place(pixels, known, frames.cpu(), at)
        # kept latents: unknown frames before a known run show its first frame (a still lead-in);
        # the Wan 2.1 I2V/FLF2V concat image: grey where unknown, as those models were trained
        z = canvas.known_latents(vae.encode, pixels, known).to(mm.intermediate_device())  # (1, C, T', H', W')
        z_grey = vae.encode(pixels).to(mm.intermediate_device()) if (~known).any() else z
        if tuple(z.shape[2:]) != tuple(latent["samples"].shape[2:]) or z.shape[1] != latent["samples"].shape[1]:
            raise node_error(cls, "vae", f"the VAE encodes the canvas to {tuple(z.shape)} but the canvas latent is "
                             f"{tuple(latent['samples'].shape)}: use the VAE the canvas was made with")
        hw = tuple(z.shape[-2:])
        info.update(pixels=pixels, known=known,
                    clip_vision=list(info.get("clip_vision", [])) + ([clip_vision_output] if clip_vision_output is not None else []))
        out = {**latent, "samples": z, "noise_mask": canvas.noise_mask(known, hw, info["stride"][0]),
               "concat_latent_image": z_grey, "concat_mask": canvas.concat_mask(known, hw, info["stride"][0]),
               "spacetime": info}
        log.info("SpacetimePlaceFrames: %d frame(s) at %d; known latent frames %s", frames.shape[0], at,
                 canvas.latent_known(known, info["stride"][0]).int().tolist())
        return io.NodeOutput(out, frames)


NODES = [SpacetimeCanvas, SpacetimePlaceFrames]
