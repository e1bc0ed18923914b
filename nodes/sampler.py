"""The Spacetime Sampler: any Wan MODEL (ours or native), native CONDITIONING, a canvas LATENT.

Built on ComfyUI's own machinery (a ``comfy.samplers.CFGGuider`` + ``KSAMPLER`` around our
k-diffusion-shaped solvers), so the progress bar, latent previews, interrupt between steps,
model patches and model loading/offloading behave as with KSampler. The schedule, the expert
stages (``samplers.experts``) and each step's guidance scale (``samplers.guidance``) come from
the library. Known frames ride in the LATENT (``noise_mask`` + I2V concat channels +
CLIP-vision outputs), see ``canvas_nodes.py``.
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
from .comfy_model import spacetime_dit
from .errors import blamed_on, node_error
from .validation import SpacetimeNode

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


def _resume_noise(model, latent: torch.Tensor, out: torch.Tensor, sigma: float) -> torch.Tensor:
    """The noise that makes ComfyUI's sampler start ``model`` at the state ``out`` that the previous
    stage returned at ``sigma`` (ComfyUI hands a state back divided by its ``1 - sigma`` noise
    scaling; ``noise_scaling`` with zero noise undoes that), in the model's latent space."""
    fmt = model.get_model_object("latent_format")
    ms = model.get_model_object("model_sampling")
    start = fmt.process_in(latent) if torch.count_nonzero(latent) > 0 else torch.zeros_like(latent)
    state = fmt.process_in(out)
    state = ms.noise_scaling(torch.tensor(sigma), torch.zeros_like(state), state)
    return samplers.resume_noise(state, start, sigma)


def _concat_channels(model) -> int:
    """Extra input channels of the model (I2V: 20), 0 for T2V / TI2V."""
    inner = model.model.diffusion_model
    channels = model.get_model_object("latent_format").latent_channels
    return inner.patch_embedding.weight.shape[1] - channels


def _needs_clip_vision(model) -> bool:
    """Our DiT with a CLIP-vision branch (Wan 2.1 I2V / FLF2V), which does not run without it (native
    Wan models skip the branch when no view comes)."""
    dit = spacetime_dit(model)
    return dit is not None and dit.img_emb is not None


CLIP_VISION_HINT = ("this Wan 2.1 I2V/FLF2V model also takes a CLIP-vision view of its image: load "
                    "clip_vision_h.safetensors with Load CLIP Vision and connect it")


class SpacetimeGuider(comfy.samplers.CFGGuider):
    """ComfyUI's CFG guider with the step's scale from ``samplers.guidance_scale`` (ComfyUI's CFG
    function still combines the predictions, so native CFG patches apply)."""

    def __init__(self, model_patcher, cfg: float, sigma_range: tuple[float, float] | None = None) -> None:
        super().__init__(model_patcher)
        self.set_cfg(cfg)
        self.sigma_range = sigma_range

    def predict_noise(self, x, timestep, model_options={}, seed=None):  # noqa: B006 (ComfyUI's signature)
        scale = samplers.guidance_scale(float(timestep.reshape(-1)[0]), self.cfg, self.sigma_range)
        return comfy.samplers.sampling_function(self.inner_model, x, timestep, self.conds.get("negative"),
                                                self.conds.get("positive"), scale, model_options=model_options,
                                                seed=seed)


class SpacetimeSampler(SpacetimeNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SpacetimeSampler",
            display_name="Sampler (Spacetime)",
            category="Spacetime/sampling",
            description="Denoise a latent video with a Wan model along a flow-matching schedule; "
                        "known frames of the canvas are kept. Optional low-noise expert (Wan 2.2 A14B).",
            inputs=[
                io.Model.Input("model", tooltip="a Wan MODEL (for Wan 2.2 A14B: the high-noise expert)"),
                io.Conditioning.Input("positive", tooltip="what the video should show"),
                io.Conditioning.Input("negative", tooltip="what to steer away from (used when cfg > 1)"),
                io.Latent.Input("latent", tooltip="from a Canvas or Place Frames (or VAE Encode, for an edit)"),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                             tooltip="the noise: same seed and inputs, same video"),
                io.Int.Input("steps", default=50, min=1, max=1000, tooltip="denoising steps (ignored when sigmas is connected)"),
                io.Float.Input("cfg", default=5.0, min=0.0, max=100.0, step=0.1, round=0.01,
                               tooltip="guidance scale; 1 = no negative pass (step-distilled models)"),
                io.Combo.Input("solver", options=list(samplers.SOLVERS), default="unipc",
                               tooltip="unipc as in Wan's official code; euler / lcm for step-distilled models"),
                io.Float.Input("shift", default=5.0, min=0.1, max=100.0, step=0.1,
                               tooltip="schedule shift: higher spends more steps at high noise (ignored when sigmas is connected)"),
                io.Float.Input("denoise", default=1.0, min=0.01, max=1.0, step=0.01,
                               tooltip="< 1: video-to-video edit (SDEdit) of the input latent"),
                io.Sigmas.Input("sigmas", optional=True, tooltip="overrides steps / shift"),
                io.Model.Input("low_noise_model", optional=True, tooltip="Wan 2.2 A14B low-noise expert"),
                io.Float.Input("boundary", default=samplers.WAN22_BOUNDARY["t2v"], min=0.0, max=1.0, step=0.005,
                               optional=True,
                               tooltip="switch to the low-noise expert below this fraction of 1000 timesteps"),
                io.Float.Input("low_noise_cfg", default=3.0, min=0.0, max=100.0, step=0.1, optional=True,
                               tooltip="Wan 2.2 A14B: guidance scale of the low-noise expert"),
                io.ClipVisionOutput.Input("clip_vision_output", optional=True,
                                          tooltip="Wan 2.1 I2V/FLF2V: appended after the canvas' own"),
            ],
            outputs=[io.Latent.Output()],
        )

    @classmethod
    def execute(cls, model, positive, negative, latent, seed, steps, cfg, solver, shift, denoise,
                sigmas=None, low_noise_model=None, boundary=samplers.WAN22_BOUNDARY["t2v"], low_noise_cfg=3.0,
                clip_vision_output=None) -> io.NodeOutput:
        x = latent["samples"]
        want = model.get_model_object("latent_format").latent_channels
        if x.ndim != 5 or (x.shape[1] != want and torch.count_nonzero(x) > 0):
            raise node_error(cls, "latent", f"latent of shape {tuple(x.shape)} does not fit this model, which "
                             f"denoises [B, {want}, T, H, W] latents: use the VAE of the model's family "
                             f"(Wan 2.1: 16 channels, Wan 2.2 TI2V: 48)")
        x = comfy.sample.fix_empty_latent_channels(model, x)
        if _needs_clip_vision(model) and clip_vision_output is None and \
                not (latent.get("spacetime") or {}).get("clip_vision") and \
                not any("clip_vision_output" in c[1] for c in list(positive) + list(negative)):
            raise node_error(cls, "clip_vision_output", CLIP_VISION_HINT + " (CLIP Vision Encode of the image into "
                             "clip_vision_output, or Place Frames' clip_vision_output)")
        with blamed_on(cls, "sigmas" if sigmas is not None else "steps/shift/denoise"):
            if sigmas is None:
                sigmas = samplers.flow_sigmas(steps, shift, denoise=denoise)
            elif denoise < 1.0:
                sigmas = samplers.truncate_for_denoise(sigmas, denoise)
        noise = comfy.sample.prepare_noise(x, seed, latent.get("batch_index"))
        total = len(sigmas) - 1
        callback = latent_preview.prepare_callback(model, total)
        out = sample_latent(model, positive, negative, latent, x, noise, sigmas, seed=seed, cfg=cfg, solver=solver,
                            low_noise_model=low_noise_model, boundary=boundary, low_noise_cfg=low_noise_cfg,
                            clip_vision_output=clip_vision_output,
                            callback=lambda step, x0, xs, n: callback(step, x0, xs, total))
        result = {k: v for k, v in latent.items()}
        result["samples"] = out.to(comfy.model_management.intermediate_device())
        return io.NodeOutput(result)


def sample_latent(model, positive, negative, latent: dict, x: torch.Tensor, noise: torch.Tensor,
                  sigmas: torch.Tensor, *, seed: int, cfg: float, solver: str, low_noise_model=None,
                  boundary: float = samplers.WAN22_BOUNDARY["t2v"], low_noise_cfg: float = 3.0,
                  clip_vision_output=None, callback=None, name: str = "SpacetimeSampler") -> torch.Tensor:
    """Denoise the canvas LATENT ``latent`` (its raw ``x``) from ``noise`` along ``sigmas``: the
    Sampler node's work, also the Long Video node's for each window. I2V models get the canvas'
    image channels and CLIP-vision tokens (and no noise mask: they keep the image through those);
    with a ``low_noise_model`` the Wan 2.2 A14B experts take their stages one after the other.
    ``callback(step, x0, x, total)`` after each step, counted over all stages; ``name`` heads the
    log line."""
    mask = None if _concat_channels(model) > 0 else latent.get("noise_mask")
    pos = _canvas_conditioning(positive, latent, clip_vision_output)
    neg = _canvas_conditioning(negative, latent, clip_vision_output)
    total = len(sigmas) - 1
    stages = samplers.expert_stages(sigmas, boundary if low_noise_model is not None else None)
    experts = [(model, cfg), (low_noise_model, low_noise_cfg)]
    log.info("%s: %d steps (%s), latent %s, %d expert(s)", name, total, solver, tuple(x.shape), len(stages))
    out = x
    sampler = comfy.samplers.KSAMPLER(samplers.SOLVERS[solver])
    for i, stage in enumerate(stages):
        m, scale = experts[stage.expert]
        if i > 0:  # the low-noise expert resumes from the high-noise expert's state
            noise = _resume_noise(m, x, out, float(stage.sigmas[0]))
        guider = SpacetimeGuider(m, scale)
        guider.set_conds(pos, neg)
        cb = None if callback is None else \
            (lambda step, x0, xs, n, o=stage.first_step: callback(step + o, x0, xs, total))
        out = guider.sample(noise, x, sampler, stage.sigmas, denoise_mask=mask, callback=cb, seed=seed)
    return out


NODES = [SpacetimeSampler]
