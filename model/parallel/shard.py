"""Which tokens a rank holds: the (t, h, w) sequence cut into contiguous runs of whole token
rows (frames first, then rows within a frame), as even as the rows allow, and the per-token
inputs that go with them (RoPE rotations, timestep groups)."""
from __future__ import annotations

import math

import torch

from ..dit.patches import Grid


def token_shards(grid: Grid, parts: int) -> list[tuple[int, int]]:
    """``parts`` token ranges ``[start, stop)`` of a grid, each a run of whole rows: split at frame
    boundaries when the frames divide evenly, else at the row that balances the counts."""
    frames, rows, width = grid
    total_rows = frames * rows
    if parts > total_rows:
        raise ValueError(f"{parts} sequence-parallel ranks for a latent of {frames} frame(s) x {rows} token rows "
                         f"= {total_rows} rows: each rank needs at least one row; use at most {total_rows} "
                         "ranks or a larger video")
    cuts = [(i * total_rows) // parts * width for i in range(parts + 1)]
    return list(zip(cuts[:-1], cuts[1:]))


def shard_groups(t: torch.Tensor, tokens: int, start: int, stop: int) -> torch.Tensor:
    """The timestep-group tensor ``t`` (B, G, ...) of G equal groups over ``tokens`` tokens, cut
    to the tokens ``[start, stop)``: (B, g, ...) with g equal groups over those tokens. A cut
    inside a group (a frame split by rows) gives smaller groups, each one row or more."""
    g = t.shape[1]
    if g == 1:
        return t
    size = tokens // g
    step = math.gcd(size, start, stop)
    if step == size:
        return t[:, start // size:stop // size]
    return t[:, torch.arange(start, stop, step, device=t.device) // size]
