"""Saving and loading the embedded model's three safetensors files.

Each file carries what is needed to rebuild its module in its metadata: the VAE its latent
statistics, the text encoder its frozen word list (so later vocabulary edits cannot shift
token ids under trained weights), all of them the training record.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..dit import WanDiT
from ..loading import WeightsError, load_state_dict
from ..vae import WanVAE
from . import config as C
from .text_encoder import TinyTextEncoder


def vae_with_stats(vae: WanVAE, mean: list[float], std: list[float]) -> WanVAE:
    """A copy of `vae` whose config carries the latent mean/std (normalize() uses them)."""
    cfg = dataclasses.replace(vae.config, latents_mean=tuple(mean), latents_std=tuple(std))
    out = WanVAE(cfg)
    out.load_state_dict(vae.state_dict())
    return out.eval()


def _save(path: Path, module: torch.nn.Module, meta: dict) -> None:
    sd = {k: v.detach().float().contiguous() for k, v in module.state_dict().items()}
    save_file(sd, str(path), metadata={k: json.dumps(v) for k, v in meta.items()})


def save_embedded(folder: Path, vae: WanVAE, dit: WanDiT, text: TinyTextEncoder, record: dict) -> None:
    """Write vae / dit / text_encoder .safetensors into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    _save(folder / C.VAE_FILE, vae, {"latents_mean": list(vae.config.latents_mean),
                                     "latents_std": list(vae.config.latents_std), "training": record})
    _save(folder / C.DIT_FILE, dit, {"training": record})
    _save(folder / C.TEXT_FILE, text, {"words": list(text.tokenizer.words), "training": record})


def read_meta(path: Path) -> dict:
    if not path.is_file():
        raise WeightsError(f"embedded model file missing: {path}; train it with "
                           "scripts/train_embedded.py or restore it from git")
    with safe_open(str(path), "pt") as f:
        return {k: json.loads(v) for k, v in (f.metadata() or {}).items()}


def load_parts(folder: Path, device: str | torch.device = "cpu") -> tuple[WanVAE, WanDiT, TinyTextEncoder, dict]:
    """(vae, dit, text_encoder, training record) from the files in `folder`, in eval mode."""
    folder = Path(folder)
    vmeta = read_meta(folder / C.VAE_FILE)
    vae = WanVAE(dataclasses.replace(C.VAE_CONFIG, latents_mean=tuple(vmeta["latents_mean"]),
                                     latents_std=tuple(vmeta["latents_std"])))
    vae.load_state_dict(load_state_dict(folder / C.VAE_FILE))
    dit = WanDiT(C.DIT_CONFIG)
    dit.load_state_dict(load_state_dict(folder / C.DIT_FILE))
    tmeta = read_meta(folder / C.TEXT_FILE)
    text = TinyTextEncoder(C.TEXT_CONFIG, words=tuple(tmeta["words"]))
    text.load_state_dict(load_state_dict(folder / C.TEXT_FILE))
    return vae.to(device).eval(), dit.to(device).eval(), text.to(device).eval(), vmeta.get("training", {})
