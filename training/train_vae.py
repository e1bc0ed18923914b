"""Training of the embedded VAE (a narrow Wan 2.1 VAE) on crops of synthetic clips.

The VAE is fully convolutional and causal in time, so it learns from small space-time crops
(cheap on a CPU) and runs on whole 64x64x17 clips afterwards. Loss: MSE + 0.3 L1 on pixels, object pixels weighted 5x,
L1 on spatial pixel differences (edges), a small penalty on the latent mean, and Gaussian noise
on the latent, scaled to each channel's spread, so the latent space is smooth and the decoder
tolerates a DiT's imperfect latents.
"""
from __future__ import annotations

import logging
import math
import random
from dataclasses import dataclass

import torch

from ..model.vae import WanVAE
from . import world

log = logging.getLogger("spacetime.embedded.train")


@dataclass(frozen=True)
class VAETrainConfig:
    steps: int = 1500
    batch: int = 8
    crop: int = 32          # pixels per side of a training crop
    frames: int = 5         # frames per crop (4k+1)
    lr: float = 1e-3
    latent_noise: float = 0.1     # noise std relative to each latent channel's batch std
    latent_l2: float = 1e-4
    edge_weight: float = 0.5      # weight of the loss on spatial differences (sharp edges)
    seed: int = 0
    decoder_only: bool = False  # freeze the encoder (latents stay valid for a DiT trained on them)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of two videos in [-1, 1], measured on the 0..1 scale."""
    mse = float((((a.clamp(-1, 1) - b.clamp(-1, 1)) / 2) ** 2).mean())
    return 10 * math.log10(1 / max(mse, 1e-12))


def crop_batch(rng: random.Random, cfg: VAETrainConfig) -> torch.Tensor:
    """[B, 3, frames, crop, crop] crops of fresh training clips, most of them on an object."""
    out = []
    for _ in range(cfg.batch):
        clip = world.sample_clip(rng.randrange(10**9))
        t0 = rng.randrange(0, world.FRAMES - cfg.frames + 1)
        size = world.SIZE
        if rng.random() < 0.75:  # centre the crop near the object at that time
            o = clip.objects[rng.randrange(len(clip.objects))]
            a = t0 / (world.FRAMES - 1)
            cx = o.start[0] + a * (o.end[0] - o.start[0]) + rng.uniform(-10, 10)
            cy = o.start[1] + a * (o.end[1] - o.start[1]) + rng.uniform(-10, 10)
            x0 = int(min(max(cx - cfg.crop / 2, 0), size - cfg.crop))
            y0 = int(min(max(cy - cfg.crop / 2, 0), size - cfg.crop))
        else:
            x0, y0 = rng.randrange(size - cfg.crop + 1), rng.randrange(size - cfg.crop + 1)
        out.append(clip.video[:, t0:t0 + cfg.frames, y0:y0 + cfg.crop, x0:x0 + cfg.crop])
    return torch.stack(out)


def vae_loss(vae: WanVAE, x: torch.Tensor, cfg: VAETrainConfig,
             generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, reconstruction) for a batch x [B, 3, T, H, W] in [-1, 1]."""
    mu, _ = vae.encode_moments(x, chunked=False)                      # (B, z, T', h, w)
    # Noise scaled to each channel's own spread: the encoder cannot outgrow it by inflating the
    # latent, so the decoder must map a whole neighbourhood of a latent to the same clip. That
    # keeps the latent space smooth (what a KL term is for) without a weight to tune.
    scale = mu.detach().transpose(0, 1).flatten(1).std(dim=1).view(1, -1, 1, 1, 1)
    z = mu + cfg.latent_noise * scale * torch.randn(mu.shape, generator=generator)
    y = vae.decode(z, chunked=False, clamp=False)
    # Object pixels are a small part of a frame: weight them 5x so colour and edges are learnt
    # early rather than after the background is perfect.
    bg = x.flatten(2).median(dim=2).values[:, :, None, None, None]   # (B, 3, 1, 1, 1)
    w = 1 + 4 * ((x - bg).abs().amax(dim=1, keepdim=True) > 0.1).float()
    err = (y - x) ** 2 + 0.3 * (y - x).abs()
    loss = (err * w).mean() / w.mean() + cfg.latent_l2 * mu.pow(2).mean()
    if cfg.edge_weight:
        # Differences of neighbouring pixels: a blurred edge costs more than under plain MSE,
        # which is what decides whether a small square still reads as a square.
        for d in (3, 4):
            loss = loss + cfg.edge_weight * (y.diff(dim=d) - x.diff(dim=d)).abs().mean()
    return loss, y


class VAETrainer:
    """Optimizer and data stream for `vae`; `step()` runs one batch and returns (loss, psnr)."""

    def __init__(self, vae: WanVAE, cfg: VAETrainConfig = VAETrainConfig()) -> None:
        self.vae, self.cfg = vae, cfg
        if cfg.decoder_only:
            vae.encoder.requires_grad_(False)
            vae.conv1.requires_grad_(False)
        params = [p for p in vae.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0, betas=(0.9, 0.99))
        self.rng = random.Random(cfg.seed)
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.step_no = 0

    def lr(self) -> float:
        warm = min(1.0, (self.step_no + 1) / 50)
        frac = self.step_no / max(self.cfg.steps, 1)
        return self.cfg.lr * warm * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0))))

    def step(self, x: torch.Tensor | None = None) -> tuple[float, float]:
        """One optimizer step on `x` [B, 3, T, H, W] (default: fresh crops)."""
        self.vae.train()
        x = crop_batch(self.rng, self.cfg) if x is None else x
        for g in self.opt.param_groups:
            g["lr"] = self.lr()
        loss, y = vae_loss(self.vae, x, self.cfg, self.gen)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in self.vae.parameters() if p.requires_grad], 1.0)
        self.opt.step()
        self.step_no += 1
        return float(loss.detach()), psnr(y.detach(), x)


@torch.no_grad()
def latent_stats(vae: WanVAE, seeds: list[int], batch: int = 8) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of the raw latents of training clips (for normalize())."""
    vae.eval()
    zs = [vae.encode(world.batch(seeds[i:i + batch])[0]) for i in range(0, len(seeds), batch)]
    z = torch.cat(zs).transpose(0, 1).flatten(1)                       # (z_dim, N)
    return z.mean(1).tolist(), z.std(1).clamp_min(1e-3).tolist()


@torch.no_grad()
def heldout_psnr(vae: WanVAE, n: int = 16, batch: int = 4) -> float:
    """Mean reconstruction PSNR over n held-out clips (whole 64x64x17 clips)."""
    vae.eval()
    vals = []
    for i in range(0, n, batch):
        x = world.batch(list(range(i, min(i + batch, n))), split="heldout")[0]
        y = vae.decode(vae.encode(x))
        vals += [psnr(y[j], x[j]) for j in range(x.shape[0])]
    return sum(vals) / len(vals)
