"""Shared helpers for the DiT tests: tiny configs and random official-layout weights."""
from __future__ import annotations

import torch

from spacetime_video.model.dit import WanDiT
from spacetime_video.model.dit.config import DiTConfig, tiny_config

# Tiny versions of each variant. text_len 512: diffusers hard-codes 512 text tokens for I2V.
TINY = {
    "t2v": tiny_config(text_len=512),
    "i2v": tiny_config(text_len=512, in_dim=36, model_type="i2v", img_emb=True, clip_dim=1280),
    "flf2v": tiny_config(text_len=512, in_dim=36, model_type="flf2v", img_emb=True, flf_pos_len=514),
    "ti2v": tiny_config(text_len=512, in_dim=48, out_dim=48, model_type="ti2v"),
    "i2v-a14b": tiny_config(text_len=512, in_dim=36, model_type="i2v"),  # Wan 2.2: no CLIP branch
}


def random_state_dict(cfg: DiTConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random official-layout weights with every parameter non-trivial (norm gains near 1)."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for name, p in WanDiT(cfg).state_dict().items():
        if p.ndim >= 2 and "modulation" not in name and "emb_pos" not in name:
            fan_in = p[0].numel()
            sd[name] = torch.randn(p.shape, generator=g) / fan_in ** 0.5
        elif name.endswith("weight") and p.ndim == 1:
            sd[name] = 1 + 0.2 * torch.randn(p.shape, generator=g)
        else:
            sd[name] = 0.2 * torch.randn(p.shape, generator=g)
    return sd


def inputs(cfg: DiTConfig, b: int = 1, t: int = 3, hw: int = 8, text: int = 20, seed: int = 1):
    """(x, timestep, context unpadded, clip_fea or None) for a tiny config."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, cfg.in_dim, t, hw, hw, generator=g)
    ts = torch.tensor([937.5, 211.0][:b])
    ctx = torch.randn(b, text, cfg.text_dim, generator=g)
    clip = None
    if cfg.img_emb:
        clip = torch.randn(b, cfg.flf_pos_len or 257, cfg.clip_dim, generator=g)
    return x, ts, ctx, clip


def pad_text(ctx: torch.Tensor, n: int = 512) -> torch.Tensor:
    return torch.nn.functional.pad(ctx, (0, 0, 0, n - ctx.shape[1]))


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())
