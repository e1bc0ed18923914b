"""Our WanVAE as a real ComfyUI VAE, so native VAEEncode / VAEDecode (tiled too) / WanImageToVideo
accept it and ComfyUI's model management loads and offloads it.

``SpacetimeVAE`` subclasses ``comfy.sd.VAE`` without calling its ``__init__``: that constructor
detects a model family from a state dict and builds ComfyUI's own network, while ours is
already built. The subclass therefore overrides the methods whose work is ours (``encode``,
``decode``, ``encode_tiled``, ``decode_tiled``: streamed in time, spatial tiles by
``TileGrid``) and sets only the attributes that the inherited methods and other ComfyUI code
read (ComfyUI 0.3.75): ``first_stage_model`` (``get_sd``: VAESave writes the official keys; ``model_size``), the
ratios and index formulas (``spacial_compression_*``, ``temporal_compression_decode``, nodes that
shape latents), ``crop_input`` (``vae_encode_crop_pixels``), ``latent_channels`` / ``latent_dim``,
and ``patcher`` / ``device`` / ``vae_dtype`` / ``output_device`` / ``size`` (model management).

ComfyUI's ``ModelPatcher`` records where it moved a model by assigning ``model.device``; our
network is re-typed to ``ComfyWanVAE``, which accepts that assignment (its device is always
its weights' device), as ``comfy_model`` re-types the DiT.
"""
from __future__ import annotations

import math

import comfy.model_management as mm
import comfy.model_patcher
import comfy.sd
import comfy.utils
import torch

from ..model.vae import WanVAE

# Working memory per pixel, ComfyUI's figures for its 96-wide Wan 2.1 VAE (scaled by the width).
ENCODE_BYTES, DECODE_BYTES = 6000, 7000


class ComfyWanVAE(WanVAE):
    """Our WanVAE as a ModelPatcher's model: ``device`` may be assigned (and stays the weights')."""

    @property
    def device(self) -> torch.device:
        return WanVAE.device.fget(self)

    @device.setter
    def device(self, value: torch.device) -> None:
        pass  # the patcher's record of where it put the model; the weights say the same


class SpacetimeVAE(comfy.sd.VAE):
    """A ``comfy.sd.VAE`` whose network is our streaming ``WanVAE`` (see the module docstring).
    The class attributes below are ComfyUI's values for its Wan VAE, for other packs' nodes
    that read them."""

    output_channels, not_video, disable_offload, extra_1d_channel = 3, False, False, None
    working_dtypes = [torch.bfloat16, torch.float16, torch.float32]
    process_input = staticmethod(lambda image: image * 2.0 - 1.0)
    process_output = staticmethod(lambda image: torch.clamp((image + 1.0) / 2.0, min=0.0, max=1.0))

    def __init__(self, vae: WanVAE) -> None:  # noqa: super().__init__ is ComfyUI's detector: not called
        c = vae.config
        st, sh, sw = c.stride
        vae.__class__ = ComfyWanVAE
        self.first_stage_model = vae.eval()
        self.latent_channels, self.latent_dim = c.z_dim, 3
        self.upscale_ratio = (lambda a: max(0, a * st - (st - 1)), sh, sw)
        self.downscale_ratio = (lambda a: max(0, math.floor((a + st - 1) / st)), sh, sw)
        self.upscale_index_formula = self.downscale_index_formula = (st, sh, sw)
        self.crop_input = True
        self.device, self.vae_dtype = mm.vae_device(), vae.dtype
        self.output_device = mm.intermediate_device()
        self.size = None
        self.patcher = comfy.model_patcher.ModelPatcher(vae, load_device=self.device,
                                                        offload_device=mm.vae_offload_device())
        self.model_size()

    @property
    def wan(self) -> WanVAE:
        return self.first_stage_model

    def memory_used_encode(self, shape: tuple[int, ...], dtype: torch.dtype) -> float:
        """Working memory to encode pixels of ``shape`` (..., H, W), as ComfyUI estimates it."""
        return ENCODE_BYTES * self.wan.config.dim / 96 * shape[-2] * shape[-1] * mm.dtype_size(dtype)

    def memory_used_decode(self, shape: tuple[int, ...], dtype: torch.dtype) -> float:
        """Working memory to decode a latent of ``shape`` (..., h, w), as ComfyUI estimates it."""
        _, sh, sw = self.wan.config.stride
        return DECODE_BYTES * self.wan.config.dim / 96 * shape[-2] * shape[-1] * sh * sw * mm.dtype_size(dtype)

    # -- encode ---------------------------------------------------------------------------------
    def encode_frames(self, images: torch.Tensor, tile: tuple[int, int] | None = None,
                      overlap: tuple[int, int] | None = None) -> torch.Tensor:
        """IMAGE frames ``[N, H, W, 3]`` (or ``[B, N, H, W, 3]``) in 0..1 -> raw latent
        ``[B, C, T', h, w]``; a frame count or size the VAE cannot take is refused
        (``ValueError`` naming the nearest valid values)."""
        x = images[..., :3]
        video = (x.movedim(-1, 0).unsqueeze(0) if x.ndim == 4 else x.movedim(-1, 1)) * 2 - 1  # (B, 3, T, H, W)
        self.wan.check_video(video)
        mm.load_models_gpu([self.patcher], memory_required=self.memory_used_encode(video.shape, self.vae_dtype))
        z = self.wan.encode(video.to(self.device, self.vae_dtype), tile=tile, tile_overlap=overlap)
        return z.to(self.output_device).float()

    def encode(self, pixel_samples: torch.Tensor, tile: tuple[int, int] | None = None,
               overlap: tuple[int, int] | None = None) -> torch.Tensor:
        """ComfyUI's contract: sides cropped to the stride and the clip cut to whole frame groups,
        as ComfyUI's own Wan VAE does, then :meth:`encode_frames`."""
        pixels = self.vae_encode_crop_pixels(pixel_samples)
        st, n = self.wan.config.stride[0], pixels.shape[-4]
        return self.encode_frames(pixels.narrow(-4, 0, 1 + st * ((n - 1) // st)), tile, overlap)

    def encode_tiled(self, pixel_samples, tile_x=None, tile_y=None, overlap=None, tile_t=None, overlap_t=None):
        """Tiles in pixels, as ComfyUI's VAEEncodeTiled gives them; time is streamed anyway."""
        tile = (tile_y or tile_x or 512, tile_x or tile_y or 512)
        return self.encode(pixel_samples, tile, None if overlap is None else (overlap, overlap))

    # -- decode ---------------------------------------------------------------------------------
    def decode(self, samples_in: torch.Tensor, vae_options: dict | None = None,
               tile: tuple[int, int] | None = None, overlap: tuple[int, int] | None = None) -> torch.Tensor:
        """Raw latent ``[B, C, T', h, w]`` -> frames ``[B, T, H, W, 3]`` in 0..1, decoded one latent
        frame at a time into one output buffer, with a progress bar and an interrupt check per
        piece. ``tile`` (pixels) decodes overlapping spatial tiles. ``ValueError`` for a latent
        of the wrong channel count."""
        self.wan.check_latent(samples_in)
        st, sh, sw = self.wan.config.stride
        b, _, t, h, w = samples_in.shape
        frames = 1 + st * (t - 1)
        out = torch.empty(b, frames, h * sh, w * sw, 3, device=self.output_device)
        bar = comfy.utils.ProgressBar(frames)

        def on_piece(piece: torch.Tensor, start: int) -> None:  # (B, 3, n, H, W) in [-1, 1]
            mm.throw_exception_if_processing_interrupted()
            n = piece.shape[2]
            out[:, start:start + n] = ((piece.float() + 1) / 2).clamp(0, 1).movedim(1, -1).to(out.device)
            bar.update_absolute(start + n, frames)

        mm.load_models_gpu([self.patcher], memory_required=self.memory_used_decode(samples_in.shape, self.vae_dtype))
        self.wan.decode(samples_in.to(self.device, self.vae_dtype), callback=on_piece, tile=tile, tile_overlap=overlap)
        return out

    def decode_tiled(self, samples, tile_x=None, tile_y=None, overlap=None, tile_t=None, overlap_t=None):
        """Tiles in latent cells, as ComfyUI's VAEDecodeTiled gives them; time is streamed anyway."""
        _, sh, sw = self.wan.config.stride
        tile = ((tile_y or tile_x or 64) * sh, (tile_x or tile_y or 64) * sw)
        return self.decode(samples, tile=tile, overlap=None if overlap is None else (overlap * sh, overlap * sw))


def wrap_vae(vae: WanVAE) -> SpacetimeVAE:
    """Our WanVAE as a ComfyUI VAE."""
    return SpacetimeVAE(vae)


def vae_geometry(vae) -> tuple[tuple[int, int, int], int]:
    """``((t, h, w) stride, latent channels)`` of any ComfyUI video VAE (ours or native)."""
    s = vae.spacial_compression_encode()
    t = vae.temporal_compression_decode() if hasattr(vae, "temporal_compression_decode") else None
    return (t or 4, s, s), vae.latent_channels
