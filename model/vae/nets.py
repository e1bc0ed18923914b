"""Encoder and decoder of the Wan video VAE, one class each for 2.1 and 2.2 (config-driven).

Attribute names equal the official checkpoint keys: ``conv1``, ``downsamples`` /
``upsamples`` (a flat Sequential in 2.1; one block per level, each with its own inner
Sequential, in 2.2), ``middle`` (residual, attention, residual) and ``head``
(norm, SiLU, conv).

Memory: activations are largest at full resolution, where each chunk has the most frames.
Because every layer is causal with its own cache, a chunk may be cut into single frames at
any layer boundary without changing the result. The encoder runs the layers before its first
temporal downsample one frame at a time; the decoder runs everything after its last temporal
upsample one frame at a time (``split=True``). ``split=False`` runs the chunk as a whole.
"""
from __future__ import annotations

from typing import Iterator

import torch
from torch import nn

from .blocks import AttentionBlock, CausalConv3d, DownBlock, Resample, ResidualBlock, RMS_norm, UpBlock, _silu, res_stack
from .cache import CausalCache
from .config import VAEConfig


def _head(out_dim: int, channels: int) -> nn.Sequential:
    return nn.Sequential(RMS_norm(out_dim, images=False), nn.SiLU(), CausalConv3d(out_dim, channels, 3, padding=1))


def _middle(dim: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(ResidualBlock(dim, dim, dropout), AttentionBlock(dim), ResidualBlock(dim, dim, dropout))


def _run_head(head: nn.Sequential, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
    norm, _, conv = head
    return conv(_silu(norm(x)), cache)


def _changes_time(layer: nn.Module) -> bool:
    return bool(getattr(layer, "temporal", False))


class Encoder3d(nn.Module):
    """Pixels (B, 3 * p * p, T, H, W) -> latent moments (B, 2 * z_dim, T', H / s, W / s)."""

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        dims = [cfg.dim * m for m in (1, *cfg.dim_mult)]
        last = len(cfg.dim_mult) - 1
        self.conv1 = CausalConv3d(3 * cfg.patch_size ** 2, dims[0], 3, padding=1)
        layers: list[nn.Module] = []
        for i, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
            temporal = i < last and cfg.temperal_downsample[i]
            if cfg.version == "2.2":
                layers.append(DownBlock(in_dim, out_dim, cfg.num_res_blocks, temporal, i < last, cfg.dropout))
                continue
            layers += res_stack(in_dim, out_dim, cfg.num_res_blocks, cfg.dropout)
            if i < last:
                layers.append(Resample(out_dim, "downsample3d" if temporal else "downsample2d"))
        self.downsamples = nn.Sequential(*layers)
        self.middle = _middle(dims[-1], cfg.dropout)
        self.head = _head(dims[-1], cfg.z_dim * 2)
        # Layers before the first one that halves time can run one frame at a time.
        flags = [_changes_time(m) for m in self.downsamples]
        self._framewise = flags.index(True) if True in flags else len(flags)

    def forward(self, x: torch.Tensor, cache: CausalCache, split: bool = True) -> torch.Tensor:
        if split and x.shape[2] > 1:
            x = torch.cat([self._front(f, cache) for f in x.split(1, dim=2)], dim=2)
        else:
            x = self._front(x, cache)
        for layer in list(self.downsamples)[self._framewise:]:
            x = layer(x, cache)
        for layer in self.middle:
            x = layer(x, cache)
        return _run_head(self.head, x, cache)

    def _front(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        x = self.conv1(x, cache)
        for layer in list(self.downsamples)[:self._framewise]:
            x = layer(x, cache)
        return x


class Decoder3d(nn.Module):
    """Latent (B, z_dim, T', h, w) -> pixels (B, 3 * p * p, T, h * s, w * s), streamed."""

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        dim = cfg.decoder_dim
        dims = [dim * m for m in (cfg.dim_mult[-1], *reversed(cfg.dim_mult))]
        temperal_upsample = tuple(reversed(cfg.temperal_downsample))
        last = len(cfg.dim_mult) - 1
        self.conv1 = CausalConv3d(cfg.z_dim, dims[0], 3, padding=1)
        self.middle = _middle(dims[0], cfg.dropout)
        layers: list[nn.Module] = []
        for i, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
            temporal = i < last and temperal_upsample[i]
            if cfg.version == "2.2":
                layers.append(UpBlock(in_dim, out_dim, cfg.num_res_blocks + 1, temporal, i < last, cfg.dropout))
                continue
            if i > 0:
                in_dim //= 2   # the previous 2.1 upsample halved the channels
            layers += res_stack(in_dim, out_dim, cfg.num_res_blocks + 1, cfg.dropout)
            if i < last:
                layers.append(Resample(out_dim, "upsample3d" if temporal else "upsample2d"))
        self.upsamples = nn.Sequential(*layers)
        self.head = _head(dims[-1], 3 * cfg.patch_size ** 2)
        # Split frames after the last temporal upsample: the large full-resolution levels then
        # hold one frame at a time. (Splitting earlier saves little memory at low resolution
        # and costs time: thin convs are less efficient on CPU.)
        flags = [_changes_time(m) for m in self.upsamples]
        self._split_at = len(flags) - 1 - flags[::-1].index(True) if True in flags else -1

    def stream(self, z: torch.Tensor, cache: CausalCache, split: bool = True) -> Iterator[torch.Tensor]:
        """Decode a chunk of latent frames; yields output frames in order as they are done
        (one at a time after the last temporal upsample when ``split``)."""
        x = self.conv1(z, cache)
        for layer in self.middle:
            x = layer(x, cache)
        yield from self._up(x, 0, cache, split)

    def _up(self, x: torch.Tensor, start: int, cache: CausalCache, split: bool) -> Iterator[torch.Tensor]:
        for i in range(start, len(self.upsamples)):
            layer = self.upsamples[i]
            x = layer(x, cache)
            if split and i == self._split_at and x.shape[2] > 1:
                frames, x = x.split(1, dim=2), None
                for f in frames:
                    yield from self._up(f, i + 1, cache, split)
                return
        yield _run_head(self.head, x, cache)
