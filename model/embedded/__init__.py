"""The embedded tiny model that ships with the pack (inference only): configs, vocabulary, text
encoder, weights. ``load_embedded()`` gives its parts (``distilled=True``: the DiT with the 4-step
distilled LoRA merged in); ``pipeline.generate_embedded`` generates."""
from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path

from ..dit import WanDiT
from ..vae import WanVAE
from ..weights.lora import apply_lora
from . import config
from .loading import load_parts, load_text_encoder, read_metadata
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


@lru_cache(maxsize=2)
def _load_distilled(folder: str, device: str) -> EmbeddedModel:
    base = _load_cached(folder, device)
    lora = Path(folder) / config.DISTILL_FILE
    read_metadata(lora)                      # a missing file is named as such
    dit = apply_lora(copy.deepcopy(base.dit), lora)
    return replace(base, dit=dit.eval())     # the VAE and text encoder are shared with the base model


def load_embedded(folder: str | Path | None = None, device: str = "cpu", distilled: bool = False) -> EmbeddedModel:
    """The shipped tiny model (``model/embedded/weights/``), or one saved elsewhere; cached.
    ``distilled``: its DiT with the folder's 4-step LoRA (``config.DISTILL_FILE``) merged in, to be
    sampled with ``config.DISTILLED_STEPS`` steps of ``config.DISTILLED_SOLVER`` and no guidance."""
    load = _load_distilled if distilled else _load_cached
    return load(str(folder or config.WEIGHTS_DIR), device)
