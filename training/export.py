"""Writing the embedded model's three safetensors files, in the form
``model.embedded.loading`` reads: the VAE with its latent statistics, the text encoder with its
frozen word list, every file with the training record (metadata values as JSON)."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..model.dit import WanDiT
from ..model.embedded import config as C
from ..model.embedded.text_encoder import TinyTextEncoder
from ..model.vae import WanVAE


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
