"""The embedded model's text encoder: a word-level tokenizer and a small transformer.

It stands in for umT5 at toy scale: captions of the synthetic world become a context
[B, L, text_dim] for the DiT's cross-attention. Padding positions are zeroed in the output
(as Wan zero-pads umT5's output to text_len), and every caption starts with a <bos> token,
so the empty caption (classifier-free guidance's unconditional input) has a learned,
non-zero embedding. Words outside the vocabulary map to <unk>.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import torch
import torch.nn as nn

from .vocab import BACKGROUNDS, COLOURS, MOTIONS, SHAPES, SYNONYMS

SPECIALS = ("<pad>", "<bos>", "<unk>")
# Words of the caption templates (world.py) and common filler a user may type.
_FILLER = ("a an the on in across against plain backdrop background scene where while and of "
           "with to is are its it")


def build_vocabulary() -> tuple[str, ...]:
    """Every word the world's captions use: specials first, then sorted words (stable ids)."""
    words: set[str] = set(_FILLER.split())
    for name in (*COLOURS, *BACKGROUNDS, *SHAPES, *MOTIONS):
        words.update(split_words(name))
    for alts in SYNONYMS.values():
        for phrase in alts:
            words.update(split_words(phrase))
    return SPECIALS + tuple(sorted(words))


def split_words(text: str) -> list[str]:
    """Lower-case words; hyphens split words ("sand-coloured" -> "sand", "coloured")."""
    return re.findall(r"[a-z]+", text.lower())


@dataclass(frozen=True)
class TextEncoderConfig:
    """Sizes of the tiny text encoder. `max_len` bounds the caption (with <bos>)."""

    vocab_size: int = 128       # >= len(build_vocabulary()); spare ids stay unused
    max_len: int = 24
    dim: int = 64
    heads: int = 4
    layers: int = 2
    text_dim: int = 64          # output width = the DiT's text_dim


class Tokenizer:
    """Words -> ids over `build_vocabulary()`; pads or truncates to `max_len`."""

    def __init__(self, max_len: int = 24, words: tuple[str, ...] | None = None) -> None:
        self.words = tuple(words) if words else build_vocabulary()
        self.ids = {w: i for i, w in enumerate(self.words)}
        self.max_len = max_len

    def __call__(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """ids [B, max_len] (long) and mask [B, max_len] (bool, True on real tokens)."""
        unk, bos = self.ids["<unk>"], self.ids["<bos>"]
        ids = torch.zeros(len(texts), self.max_len, dtype=torch.long)
        for b, text in enumerate(texts):
            toks = [bos] + [self.ids.get(w, unk) for w in split_words(text)]
            toks = toks[: self.max_len]
            ids[b, : len(toks)] = torch.tensor(toks)
        return ids, ids != 0


class TinyTextEncoder(nn.Module):
    """Token + position embeddings, pre-norm transformer encoder layers, a final norm and a
    projection to `text_dim`. forward(ids, mask) -> [B, L, text_dim], zero where padded."""

    def __init__(self, config: TextEncoderConfig = TextEncoderConfig(),
                 words: tuple[str, ...] | None = None) -> None:
        super().__init__()
        n_words = len(words or build_vocabulary())
        if config.vocab_size < n_words:
            raise ValueError(f"TextEncoderConfig.vocab_size={config.vocab_size} is smaller than the "
                             f"{n_words} words of the vocabulary; raise it")
        self.config = config
        self.tokenizer = Tokenizer(config.max_len, words)
        self.token_emb = nn.Embedding(config.vocab_size, config.dim)
        self.pos_emb = nn.Parameter(torch.randn(config.max_len, config.dim) * 0.02)
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(config.dim, config.heads, 4 * config.dim, dropout=0.0,
                                       activation="gelu", batch_first=True, norm_first=True)
            for _ in range(config.layers))
        self.norm = nn.LayerNorm(config.dim)
        self.proj = nn.Linear(config.dim, config.text_dim)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.token_emb(ids) + self.pos_emb[: ids.shape[1]]                # (B, L, dim)
        for layer in self.layers:
            x = layer(x, src_key_padding_mask=~mask)
        x = self.proj(self.norm(x))                                           # (B, L, text_dim)
        return x * mask.unsqueeze(-1).to(x.dtype)

    def encode(self, texts: list[str]) -> torch.Tensor:
        """Captions -> context [B, max_len, text_dim] on this module's device."""
        ids, mask = self.tokenizer(list(texts))
        dev = self.token_emb.weight.device
        return self(ids.to(dev), mask.to(dev))
