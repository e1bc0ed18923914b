"""The Spacetime Sampler: any Wan MODEL (ours or native), native CONDITIONING, a canvas LATENT.

Built on ComfyUI's own machinery (``comfy.samplers.CFGGuider`` + ``KSAMPLER`` around our
k-diffusion-shaped solvers), so the progress bar, latent previews, interrupt between steps and
model loading/offloading behave as with KSampler. Known frames ride in the LATENT
(``noise_mask`` + I2V concat channels + CLIP-vision outputs), see ``canvas_nodes.py``.
Wan 2.2 A14B: the high-noise expert runs the steps above ``boundary``, the low-noise one the
rest, one after the other (only one expert needs to be in memory at a time).
"""
from __future__ import annotations

import logging

import comfy.clip_vision
import comfy.model_management
import comfy.sample
import comfy.samplers
import latent_preview
import node_helpers
import torch
from comfy_api.latest import io

from .. import samplers
from ..model import canvas
from .errors import node_error

log = logging.getLogger("spacetime.nodes")


def _canvas_conditioning(cond: list, latent: dict, extra_view=None) -> list:
    """CONDITIONING with the canvas' I2V concat channels and CLIP-vision tokens attached."""
    values = {}
    if "concat_latent_image" in latent:
        values["concat_latent_image"] = latent["concat_latent_image"]
        values["concat_mask"] = latent["concat_mask"]
    views = list((latent.get("spacetime") or {}).get("clip_vision") or [])
    views += [extra_view] if extra_view is not None else []
    if views:
        out = comfy.clip_vision.Output()
        out.penultimate_hidden_states = torch.cat([v.penultimate_hidden_states for v in views], dim=-2)
        values["clip_vision_output"] = out
    return node_helpers.conditioning_set_values(cond, values) if values else cond


def _concat_channels(model) -> int:
    """Extra input channels of the model (I2V: 20), 0 for T2V / TI2V."""
    inner = model.model.diffusion_model
    channels = model.get_model_object("latent_format").latent_channels
    return inner.patch_embedding.weight.shape[1] - channels


class SpacetimeSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SpacetimeSampler",
            display_name="Sampler (Spacetime)",
            category="Spacetime/sampling",
            description="Denoise a latent video with a Wan model along a flow-matching schedule; "
                        "known frames of the canvas are kept. Optional low-noise expert (Wan 2.2 A14B).",
            inputs=[
                io.Model.Input("model"),
                io.Conditioning.Input("positive"),
                io.Conditioning.Input("negative"),
                io.Latent.Input("latent"),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True),
                io.Int.Input("steps", default=50, min=1, max=1000),
                io.Float.Input("cfg", default=5.0, min=0.0, max=100.0, step=0.1, round=0.01),
                io.Combo.Input("solver", options=list(samplers.SOLVERS), default="unipc"),
                io.Float.Input("shift", default=5.0, min=0.1, max=100.0, step=0.1),
                io.Float.Input("denoise", default=1.0, min=0.01, max=1.0, step=0.01,
                               tooltip="< 1: video-to-video edit (SDEdit) of the input latent"),
                io.Sigmas.Input("sigmas", optional=True, tooltip="overrides steps / shift"),
                io.Model.Input("low_noise_model", optional=True, tooltip="Wan 2.2 A14B low-noise expert"),
                io.Float.Input("boundary", default=0.875, min=0.0, max=1.0, step=0.005, optional=True,
                               tooltip="switch to the low-noise expert below this fraction of 1000 timesteps"),
                io.Float.Input("low_noise_cfg", default=3.0, min=0.0, max=100.0, step=0.1, optional=True),
                io.ClipVisionOutput.Input("clip_vision_output", optional=True,
                                          tooltip="Wan 2.1 I2V/FLF2V: appended after the canvas' own"),
            ],
            outputs=[io.Latent.Output()],
        )

    @classmethod
    def execute(cls, model, positive, negative, latent, seed, steps, cfg, solver, shift, denoise,
                sigmas=None, low_noise_model=None, boundary=0.875, low_noise_cfg=3.0,
                clip_vision_output=None) -> io.NodeOutput:
        x = latent["samples"]
        want = model.get_model_object("latent_format").latent_channels
        if x.ndim != 5 or (x.shape[1] != want and torch.count_nonzero(x) > 0):
            raise node_error(cls, "latent", f"latent of shape {tuple(x.shape)} does not fit this model, which "
                             f"denoises [B, {want}, T, H, W] latents: use the VAE of the model's family "
                             f"(Wan 2.1: 16 channels, Wan 2.2 TI2V: 48)")
        x = comfy.sample.fix_empty_latent_channels(model, x)
        try:
            if sigmas is None:
                sigmas = samplers.flow_sigmas(steps, shift, denoise=denoise)
            elif denoise < 1.0:
                sigmas = samplers.truncate_for_denoise(sigmas, denoise)
        except ValueError as e:
            raise node_error(cls, "sigmas" if sigmas is not None else "steps/shift/denoise", str(e)) from None
        noise = comfy.sample.prepare_noise(x, seed, latent.get("batch_index"))
        mask = None if _concat_channels(model) > 0 else latent.get("noise_mask")
        pos = _canvas_conditioning(positive, latent, clip_vision_output)
        neg = _canvas_conditioning(negative, latent, clip_vision_output)
        solve = samplers.SOLVERS[solver]
        total = len(sigmas) - 1
        callback = latent_preview.prepare_callback(model, total)
        split = samplers.expert_switch_index(sigmas, boundary) if low_noise_model is not None else total
        stages = [(model, cfg, sigmas[:split + 1], 0)]
        if split < total:
            low = (low_noise_model, low_noise_cfg, sigmas[split:], split)
            stages = ([stages[0]] if split > 0 else []) + [low]
        log.info("SpacetimeSampler: %d steps (%s), latent %s, %d expert(s)", total, solver, tuple(x.shape), len(stages))
        out = x
        sampler = comfy.samplers.KSAMPLER(solve)
        for i, (m, scale, sig, offset) in enumerate(stages):
            if i > 0:  # resume the low-noise expert from the high-noise expert's state
                fmt = m.get_model_object("latent_format")
                start = fmt.process_in(x) if torch.count_nonzero(x) > 0 else torch.zeros_like(x)
                # KSAMPLER returned x / (1 - sigma) at the boundary (its inverse noise scaling)
                state = fmt.process_in(out) * (1.0 - float(sig[0]))
                noise = canvas.restart_noise(state, start, float(sig[0]))
            guider = comfy.samplers.CFGGuider(m)
            guider.set_conds(pos, neg)
            guider.set_cfg(scale)
            cb = (lambda step, x0, xs, n, o=offset: callback(step + o, x0, xs, total))
            out = guider.sample(noise, x, sampler, sig, denoise_mask=mask, callback=cb, seed=seed)
        result = {k: v for k, v in latent.items()}
        result["samples"] = out.to(comfy.model_management.intermediate_device())
        return io.NodeOutput(result)


NODES = [SpacetimeSampler]
