"""Layers of the Wan video VAE (2.1 and 2.2), with attribute names equal to the official keys.

Behaviour follows the official code (Wan-Video/Wan2.1 ``wan/modules/vae.py``, Wan-Video/Wan2.2
``wan/modules/vae2_2.py``) and agrees with ComfyUI's ``comfy.ldm.wan`` and diffusers'
``AutoencoderKLWan``. Every layer takes a :class:`CausalCache`; a fresh cache plus the
whole clip gives the same result as the same cache fed chunk by chunk.

Tensors are ``(B, C, T, H, W)`` unless a comment says otherwise. In-place arithmetic is used
only when autograd is not recording (inference), so the same modules can be trained.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .cache import CausalCache


def _inplace_ok(x: torch.Tensor) -> bool:
    """In-place ops save memory but break autograd; use them only when nothing is recorded."""
    return not (torch.is_grad_enabled() and x.requires_grad)


def _per_frame(fn: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Apply a 2-D module to every frame: (B, C, T, H, W) -> (B, C', T, H', W')."""
    b, t = x.shape[0], x.shape[2]
    y = fn(rearrange(x, "b c t h w -> (b t) c h w"))
    return rearrange(y, "(b t) c h w -> b c t h w", b=b, t=t)


class CausalConv3d(nn.Conv3d):
    """A Conv3d that pads time only on the past side (``2 * padding_t`` frames).

    Those past frames come from the cache (the end of the previous chunk) or are zeros at
    the start of the clip. Spatial zero padding is left to the convolution itself, which
    avoids the extra padded copy of every activation.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        pt, ph, pw = self.padding
        self.context = 2 * pt          # frames of history each output frame needs
        self.padding = (0, ph, pw)

    def forward(self, x: torch.Tensor, cache: CausalCache | None = None) -> torch.Tensor:
        if self.context:
            past = cache.take(self) if cache is not None else None
            if past is None:           # clip start: the official zero padding
                past = (x.new_zeros(x.shape[0], x.shape[1], self.context, *x.shape[3:]),)
            parts = (*past, x)
            if cache is not None:
                cache.keep(self, _last_frames(parts, self.context))
            x = torch.cat(parts, dim=2)                    # (B, C, ctx + T, H, W)
            del past, parts
        kt = self.kernel_size[0]
        if x.shape[2] == kt and self.stride[0] == 1 and x.is_contiguous():
            # One output frame: fold time into channels, (B, C, kt, H, W) -> (B, C kt, H, W),
            # a free view, and run it as a 2-D conv. CPU conv3d is several times slower per
            # frame on such thin inputs; the result is the same sum.
            o, c = self.weight.shape[:2]
            w = self.weight.reshape(o, c * kt, *self.kernel_size[1:])
            y = F.conv2d(x.reshape(x.shape[0], c * kt, *x.shape[3:]), w, self.bias, self.stride[1:], self.padding[1:])
            return y.unsqueeze(2)
        return super().forward(x)


def _last_frames(parts: tuple[torch.Tensor, ...], n: int) -> tuple[torch.Tensor, ...]:
    """The last ``n`` frames of the time-concatenation of ``parts``, as a tuple of tensors.

    Whole single-frame parts are kept by reference, not copied: a conv input is never
    modified after the conv, and in the one-frame-at-a-time steady state this makes the
    cache update free. Longer parts are sliced and copied, so that no large activation is
    kept alive by a view."""
    kept: list[torch.Tensor] = []
    for p in reversed(parts):
        if n == 0:
            break
        t = p.shape[2]
        kept.append(p if t <= n and t == 1 else p[:, :, t - min(t, n):].clone())
        n -= min(t, n)
    return tuple(reversed(kept))


class RMS_norm(nn.Module):  # noqa: N801 (the official class name; key: ``gamma``)
    """x / ||x||_channels * sqrt(C) * gamma. ``images`` picks the gamma shape of the
    checkpoint: (C, 1, 1) for 2-D inputs, (C, 1, 1, 1) for video."""

    def __init__(self, dim: int, images: bool = True) -> None:
        super().__init__()
        self.scale = dim ** 0.5
        self.gamma = nn.Parameter(torch.ones(dim, *((1, 1) if images else (1, 1, 1))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = self.gamma.to(x.dtype) * self.scale
        if x.dtype in (torch.float16, torch.bfloat16):  # normalise in fp32, as diffusers does
            n = torch.linalg.vector_norm(x.float(), dim=1, keepdim=True).clamp_min(1e-12)
            return (x.float() / n).to(x.dtype) * g
        y = x / torch.linalg.vector_norm(x, dim=1, keepdim=True).clamp_min(1e-12)
        return y.mul_(g) if _inplace_ok(y) else y * g


def _residual_add(y: torch.Tensor, shortcut: torch.Tensor) -> torch.Tensor:
    """y + shortcut, in place on y when nothing is recorded for autograd."""
    return y.add_(shortcut) if _inplace_ok(y) else y + shortcut


def _silu(x: torch.Tensor) -> torch.Tensor:
    return F.silu(x, inplace=_inplace_ok(x))


class ResidualBlock(nn.Module):
    """norm-SiLU-conv, norm-SiLU-dropout-conv, plus a 1x1x1 shortcut when channels change.
    ``residual`` keeps the official Sequential indices (0 norm, 2 conv, 3 norm, 6 conv)."""

    def __init__(self, in_dim: int, out_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.residual = nn.Sequential(
            RMS_norm(in_dim, images=False), nn.SiLU(),
            CausalConv3d(in_dim, out_dim, 3, padding=1),
            RMS_norm(out_dim, images=False), nn.SiLU(), nn.Dropout(dropout),
            CausalConv3d(out_dim, out_dim, 3, padding=1))
        self.shortcut = CausalConv3d(in_dim, out_dim, 1) if in_dim != out_dim else nn.Identity()

    def forward(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        norm1, _, conv1, norm2, _, dropout, conv2 = self.residual
        y = conv1(_silu(norm1(x)), cache)
        y = conv2(dropout(_silu(norm2(y))), cache)
        h = self.shortcut(x)
        return _residual_add(y, h)


def res_stack(in_dim: int, out_dim: int, n: int, dropout: float) -> list[nn.Module]:
    """n residual blocks, the first changing in_dim to out_dim (one level of the VAE)."""
    return [ResidualBlock(in_dim if i == 0 else out_dim, out_dim, dropout) for i in range(n)]


class AttentionBlock(nn.Module):
    """Single-head self-attention over the pixels of each frame (no mixing across time)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = RMS_norm(dim)
        self.to_qkv = nn.Conv2d(dim, dim * 3, 1)
        self.proj = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor, cache: CausalCache | None = None) -> torch.Tensor:
        b, c, t, h, w = x.shape
        y = rearrange(x, "b c t h w -> (b t) c h w")
        qkv = self.to_qkv(self.norm(y))                                   # (BT, 3C, H, W)
        qkv = rearrange(qkv, "n (k c) h w -> k n 1 (h w) c", k=3)          # 3 x (BT, 1, HW, C)
        y = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])         # (BT, 1, HW, C)
        y = self.proj(rearrange(y, "n 1 (h w) c -> n c h w", h=h, w=w))
        y = rearrange(y, "(b t) c h w -> b c t h w", b=b, t=t)
        return _residual_add(y, x)


class Resample(nn.Module):
    """2x spatial up/downsampling, optionally with 2x temporal up/downsampling.

    ``up_dim`` is the channel count after a spatial upsample: ``dim // 2`` in Wan 2.1 (the
    next level's blocks take half the channels), ``dim`` in Wan 2.2.
    Time, as in the official code: the clip's first frame is passed through alone; later
    frames are doubled (upsample: one conv makes two frames each) or halved (downsample: a
    stride-2 conv over pairs, with the previous frame as left context).
    """

    def __init__(self, dim: int, mode: str, up_dim: int | None = None) -> None:
        super().__init__()
        self.mode = mode
        if mode.startswith("upsample"):
            self.resample = nn.Sequential(nn.Upsample(scale_factor=(2.0, 2.0), mode="nearest-exact"),
                                          nn.Conv2d(dim, up_dim or dim // 2, 3, padding=1))
        elif mode.startswith("downsample"):
            self.resample = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(dim, dim, 3, stride=2))
        else:
            raise ValueError(f"unknown resample mode {mode!r}")
        if mode == "upsample3d":
            self.time_conv = CausalConv3d(dim, dim * 2, (3, 1, 1), padding=(1, 0, 0))
        elif mode == "downsample3d":
            self.time_conv = CausalConv3d(dim, dim, (3, 1, 1), stride=(2, 1, 1))

    @property
    def temporal(self) -> bool:
        return self.mode.endswith("3d")

    def forward(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        if self.mode == "upsample3d":
            x = self._time_up(x, cache)
        x = _per_frame(self.resample, x)
        if self.mode == "downsample3d":
            x = self._time_down(x, cache)
        return x

    def _time_up(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        first = x[:, :, :0]
        if cache.first_visit(self):   # the first frame is not doubled and starts no history
            first, x = x[:, :, :1], x[:, :, 1:]
        if x.shape[2] == 0:
            return first
        y = self.time_conv(x, cache)                                       # (B, 2C, T, H, W)
        y = rearrange(y, "b (k c) t h w -> b c (t k) h w", k=2)            # (B, C, 2T, H, W)
        return torch.cat([first, y], dim=2) if first.shape[2] else y

    def _time_down(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        if cache.first_visit(self):
            first, past, rest = x[:, :, :1], x[:, :, :1], x[:, :, 1:]
        else:
            first, past, rest = x[:, :, :0], cache.take(self)[0], x
        cache.keep(self, (x[:, :, -1:].clone(),))
        if rest.shape[2] == 0:
            return first
        y = self.time_conv(torch.cat([past, rest], dim=2))                 # (B, C, T / 2, H, W)
        return torch.cat([first, y], dim=2) if first.shape[2] else y


class AvgDown3D(nn.Module):
    """Wan 2.2 shortcut: space/time-to-channel folding, then the mean over channel groups.
    Time is zero-padded at the front to a multiple of ``factor_t`` (the lone first frame)."""

    def __init__(self, in_dim: int, out_dim: int, factor_t: int, factor_s: int) -> None:
        super().__init__()
        self.ft, self.fs, self.out_dim = factor_t, factor_s, out_dim
        self.group = in_dim * factor_t * factor_s * factor_s // out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad = (-x.shape[2]) % self.ft
        if pad:
            x = F.pad(x, (0, 0, 0, 0, pad, 0))
        x = rearrange(x, "b c (t ft) (h fh) (w fw) -> b (c ft fh fw) t h w",
                      ft=self.ft, fh=self.fs, fw=self.fs)
        return rearrange(x, "b (o g) t h w -> b o g t h w", o=self.out_dim).mean(dim=2)


class DupUp3D(nn.Module):
    """Wan 2.2 shortcut, the inverse of :class:`AvgDown3D`: repeat channels, unfold them into
    space/time. The clip's first chunk drops ``factor_t - 1`` leading frames (the lone first
    frame is not doubled)."""

    def __init__(self, in_dim: int, out_dim: int, factor_t: int, factor_s: int) -> None:
        super().__init__()
        self.ft, self.fs, self.out_dim = factor_t, factor_s, out_dim
        self.repeats = out_dim * factor_t * factor_s * factor_s // in_dim

    def forward(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        x = x.repeat_interleave(self.repeats, dim=1)
        x = rearrange(x, "b (c ft fh fw) t h w -> b c (t ft) (h fh) (w fw)",
                      ft=self.ft, fh=self.fs, fw=self.fs)
        if cache.first_visit(self):
            x = x[:, :, self.ft - 1:]
        return x


class DownBlock(nn.Module):
    """Wan 2.2 encoder level: residual blocks and a downsample, plus an averaging shortcut."""

    def __init__(self, in_dim: int, out_dim: int, num_res_blocks: int, temporal: bool, down: bool,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.avg_shortcut = AvgDown3D(in_dim, out_dim, 2 if temporal else 1, 2 if down else 1)
        layers = res_stack(in_dim, out_dim, num_res_blocks, dropout)
        if down:
            layers.append(Resample(out_dim, "downsample3d" if temporal else "downsample2d"))
        self.downsamples = nn.Sequential(*layers)
        self.temporal = temporal and down

    def forward(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        y = x
        for layer in self.downsamples:
            y = layer(y, cache)
        s = self.avg_shortcut(x)
        return _residual_add(y, s)


class UpBlock(nn.Module):
    """Wan 2.2 decoder level: residual blocks and an upsample, plus a duplicating shortcut."""

    def __init__(self, in_dim: int, out_dim: int, num_res_blocks: int, temporal: bool, up: bool,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.avg_shortcut = DupUp3D(in_dim, out_dim, 2 if temporal else 1, 2) if up else None
        layers = res_stack(in_dim, out_dim, num_res_blocks, dropout)
        if up:
            layers.append(Resample(out_dim, "upsample3d" if temporal else "upsample2d", up_dim=out_dim))
        self.upsamples = nn.Sequential(*layers)
        self.temporal = temporal and up

    def forward(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        y = x
        for layer in self.upsamples:
            y = layer(y, cache)
        if self.avg_shortcut is None:
            return y
        s = self.avg_shortcut(x, cache)
        return _residual_add(y, s)
