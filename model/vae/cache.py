"""The causal feature cache of the Wan video VAE.

The Wan VAE is causal in time: every temporal convolution sees only the current and earlier
frames. A clip can therefore be processed in short time chunks (the official code and
ComfyUI use 1, 4, 4, ... frames when encoding and one latent frame when decoding) if each
layer remembers the last frames of its input from the previous chunk. This object is that
memory, for one clip (one spatial tile) at a time.

Entries are keyed by the layer module itself, so there is no call-order cursor: a layer
asks for *its* frames. A fresh ``CausalCache`` means "the clip starts here".
"""
from __future__ import annotations

import torch
from torch import nn


class CausalCache:
    """Per-layer memory carried between the time chunks of one clip.

    * ``take``/``keep``: the context frames of a causal convolution or temporal downsampler
      (the last ``kernel_t - 1`` input frames, or the last frame for the stride-2 conv).
    * ``first_visit``: whether a layer is seeing the clip's first chunk; the temporal
      up/downsamplers treat the very first frame specially (it is passed through alone,
      which is what makes the VAE accept ``4k + 1`` frames).
    """

    def __init__(self) -> None:
        self._frames: dict[nn.Module, tuple[torch.Tensor, ...]] = {}
        self._visited: set[nn.Module] = set()

    def take(self, layer: nn.Module) -> tuple[torch.Tensor, ...] | None:
        """The frames ``layer`` kept from the previous chunk, oldest first, as pieces to be
        concatenated along time (removed from the cache)."""
        return self._frames.pop(layer, None)

    def keep(self, layer: nn.Module, frames: tuple[torch.Tensor, ...]) -> None:
        """Remember ``frames`` (B, C, t, H, W pieces, oldest first) for ``layer``'s next chunk.
        Do not pass a view of a large tensor: it would keep the whole of it alive."""
        self._frames[layer] = tuple(frames)

    def first_visit(self, layer: nn.Module) -> bool:
        """True the first time ``layer`` asks (the clip's first chunk), False afterwards."""
        if layer in self._visited:
            return False
        self._visited.add(layer)
        return True

    def nbytes(self) -> int:
        """Memory held by the cached frames (bytes)."""
        return sum(t.numel() * t.element_size() for parts in self._frames.values() for t in parts)

    def __len__(self) -> int:
        return len(self._frames)
