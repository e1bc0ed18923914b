"""Spacetime patches: latent video <-> token sequence, and the 3D RoPE tables of a grid.

Tokens are ordered (t, h, w) row-major, as Wan's Conv3d patch embedding flattens them. The
patch embedding is applied as one matmul on unfolded patches (same maths as the Conv3d with
kernel = stride = patch size, which is what the checkpoints store as ``patch_embedding``).
RoPE follows Wan (Wan-Video/Wan2.1 ``wan/modules/model.py``: ``rope_params``/``rope_apply``):
the head dimension's complex pairs are split into time / height / width parts
(``c - 2*(c//3), c//3, c//3`` pairs for ``c = head_dim/2``), each rotated by its axis index.
Tables are built once per (grid, head_dim) and cached, never per step or per block.
"""
from __future__ import annotations

import functools
import math

import torch

from ..sizes import nearest_multiple

Grid = tuple[int, int, int]  # tokens along (t, h, w)


class LatentShapeError(ValueError):
    """A latent that the model cannot take; the message says what it expects."""


def grid_of(shape: torch.Size | tuple[int, ...], patch_size: Grid, in_dim: int) -> Grid:
    """Token grid of a latent ``[B, C, T, H, W]``, after checking it fits the model."""
    if len(shape) != 5:
        raise LatentShapeError(f"the DiT takes a latent video [B, C, T, H, W]; got shape {tuple(shape)}"
                               " (add a frame axis for a single image: T = 1)")
    _, c, t, h, w = shape
    if c != in_dim:
        extra = " (I2V/FLF2V: 16 noise + 4 mask + 16 image-latent channels)" if in_dim == 36 else ""
        raise LatentShapeError(f"the model expects {in_dim} latent channels{extra}, got {c}")
    pt, ph, pw = patch_size
    if t % pt or h % ph or w % pw:
        raise LatentShapeError(
            f"latent T x H x W = {t} x {h} x {w} does not fit the patch grid {pt} x {ph} x {pw}: each "
            f"must be a multiple; nearest valid H x W: {nearest_multiple(h, ph)} x {nearest_multiple(w, pw)} (pixel sizes "
            "must be multiples of the VAE stride times the patch size, e.g. 16 for Wan 2.1)")
    return t // pt, h // ph, w // pw


def patchify(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
             patch_size: Grid, tokens: slice = slice(None)) -> torch.Tensor:
    """Embed patches: ``x`` (B, C, T, H, W) -> tokens (B, L, dim), L = T'H'W' in (t, h, w) order;
    only the ``tokens`` range of that sequence when given (a rank's share in a parallel run).

    ``weight`` is the Conv3d kernel (dim, C, pt, ph, pw); the result equals the strided conv.
    """
    b, c, t, h, w = x.shape
    pt, ph, pw = patch_size
    x = x.view(b, c, t // pt, pt, h // ph, ph, w // pw, pw)
    x = x.permute(0, 2, 4, 6, 1, 3, 5, 7).reshape(b, -1, c * pt * ph * pw)[:, tokens]  # (B, n, C*pt*ph*pw)
    return torch.nn.functional.linear(x, weight.flatten(1).to(x.dtype),
                                      None if bias is None else bias.to(x.dtype))


def unpatchify(tokens: torch.Tensor, grid: Grid, patch_size: Grid, out_dim: int) -> torch.Tensor:
    """Inverse of the token layout: (B, L, out_dim*pt*ph*pw) -> (B, out_dim, T, H, W).

    Each token's features are ordered (pt, ph, pw, c), as Wan's head writes them.
    """
    b = tokens.shape[0]
    (gt, gh, gw), (pt, ph, pw) = grid, patch_size
    u = tokens.view(b, gt, gh, gw, pt, ph, pw, out_dim)
    u = u.permute(0, 7, 1, 4, 2, 5, 3, 6)  # (B, C, T', pt, H', ph, W', pw)
    return u.reshape(b, out_dim, gt * pt, gh * ph, gw * pw)


def rope_split(head_dim: int) -> tuple[int, int, int]:
    """Complex pairs given to the (t, h, w) axes; e.g. head_dim 128 -> (22, 21, 21)."""
    c = head_dim // 2
    return c - 2 * (c // 3), c // 3, c // 3


@functools.lru_cache(maxsize=32)
def rope_table(grid: Grid, head_dim: int, theta: float = 10000.0,
               device: torch.device | str = "cpu") -> torch.Tensor:
    """Unit complex rotations of every token, (L, 1, head_dim/2) complex64, cached per grid.

    Angles are computed in float64 (as the official code) and stored in single precision.
    """
    angles = []
    for axis, (n, pairs) in enumerate(zip(grid, rope_split(head_dim))):
        inv = 1.0 / theta ** (torch.arange(0, 2 * pairs, 2, dtype=torch.float64) / (2 * pairs))
        a = torch.outer(torch.arange(n, dtype=torch.float64), inv)  # (n, pairs)
        view = [1, 1, 1, pairs]
        view[axis] = n
        angles.append(a.view(view).expand(*grid, pairs))
    ang = torch.cat(angles, dim=-1).reshape(math.prod(grid), 1, head_dim // 2)
    return torch.polar(torch.ones_like(ang), ang).to(device=device, dtype=torch.complex64)


def apply_rope(x: torch.Tensor, freqs: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    """Rotate adjacent pairs of ``x`` (B, L, heads, head_dim) by the table; float32 result.
    ``inplace=True`` rotates a contiguous float32 ``x`` that autograd does not track in place
    (the DiT passes its own q/k temporaries) instead of making a second copy.

    One complex multiply per pair: (x0 + i x1)(cos + i sin).
    """
    if inplace and x.dtype == torch.float32 and x.is_contiguous() and not x.requires_grad:
        return torch.view_as_real(torch.view_as_complex(x.unflatten(-1, (-1, 2))).mul_(freqs)).flatten(-2)
    xc = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)).contiguous())
    return torch.view_as_real(xc * freqs).flatten(-2)
