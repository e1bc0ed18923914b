"""Spatial tiling for the Wan VAE: overlapping tiles, each with its own causal cache,
blended with linear ramps that sum to one.

Tiles are planned on the latent grid, so tile edges always fall on whole latent pixels.
Time stays the outer loop (every tile advances one chunk, then the blended chunk is
emitted), so a decode callback still receives frames as they are finished.
"""
from __future__ import annotations

from typing import Callable, Iterable, Iterator

import torch

from .cache import CausalCache

Stream = Callable[[torch.Tensor, CausalCache, bool], Iterable[torch.Tensor]]


def tile_spans(size: int, tile: int, overlap: int) -> list[tuple[int, int]]:
    """[start, end) spans of length ``tile`` covering ``range(size)``, neighbours overlapping by
    at least ``overlap``; the last span is aligned to the end."""
    if size <= tile:
        return [(0, size)]
    step = tile - overlap
    starts = list(range(0, size - tile, step)) + [size - tile]
    return [(s, s + tile) for s in starts]


def ramp_weights(spans: list[tuple[int, int]], scale: int) -> list[torch.Tensor]:
    """Per-span 1-D blend weights (in output units = span * scale), normalised to sum to 1."""
    size = spans[-1][1] * scale
    raw = []
    for k, (a, b) in enumerate(spans):
        w = torch.ones((b - a) * scale, dtype=torch.float64)
        if k > 0 and spans[k - 1][1] > a:            # fade in over the overlap with the left tile
            n = (spans[k - 1][1] - a) * scale
            w[:n] = (torch.arange(n, dtype=torch.float64) + 0.5) / n
        if k + 1 < len(spans) and spans[k + 1][0] < b:  # fade out over the overlap with the right
            n = (b - spans[k + 1][0]) * scale
            w[-n:] = torch.minimum(w[-n:], (torch.arange(n, 0, -1, dtype=torch.float64) - 0.5) / n)
        raw.append(w)
    total = torch.zeros(size, dtype=torch.float64)
    for (a, b), w in zip(spans, raw):
        total[a * scale:b * scale] += w
    return [w / total[a * scale:b * scale] for (a, b), w in zip(spans, raw)]


class TileGrid:
    """Overlapping tiles over a latent grid of ``latent_hw``; ``factor`` = input pixels per
    latent pixel of the stream (after any patchify). ``decode``: the stream maps latents to
    pixels (inputs in latent units, outputs x factor); otherwise pixels to latents."""

    def __init__(self, latent_hw: tuple[int, int], tile: tuple[int, int], overlap: tuple[int, int],
                 factor: int, decode: bool) -> None:
        self.factor, self.decode = factor, decode
        self.out_hw = tuple(s * factor for s in latent_hw) if decode else tuple(latent_hw)
        out_scale = factor if decode else 1
        spans = [tile_spans(s, t, o) for s, t, o in zip(latent_hw, tile, overlap)]
        weights = [ramp_weights(sp, out_scale) for sp in spans]
        self.tiles = [(ha, hb, wa, wb, wh[:, None] * ww[None, :])
                      for (ha, hb), wh in zip(spans[0], weights[0]) for (wa, wb), ww in zip(spans[1], weights[1])]

    @classmethod
    def plan(cls, latent_hw: tuple[int, int], tile_px: tuple[int, int], overlap_px: tuple[int, int] | None,
             stride_hw: tuple[int, int], patch: int, decode: bool) -> "TileGrid":
        """From a tile size and overlap in video pixels (rounded down to whole latent pixels)."""
        tile = tuple(max(1, t // s) for t, s in zip(tile_px, stride_hw))
        if overlap_px is None:
            overlap = tuple(max(1, t // 4) for t in tile)
        else:
            overlap = tuple(o // s for o, s in zip(overlap_px, stride_hw))
        if any(o >= t for o, t in zip(overlap, tile)) or any(o < 0 for o in overlap):
            raise ValueError(f"tile overlap {overlap_px} px must be smaller than the tile {tile_px} px "
                             f"(in latent pixels: overlap {overlap}, tile {tile}, stride {stride_hw})")
        return cls(latent_hw, tile, overlap, stride_hw[0] // patch, decode)

    def run(self, x: torch.Tensor, stream: Stream, finish: Callable[[torch.Tensor], torch.Tensor],
            chunked: bool) -> Iterator[torch.Tensor]:
        """Run ``stream`` on every tile of ``x`` (B, C, T, H, W), time chunk by time chunk,
        and yield the blended chunks."""
        f_in = 1 if self.decode else self.factor
        f_out = self.factor if self.decode else 1
        streams = [iter(stream(x[:, :, :, ha * f_in:hb * f_in, wa * f_in:wb * f_in], CausalCache(), chunked))
                   for ha, hb, wa, wb, _ in self.tiles]
        for pieces in zip(*streams):
            acc = None
            for piece, (ha, hb, wa, wb, w) in zip(pieces, self.tiles):
                piece = finish(piece)
                if acc is None:
                    acc = piece.new_zeros(*piece.shape[:3], *self.out_hw)
                acc[..., ha * f_out:hb * f_out, wa * f_out:wb * f_out] += piece * w.to(piece)
            yield acc
