"""Loading a Wan video VAE: a safetensors file or state dict in the official layout (ComfyUI's
repackaged ``wan_2.1_vae.safetensors`` / ``wan2.2_vae.safetensors``), the same under a prefix,
or diffusers' ``AutoencoderKLWan`` layout; 2.1 vs 2.2 and every size are detected from tensor
names and shapes.
"""
from __future__ import annotations

import logging
import os
import re
from typing import Mapping

import torch

from ..weights.files import PathOrStateDict, WeightsError, load_state_dict
from ..weights.layouts import wan_vae_to_official
from .config import VAE_PRESETS, VAEConfig
from .model import WanVAE

log = logging.getLogger(__name__)


def _guess_kind(keys: list[str]) -> str:
    joined = " ".join(keys[:2000])
    if "self_attn" in joined and "blocks." in joined:
        return "a Wan / DiT diffusion model (put it in models/diffusion_models)"
    if "encoder.block." in joined or "shared.weight" in joined:
        return "a T5 text encoder (put it in models/text_encoders)"
    if "vision_model" in joined or "visual." in joined:
        return "a CLIP vision model (models/clip_vision)"
    if "decoder.mid.block_1" in joined or "decoder.up.0.block" in joined:
        return "an image VAE of the Stable Diffusion / Flux kind, not a Wan video VAE"
    if "decoder." in joined:
        return "some other VAE"
    return "not a VAE"


def _not_a_wan_vae(sd: Mapping[str, torch.Tensor], why: str) -> WeightsError:
    keys = sorted(sd)
    sample = ", ".join(f"{k} {tuple(sd[k].shape)}" for k in keys[:4])
    return WeightsError(f"not a Wan VAE state dict ({why}): found {len(keys)} tensors, e.g. {sample}; "
                        f"looks like {_guess_kind(keys)}. Load a Wan 2.1 VAE (wan_2.1_vae.safetensors) or "
                        f"Wan 2.2 VAE (wan2.2_vae.safetensors) from models/vae")


def _levels(sd: Mapping[str, torch.Tensor], version: str) -> list[tuple[list[int], bool | None]]:
    """Encoder levels from key names: [(residual block widths, temporal flag or None)]."""
    levels: list[tuple[list[int], bool | None]] = []
    if version == "2.1":
        idx = sorted({int(m[1]) for k in sd if (m := re.match(r"encoder\.downsamples\.(\d+)\.", k))})
        widths: list[int] = []
        for i in idx:
            pre = f"encoder.downsamples.{i}."
            if pre + "residual.2.weight" in sd:
                widths.append(sd[pre + "residual.2.weight"].shape[0])
            else:
                levels.append((widths, pre + "time_conv.weight" in sd))
                widths = []
        levels.append((widths, None))
        return levels
    blocks = sorted({int(m[1]) for k in sd if (m := re.match(r"encoder\.downsamples\.(\d+)\.downsamples\.", k))})
    for i in blocks:
        pre = f"encoder.downsamples.{i}.downsamples."
        js = sorted({int(m[1]) for k in sd if (m := re.match(re.escape(pre) + r"(\d+)\.", k))})
        widths = [sd[f"{pre}{j}.residual.2.weight"].shape[0] for j in js if f"{pre}{j}.residual.2.weight" in sd]
        down = any(f"{pre}{j}.resample.1.weight" in sd for j in js)
        levels.append((widths, any(f"{pre}{j}.time_conv.weight" in sd for j in js) if down else None))
    return levels


def vae_config_from_state_dict(sd: Mapping[str, torch.Tensor]) -> VAEConfig:
    """The :class:`VAEConfig` of an official-layout Wan VAE state dict, from tensor shapes."""
    needed = ("encoder.conv1.weight", "decoder.conv1.weight", "conv1.weight", "conv2.weight",
              "decoder.middle.0.residual.0.gamma")
    missing = [k for k in needed if k not in sd]
    if missing:
        raise _not_a_wan_vae(sd, f"no {missing[0]!r}")
    version = "2.2" if any(k.startswith("decoder.upsamples.0.upsamples.") for k in sd) else "2.1"
    dim, in_ch = sd["encoder.conv1.weight"].shape[:2]
    z_dim = sd["conv2.weight"].shape[0]
    if in_ch != (12 if version == "2.2" else 3):
        raise _not_a_wan_vae(sd, f"encoder.conv1 takes {in_ch} channels, a Wan {version} VAE takes "
                                 f"{12 if version == '2.2' else 3}")
    levels = _levels(sd, version)
    try:
        dim_mult = tuple(ws[0] // dim for ws, _ in levels)
        num_res_blocks = len(levels[0][0])
        temporal = tuple(bool(t) for _, t in levels[:-1])
        dec_dim = sd["decoder.conv1.weight"].shape[0] // dim_mult[-1]
    except (IndexError, ZeroDivisionError):
        raise _not_a_wan_vae(sd, "could not read the encoder levels") from None
    official = version == "2.1" and z_dim == 16 or version == "2.2" and z_dim == 48
    preset = VAE_PRESETS["wan2.1" if version == "2.1" else "wan2.2"]
    return VAEConfig(version=version, dim=dim, dec_dim=None if dec_dim == dim else dec_dim, z_dim=z_dim,
                     dim_mult=dim_mult, num_res_blocks=num_res_blocks, temperal_downsample=temporal,
                     latents_mean=preset.latents_mean if official else None,
                     latents_std=preset.latents_std if official else None)


def load_vae(source: PathOrStateDict, dtype: torch.dtype = torch.float32,
             device: str | torch.device = "cpu") -> WanVAE:
    """A :class:`WanVAE` from a ``.safetensors`` path or a state dict in any supported layout
    (official Wan, the same with a prefix, diffusers' AutoencoderKLWan); 2.1 vs 2.2 and all
    sizes are detected from tensor shapes. ``dtype`` is the compute dtype (fp32/bf16/fp16)."""
    raw = load_state_dict(source)
    name = os.path.basename(str(source)) if not isinstance(source, Mapping) else "state dict"
    sd, layout = wan_vae_to_official(raw)
    config = vae_config_from_state_dict(sd)
    with torch.device("meta"):
        vae = WanVAE(config)
    try:
        result = vae.load_state_dict(sd, strict=False, assign=True)
    except RuntimeError as e:  # shape mismatches
        raise WeightsError(f"{name}: tensors do not fit the detected Wan {config.version} VAE config {config} "
                           f"({layout} layout): {str(e).splitlines()[-1].strip()}") from None
    if result.missing_keys or result.unexpected_keys:
        raise WeightsError(
            f"{name}: looks like a Wan {config.version} VAE ({layout} layout) but the tensors do not fit "
            f"the detected config {config}: missing {result.missing_keys[:4]} "
            f"({len(result.missing_keys)}), unexpected {result.unexpected_keys[:4]} "
            f"({len(result.unexpected_keys)}). The file may be damaged or of a newer variant")
    log.info("loaded Wan %s VAE from %s (%s layout, dim %d, z %d)", config.version, name, layout,
             config.dim, config.z_dim)
    return vae.to(device=device, dtype=dtype).eval()
