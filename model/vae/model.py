"""The Wan video VAE (2.1 and 2.2): one implementation, two configs, streamed in time.

Time is processed in chunks with an explicit :class:`CausalCache` as in the official code
(Wan-Video/Wan2.1 ``wan/modules/vae.py``: encode 1, 4, 4, ... frames; decode one latent frame
at a time), so memory does not grow with clip length; space can be tiled (``tile=``).
Latents are raw (not normalised), exactly as ComfyUI's Wan LATENT.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ..sizes import frames_problem, side_problem
from .blocks import CausalConv3d
from .cache import CausalCache
from .config import VAEConfig
from .nets import Decoder3d, Encoder3d
from .tiling import TileGrid

FrameCallback = Callable[[torch.Tensor, int], None]


def latent_stat(config: VAEConfig, which: str) -> torch.Tensor:
    """The published per-channel latent ``"mean"`` or ``"std"`` as (1, z, 1, 1, 1); zeros /
    ones (the identity) for a model without published statistics. Always real CPU memory, also
    when the model is built on the meta device (loading), since no file holds them."""
    values = config.latents_mean if which == "mean" else config.latents_std
    if values:
        t = torch.tensor(values, dtype=torch.float32, device="cpu")
    else:
        t = (torch.zeros if which == "mean" else torch.ones)(config.z_dim, device="cpu")
    return t.view(1, config.z_dim, 1, 1, 1)


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
        # Not in the state dict (fixed published numbers); buffers so .to() moves them.
        self.register_buffer("latent_mean", latent_stat(config, "mean"), persistent=False)
        self.register_buffer("latent_std", latent_stat(config, "std"), persistent=False)

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
        why = f"the Wan {self.config.version} VAE's spatial stride"
        problem = (frames_problem(t, st, "frame count", "trim or pad the clip")
                   or side_problem("height", h, sh, why, "resize or crop")
                   or side_problem("width", w, sw, why, "resize or crop"))
        if problem:
            raise ValueError(problem)

    def check_latent(self, z: torch.Tensor) -> None:
        if z.dim() != 5 or z.shape[1] != self.config.z_dim or min(z.shape[2:]) < 1:
            raise ValueError(f"decode takes a latent [B, {self.config.z_dim}, T, H, W] (Wan {self.config.version} "
                             f"VAE: {self.config.z_dim} channels), got shape {tuple(z.shape)}: decode a latent with "
                             "the VAE it was made with")

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

    def decode_session(self) -> DecodeSession:
        """A decode that continues across calls: latent frames given in several pieces decode to
        exactly the frames of one :meth:`decode` of the whole latent (the causal cache is carried
        from piece to piece), for a clip made and shown window by window."""
        return DecodeSession(self)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """Reconstruction through the posterior mean (for training / checks)."""
        return self.decode(self.encode(video))


class DecodeSession:
    """One clip decoded piece by piece: :meth:`decode` takes the next latent frames and returns
    their video frames, continuing the causal cache of the pieces before (no tiling)."""

    def __init__(self, vae: WanVAE) -> None:
        self.vae = vae
        self.cache = CausalCache()

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Raw latent frames [B, z_dim, t, h, w] -> their video [B, 3, n, H, W] in [-1, 1]:
        1 + 4 (t - 1) frames for the clip's first piece, 4 t after."""
        vae = self.vae
        vae.check_latent(z)
        x = vae.conv2(z.to(vae.device, vae.dtype))
        pieces = [vae._unpatchify(p).clamp_(-1, 1) for p in vae._decode_stream(x, self.cache, True)]
        return torch.cat(pieces, dim=2)
