"""The VAE decode split across ranks: each rank decodes one horizontal band of the latent with
``halo`` latent rows shared with each neighbour, and the bands are gathered and blended with
the VAE's tile ramps (model/vae/tiling.py). The result is the one-process tiled decode with the
same bands, ``vae.decode(z, tile=(band, width), tile_overlap=(halo, 0))`` in pixels; the
decoder's activations on a rank are about 1/N of one process's, plus the halo.
"""
from __future__ import annotations

from datetime import timedelta

import torch
import torch.distributed as dist

from ..vae import WanVAE
from ..vae.tiling import ramp_weights, tile_spans
from .groups import DEFAULT_TIMEOUT_S, ParallelError


def bands(rows: int, parts: int, halo: int) -> tuple[int, list[tuple[int, int]]]:
    """The band height (latent rows) whose tiling of ``rows`` with overlap ``halo`` gives exactly
    ``parts`` bands, and the bands; a ValueError when the latent is too short for that many."""
    if parts == 1:
        return rows, [(0, rows)]
    for tile in range(-(-rows // parts) + halo, rows):
        spans = tile_spans(rows, tile, halo)
        if len(spans) == parts:
            return tile, spans
    raise ValueError(f"a latent of {rows} rows cannot be split into {parts} bands overlapping by {halo} rows: "
                     f"use at most {max(1, rows // (halo + 1))} ranks for the decode, or a smaller halo")


@torch.no_grad()
def sharded_decode(vae: WanVAE, z: torch.Tensor, halo: int = 2, timeout_s: float = DEFAULT_TIMEOUT_S) -> torch.Tensor:
    """``vae.decode`` of the raw latent ``z`` [B, C, T', h, w] on every rank of the default process
    group, each decoding its band; returns the whole video [B, 3, T, H, W] on every rank."""
    world, rank = dist.get_world_size(), dist.get_rank()
    sh = vae.config.stride[1]
    _, spans = bands(z.shape[3], world, halo)
    a, b = spans[rank]
    mine = vae.decode(z[:, :, :, a:b], clamp=False)              # (B, 3, T, (b - a)·sh, W)
    tall = max(e - s for s, e in spans) * sh
    pad = mine.new_zeros(*mine.shape[:3], tall, mine.shape[4])
    pad[:, :, :, :mine.shape[3]] = mine
    del mine
    parts = [torch.empty_like(pad) for _ in range(world)]
    work = dist.all_gather(parts, pad, async_op=True)
    try:
        work.wait(timedelta(seconds=timeout_s))
    except Exception as e:
        raise ParallelError(f"rank {rank}: gathering the decoded bands failed or timed out after {timeout_s:.0f} s; "
                            f"another rank has probably died ({type(e).__name__})") from e
    out = pad.new_zeros(*pad.shape[:3], z.shape[3] * sh, pad.shape[4])
    for (s, e), part, w in zip(spans, parts, ramp_weights(spans, sh)):  # same order as the tiled decode
        out[:, :, :, s * sh:e * sh] += part[:, :, :, :(e - s) * sh] * w.to(part)[:, None]
    return out.clamp_(-1, 1)
