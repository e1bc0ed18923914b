"""The Wan video VAE (2.1 and 2.2): one implementation, two configs, streamed in time.

``load_vae`` reads a Wan VAE in the official layout (ComfyUI's repackaged
``wan_2.1_vae.safetensors`` / ``wan2.2_vae.safetensors``), the same under a prefix, or
diffusers' ``AutoencoderKLWan`` layout, and detects the configuration from tensor shapes.

Time is processed in chunks with an explicit :class:`CausalCache` as in the official code
(Wan-Video/Wan2.1 ``wan/modules/vae.py``: encode 1, 4, 4, ... frames; decode one latent frame
at a time), so memory does not grow with clip length; space can be tiled (``tile=``).
Latents are raw (not normalised), exactly as ComfyUI's Wan LATENT.
"""
from __future__ import annotations

import contextlib
import logging
import os
from typing import Callable, Iterator, Mapping

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .convert import wan_vae_to_official
from .loading import PathOrStateDict, WeightsError, load_state_dict
from .vae_blocks import CausalConv3d
from .vae_cache import CausalCache
from .vae_config import VAE_PRESETS, WAN21_LATENT_MEAN, WAN21_LATENT_STD, WAN22_LATENT_MEAN, WAN22_LATENT_STD, VAEConfig
from .vae_nets import Decoder3d, Encoder3d
from .vae_tiling import TileGrid

log = logging.getLogger(__name__)

FrameCallback = Callable[[torch.Tensor, int], None]

__all__ = ["WanVAE", "VAEConfig", "VAE_PRESETS", "load_vae", "vae_config_from_state_dict"]


def _valid_frames_message(t: int, step: int) -> str:
    lo = 1 + max(0, (t - 1) // step) * step
    options = f"{lo} or {lo + step}" if lo < t else f"{lo}"
    return (f"got {t} frames, but the Wan VAE takes {step}k+1 frames (1, {1 + step}, {1 + 2 * step}, ...): "
            f"use {options} frames (trim or pad the clip)")


def _valid_size_message(name: str, size: int, stride: int, version: str) -> str:
    lo = (size // stride) * stride
    options = f"{lo} or {lo + stride}" if lo else f"{stride}"
    return (f"{name} {size} is not a multiple of {stride} (the Wan {version} VAE's spatial stride): "
            f"use {options} (resize or crop)")


class WanVAE(nn.Module):
    """Wan 2.1 / 2.2 video VAE. ``WanVAE(VAEConfig(...))`` builds any size; module names equal
    the official checkpoint keys so ``load_state_dict`` takes official weights as they are.

    ``encode``/``decode`` run without autograd unless the module is in training mode.
    """

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        self.config = config
        z = config.z_dim
        self.encoder = Encoder3d(config)
        self.conv1 = CausalConv3d(2 * z, 2 * z, 1)   # latent moments: mean, log-variance
        self.conv2 = CausalConv3d(z, z, 1)
        self.decoder = Decoder3d(config)
        mean = torch.tensor(config.latents_mean) if config.latents_mean else torch.zeros(z)
        std = torch.tensor(config.latents_std) if config.latents_std else torch.ones(z)
        # Not in the state dict (fixed published numbers); buffers so .to() moves them.
        self.register_buffer("latent_mean", mean.view(1, z, 1, 1, 1), persistent=False)
        self.register_buffer("latent_std", std.view(1, z, 1, 1, 1), persistent=False)

    # ------------------------------------------------------------------ helpers
    @property
    def dtype(self) -> torch.dtype:
        return self.conv2.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.conv2.weight.device

    def _grad_context(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext() if self.training else torch.no_grad()

    def normalize(self, z: torch.Tensor) -> torch.Tensor:
        """Raw latent -> the DiT's space: (z - mean) / std per channel."""
        return (z - self.latent_mean.to(z)) / self.latent_std.to(z)

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        """The DiT's space -> raw latent (inverse of :meth:`normalize`)."""
        return z * self.latent_std.to(z) + self.latent_mean.to(z)

    def check_video(self, video: torch.Tensor) -> None:
        """Raise ``ValueError`` naming the nearest valid sizes if ``video`` cannot be encoded."""
        st, sh, sw = self.config.stride
        if video.dim() != 5 or video.shape[1] != 3:
            raise ValueError(f"encode takes video [B, 3, T, H, W] in [-1, 1], got shape {tuple(video.shape)}")
        t, h, w = video.shape[2:]
        if t < 1 or (t - 1) % st:
            raise ValueError(_valid_frames_message(t, st))
        if h % sh or h == 0:
            raise ValueError(_valid_size_message("height", h, sh, self.config.version))
        if w % sw or w == 0:
            raise ValueError(_valid_size_message("width", w, sw, self.config.version))

    def check_latent(self, z: torch.Tensor) -> None:
        if z.dim() != 5 or z.shape[1] != self.config.z_dim or min(z.shape[2:]) < 1:
            raise ValueError(f"decode takes a latent [B, {self.config.z_dim}, T, H, W] (Wan {self.config.version} "
                             f"VAE: {self.config.z_dim} channels), got shape {tuple(z.shape)}")

    def _patchify(self, x: torch.Tensor) -> torch.Tensor:
        p = self.config.patch_size  # (B, 3, T, H, W) -> (B, 3 p p, T, H/p, W/p)
        return x if p == 1 else rearrange(x, "b c t (h q) (w r) -> b (c r q) t h w", q=p, r=p)

    def _unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        p = self.config.patch_size
        return x if p == 1 else rearrange(x, "b (c r q) t h w -> b c t (h q) (w r)", q=p, r=p)

    # ------------------------------------------------------------------ encode
    def _encode_stream(self, x: torch.Tensor, cache: CausalCache, chunked: bool) -> Iterator[torch.Tensor]:
        """Patchified pixels -> latent moments (B, 2 z, t, h, w), one time chunk at a time."""
        st = self.config.stride[0]
        bounds = [(0, 1)] + [(s, s + st) for s in range(1, x.shape[2], st)] if chunked else [(0, x.shape[2])]
        for a, b in bounds:
            yield self.encoder(x[:, :, a:b], cache, split=chunked)

    def _moments(self, h: torch.Tensor, channels: int) -> torch.Tensor:
        return F.conv3d(h, self.conv1.weight[:channels], self.conv1.bias[:channels])

    def encode(self, video: torch.Tensor, tile: tuple[int, int] | None = None,
               tile_overlap: tuple[int, int] | None = None, chunked: bool = True) -> torch.Tensor:
        """Video [B, 3, T, H, W] in [-1, 1] (T = 4k + 1) -> raw latent mean
        [B, z_dim, (T - 1) / 4 + 1, H / s, W / s].

        ``tile=(h, w)`` (pixels) encodes overlapping spatial tiles and blends the latents
        (less memory, slightly different result near tile seams). ``chunked=False`` runs the
        whole clip in one pass (same result, more memory).
        """
        return self._encode(video, tile, tile_overlap, chunked, self.config.z_dim)

    def encode_moments(self, video: torch.Tensor, chunked: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Like :meth:`encode` but returns (mean, log-variance) of the posterior, for training."""
        return self._encode(video, None, None, chunked, 2 * self.config.z_dim).chunk(2, dim=1)

    def _encode(self, video: torch.Tensor, tile: tuple[int, int] | None, tile_overlap: tuple[int, int] | None,
                chunked: bool, channels: int) -> torch.Tensor:
        self.check_video(video)
        x = self._patchify(video.to(self.device, self.dtype))
        with self._grad_context():
            if tile is not None:
                sh, sw = self.config.stride[1:]
                grid = TileGrid.plan((video.shape[3] // sh, video.shape[4] // sw), tile, tile_overlap, (sh, sw),
                                     self.config.patch_size, decode=False)
                chunks = grid.run(x, self._encode_stream, lambda h: self._moments(h, channels), chunked)
                return torch.cat(list(chunks), dim=2)
            chunks = [self._moments(h, channels) for h in self._encode_stream(x, CausalCache(), chunked)]
            return torch.cat(chunks, dim=2)

    # ------------------------------------------------------------------ decode
    def _decode_stream(self, x: torch.Tensor, cache: CausalCache, chunked: bool) -> Iterator[torch.Tensor]:
        """Post-quant latent -> patchified pixels, one latent frame (chunked) at a time;
        each item holds all the frames one latent chunk gives."""
        chunks = x.split(1, dim=2) if chunked else [x]
        for chunk in chunks:
            yield torch.cat(list(self.decoder.stream(chunk, cache, split=chunked)), dim=2)

    def decode(self, z: torch.Tensor, callback: FrameCallback | None = None, tile: tuple[int, int] | None = None,
               tile_overlap: tuple[int, int] | None = None, chunked: bool = True,
               clamp: bool = True) -> torch.Tensor:
        """Raw latent [B, z_dim, T', h, w] -> video [B, 3, 4 (T' - 1) + 1, h s, w s] in [-1, 1].

        ``callback(frames, start)`` receives each finished piece [B, 3, n, H, W] as soon as it
        is decoded (first 1 frame, then 4 per latent frame). ``tile=(h, w)`` in pixels decodes
        overlapping spatial tiles and blends them. Output dtype is the model's dtype.
        """
        self.check_latent(z)
        st, sh, sw = self.config.stride
        b, _, t, h, w = z.shape
        with self._grad_context():
            x = self.conv2(z.to(self.device, self.dtype))
            out = None if self.training else torch.empty(b, 3, 1 + st * (t - 1), h * sh, w * sw,
                                                         dtype=self.dtype, device=self.device)
            if tile is not None:
                grid = TileGrid.plan((h, w), tile, tile_overlap, (sh, sw), self.config.patch_size, decode=True)
                stream = grid.run(x, self._decode_stream, lambda y: y, chunked)
            else:
                stream = self._decode_stream(x, CausalCache(), chunked)
            pieces, start = [], 0
            for piece in stream:
                piece = self._unpatchify(piece)
                if clamp:
                    piece = piece.clamp_(-1, 1) if not self.training else piece.clamp(-1, 1)
                if callback is not None:
                    callback(piece, start)
                if out is None:
                    pieces.append(piece)
                else:
                    out[:, :, start:start + piece.shape[2]] = piece
                start += piece.shape[2]
            return out if out is not None else torch.cat(pieces, dim=2)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """Reconstruction through the posterior mean (for training / checks)."""
        return self.decode(self.encode(video))


# ---------------------------------------------------------------------- loading
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
    import re

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
    vae.register_buffer("latent_mean", _stats(config, "mean"), persistent=False)
    vae.register_buffer("latent_std", _stats(config, "std"), persistent=False)
    log.info("loaded Wan %s VAE from %s (%s layout, dim %d, z %d)", config.version, name, layout,
             config.dim, config.z_dim)
    return vae.to(device=device, dtype=dtype).eval()


def _stats(config: VAEConfig, which: str) -> torch.Tensor:
    values = config.latents_mean if which == "mean" else config.latents_std
    t = torch.tensor(values) if values else (torch.zeros if which == "mean" else torch.ones)(config.z_dim)
    return t.view(1, config.z_dim, 1, 1, 1)
