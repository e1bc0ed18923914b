"""Reading the embedded model's three safetensors files.

Each file carries in its metadata what its module needs beyond the tensors (all values JSON):
the VAE its latent statistics (``latents_mean``, ``latents_std``), the text encoder its frozen
word list (``words``, so vocabulary edits cannot shift token ids under trained weights) and
optionally its sizes (``spacetime_text_config``), every file the training record (``training``).
``training.stages`` writes them with the same keys.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import torch

from ..dit import WanDiT
from ..vae import WanVAE
from ..weights.files import WeightsError, json_metadata, load_state_dict
from . import config as C
from .text_encoder import TextEncoderConfig, TinyTextEncoder

TEXT_CONFIG_KEY = "spacetime_text_config"


def read_metadata(path: str | os.PathLike) -> dict:
    """A file's metadata with every value decoded from JSON."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"embedded model file missing: {path}; train it with "
                           "scripts/train_embedded.py or restore it from git")
    return json_metadata(path)


def load_text_encoder(path: str | os.PathLike, config: TextEncoderConfig | None = None) -> TinyTextEncoder:
    """A ``TinyTextEncoder`` from safetensors; sizes from ``config``, else the file's metadata or
    its shapes; the word list from its metadata (else the current vocabulary)."""
    meta = read_metadata(path)
    sd = load_state_dict(path)
    if "token_emb.weight" not in sd or "proj.weight" not in sd:
        raise WeightsError(f"{Path(path).name}: not a Spacetime tiny text encoder "
                           "(expected token_emb.weight and proj.weight)")
    if config is not None:
        cfg = config
    elif TEXT_CONFIG_KEY in meta:
        cfg = TextEncoderConfig(**meta[TEXT_CONFIG_KEY])
    else:
        vocab, dim = sd["token_emb.weight"].shape
        layers = len({k.split(".")[1] for k in sd if k.startswith("layers.")})
        cfg = TextEncoderConfig(vocab_size=vocab, max_len=sd["pos_emb"].shape[0], dim=dim,
                                heads=max(1, dim // 16), layers=layers, text_dim=sd["proj.weight"].shape[0])
    words = tuple(meta["words"]) if "words" in meta else None
    model = TinyTextEncoder(cfg, words=words)
    model.load_state_dict(sd)
    return model.eval()


def load_parts(folder: str | os.PathLike, device: str | torch.device = "cpu"
               ) -> tuple[WanVAE, WanDiT, TinyTextEncoder, dict]:
    """(vae, dit, text_encoder, training record) from the files in ``folder``, in eval mode."""
    folder = Path(folder)
    vmeta = read_metadata(folder / C.VAE_FILE)
    vae = WanVAE(dataclasses.replace(C.VAE_CONFIG, latents_mean=tuple(vmeta["latents_mean"]),
                                     latents_std=tuple(vmeta["latents_std"])))
    vae.load_state_dict(load_state_dict(folder / C.VAE_FILE))
    dit = WanDiT(C.DIT_CONFIG)
    dit.load_state_dict(load_state_dict(folder / C.DIT_FILE))
    text = load_text_encoder(folder / C.TEXT_FILE, C.TEXT_CONFIG)
    return vae.to(device).eval(), dit.to(device).eval(), text.to(device).eval(), vmeta.get("training", {})
