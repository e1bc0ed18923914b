"""The embedded tiny model that ships with the pack (inference only): configs, vocabulary, text
encoder, weights. ``load_embedded()`` gives its parts; ``pipeline.generate_embedded`` generates."""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from ..dit import WanDiT
from ..vae import WanVAE
from . import config
from .loading import load_parts, load_text_encoder
from .text_encoder import TinyTextEncoder

__all__ = ["EmbeddedModel", "load_embedded", "load_text_encoder", "config"]


@dataclass
class EmbeddedModel:
    """The three trained parts and their training record."""

    vae: WanVAE
    dit: WanDiT
    text_encoder: TinyTextEncoder
    record: dict


@lru_cache(maxsize=2)
def _load_cached(folder: str, device: str) -> EmbeddedModel:
    return EmbeddedModel(*load_parts(Path(folder), device))


def load_embedded(folder: str | Path | None = None, device: str = "cpu") -> EmbeddedModel:
    """The shipped tiny model (``model/embedded/weights/``), or one saved elsewhere; cached."""
    return _load_cached(str(folder or config.WEIGHTS_DIR), device)
