"""The embedded model's latent-to-RGB preview factors (``model/embedded/config.py``,
``LATENT_RGB_FACTORS`` / ``LATENT_RGB_BIAS``).

ComfyUI previews a latent during sampling by one linear map per latent pixel, from its channels to
a colour (``latent_preview.Latent2RGBPreviewer``, the ``latent_rgb_factors`` of a latent format),
applied to the first latent frame. The map is a least-squares fit of the colour each latent pixel
covers on its normalised latent: first frames of the synthetic world's training clips through the
shipped VAE (the causal VAE encodes a first frame alone), each latent pixel against the mean of
its stride x stride pixels. A ridge term keeps the map small: the latents ComfyUI previews are a
sampler's estimates, off the data's manifold early on or in few steps, and an unpenalised fit
turns their deviations into wild colours. Mean absolute error in [-1, 1], unpenalised -> ridge
0.01: latents of 3 clips the model generated in 4 steps 0.37 -> 0.12, in 20 steps 0.16 -> 0.12;
held-out clips' own latents 0.12 -> 0.14.

    python -m spacetime_video.training.latent_rgb [--clips 512]
"""
from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F

from ..model.vae import WanVAE
from . import world


def first_latent_frame(vae: WanVAE, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Images [B, 3, H, W] in [-1, 1] -> (their normalised latent [B, C, h, w], the mean colour
    each latent pixel covers [B, 3, h, w])."""
    with torch.no_grad():
        z = vae.normalize(vae.encode(images[:, :, None]))[:, :, 0].float()   # (B, C, h, w)
    return z, F.adaptive_avg_pool2d(images.float(), z.shape[-2:])


def fit_latent_rgb(vae: WanVAE, images: torch.Tensor, ridge: float = 0.01) -> tuple[list[list[float]], list[float]]:
    """(factors: one [r, g, b] row per latent channel, bias [r, g, b]) of the ridge least-squares
    map from ``vae``'s normalised latent to the colours of ``images`` [B, 3, H, W] in [-1, 1];
    ``ridge`` per latent pixel fitted, the bias not penalised."""
    z, target = first_latent_frame(vae, images)
    x = z.movedim(1, -1).reshape(-1, z.shape[1]).double()                     # (N, C)
    x = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], dim=1)           # (N, C + 1)
    y = target.movedim(1, -1).reshape(-1, 3).double()                         # (N, 3)
    penalty = torch.eye(x.shape[1], dtype=x.dtype) * ridge * len(x)
    penalty[-1, -1] = 0
    solution = torch.linalg.solve(x.T @ x + penalty, x.T @ y).float()         # (C + 1, 3)
    round4 = lambda row: [round(v, 4) for v in row.tolist()]                  # noqa: E731
    return [round4(r) for r in solution[:-1]], round4(solution[-1])


def preview(z: torch.Tensor, factors, bias) -> torch.Tensor:
    """What the factors show of a normalised latent [B, C, ...]: colours [B, 3, ...] in [-1, 1]."""
    weight = torch.tensor(factors, dtype=z.dtype).T                           # (3, C)
    return F.linear(z.movedim(1, -1), weight, torch.tensor(bias, dtype=z.dtype)).movedim(-1, 1)


def first_frames(seeds: list[int], split: str = "train") -> torch.Tensor:
    """First frames [B, 3, H, W] of the synthetic world's clips of ``seeds``."""
    return torch.stack([world.sample_clip(s, split, frames=1).video[:, 0] for s in seeds])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=512, help="training clips of the synthetic world to fit on")
    args = ap.parse_args(argv)
    from ..model.embedded import load_embedded

    factors, bias = fit_latent_rgb(load_embedded().vae, first_frames(list(range(args.clips))))
    print(json.dumps({"LATENT_RGB_FACTORS": factors, "LATENT_RGB_BIAS": bias}))   # noqa: T201


if __name__ == "__main__":
    main()
