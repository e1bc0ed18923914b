"""Our WanVAE as a real ComfyUI VAE (``comfy.sd.VAE``), so native VAEEncode / VAEDecode /
WanImageToVideo accept it and ComfyUI's model management loads and offloads it.

The object is built like ComfyUI builds its Wan VAE (``comfy/sd.py``, ``VAE.__init__``, the
``decoder.middle.0.residual.0.gamma`` branch): same ratios, index formulas and memory
estimates; only ``first_stage_model`` is ours, behind an adapter with ComfyUI's
``encode(x) / decode(z)`` calls on ``[B, 3, T, H, W]`` in [-1, 1] and raw latents.
"""
from __future__ import annotations

import math

import comfy.model_management as mm
import comfy.model_patcher
import comfy.sd
import torch

from ..model.vae import WanVAE


class VAEAdapter(torch.nn.Module):
    """ComfyUI's first-stage model interface around our WanVAE."""

    def __init__(self, vae: WanVAE) -> None:
        super().__init__()
        self.vae = vae

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        st = self.vae.config.stride[0]
        t = x.shape[2]
        x = x[:, :, : 1 + st * ((t - 1) // st)]  # like ComfyUI's Wan VAE: whole groups only
        return self.vae.encode(x)

    def decode(self, z: torch.Tensor, callback=None) -> torch.Tensor:
        return self.vae.decode(z, callback=callback)


def wrap_vae(vae: WanVAE) -> comfy.sd.VAE:
    """A ``comfy.sd.VAE`` whose first-stage model is ``vae``."""
    c = vae.config
    st, sh, sw = c.stride
    out = comfy.sd.VAE.__new__(comfy.sd.VAE)
    out.first_stage_model = VAEAdapter(vae).eval()
    out.upscale_ratio = (lambda a: max(0, a * st - (st - 1)), sh, sw)
    out.upscale_index_formula = (st, sh, sw)
    out.downscale_ratio = (lambda a: max(0, math.floor((a + st - 1) / st)), sh, sw)
    out.downscale_index_formula = (st, sh, sw)
    out.latent_dim = 3
    out.latent_channels = c.z_dim
    out.output_channels = 3
    out.process_input = lambda image: image * 2.0 - 1.0
    out.process_output = lambda image: torch.clamp((image + 1.0) / 2.0, min=0.0, max=1.0)
    out.working_dtypes = [torch.bfloat16, torch.float16, torch.float32]
    scale = c.dim / 96  # ComfyUI's numbers are for the 96-wide 2.1 VAE
    out.memory_used_encode = lambda shape, dtype: 6000 * scale * shape[3] * shape[4] * mm.dtype_size(dtype)
    out.memory_used_decode = lambda shape, dtype: 7000 * scale * shape[3] * shape[4] * sh * sw * mm.dtype_size(dtype)
    out.disable_offload = False
    out.not_video = False
    out.size = None
    out.extra_1d_channel = None
    out.crop_input = True
    out.device = mm.vae_device()
    out.vae_dtype = vae.dtype
    out.output_device = mm.intermediate_device()
    out.patcher = comfy.model_patcher.ModelPatcher(out.first_stage_model, load_device=out.device,
                                                   offload_device=mm.vae_offload_device())
    out.model_size()
    return out


def spacetime_vae(vae) -> WanVAE | None:
    """Our WanVAE inside a ComfyUI VAE, or None for a native one."""
    inner = getattr(vae, "first_stage_model", None)
    return inner.vae if isinstance(inner, VAEAdapter) else None


def vae_geometry(vae) -> tuple[tuple[int, int, int], int]:
    """``((t, h, w) stride, latent channels)`` of any ComfyUI video VAE (ours or native)."""
    ours = spacetime_vae(vae)
    if ours is not None:
        return tuple(ours.config.stride), ours.config.z_dim
    s = vae.spacial_compression_encode()
    t = vae.temporal_compression_decode() if hasattr(vae, "temporal_compression_decode") else None
    return (t or 4, s, s), vae.latent_channels
