"""Training of the embedded DiT and text encoder on precomputed VAE latents.

Flow matching (Lipman et al. 2023, "Flow Matching for Generative Modeling"; the rectified-flow
form of Esser et al. 2024, "Scaling Rectified Flow Transformers"): x_s = (1 - s) x0 + s eps,
the DiT predicts v = eps - x0. Each sample draws a known-frame mode (`MODES`): known
latent frames enter clean with timestep 0 (the canvas' per-token rule) and are left out of the loss, so one model learns
text-to-video, image-to-video, extend forward/backward and connect. Captions are dropped to
"" with probability `p_uncond` so classifier-free guidance has an unconditional branch.
"""
from __future__ import annotations

import copy
import logging
import math
import random
from dataclasses import dataclass

import torch

from ..model import canvas
from ..model.dit import WanDiT
from ..model.embedded.text_encoder import TinyTextEncoder
from ..samplers import shift_sigma

log = logging.getLogger("spacetime.embedded.train")


# Known latent frames per mode, as (count at the start, count at the end).
MODES: dict[str, tuple[int, int]] = {
    "t2v": (0, 0),
    "i2v": (1, 0),            # the first frame
    "extend": (2, 0),         # the last pixel frames of a clip become the first latents
    "last": (0, 1),
    "extend_back": (0, 2),
    "connect": (1, 1),        # first and last frame (also a loop when both are the same)
    "connect_clips": (2, 2),
}
# Training frequency of each mode: text-to-video most often.
MODE_WEIGHTS: dict[str, float] = {"t2v": 0.4, "i2v": 0.15, "extend": 0.1, "last": 0.05,
                                  "extend_back": 0.1, "connect": 0.12, "connect_clips": 0.08}
# Modes of clips that only teach how a clip goes on from its first frames (the world's "walls"
# clips: a caption's motion that has run out of room is not a text-to-video answer to it).
CONTINUATION_WEIGHTS: dict[str, float] = {"i2v": 0.5, "extend": 0.5}


def frame_mask(mode: str, frames: int) -> torch.Tensor:
    """Which of `frames` latent frames are known in a mode: bool [frames]."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; valid modes: {', '.join(MODES)}")
    head, tail = MODES[mode]
    m = torch.zeros(frames, dtype=torch.bool)
    m[: min(head, frames)] = True
    if tail:
        m[-tail:] = True
    return m


def random_frame_masks(batch: int, frames: int, generator: torch.Generator | None = None,
                       weights: dict[str, float] = MODE_WEIGHTS) -> torch.Tensor:
    """A mode drawn per sample by `weights`: bool [batch, frames]."""
    names = list(weights)
    w = torch.tensor([weights[n] for n in names])
    picks = torch.multinomial(w, batch, replacement=True, generator=generator)
    return torch.stack([frame_mask(names[i], frames) for i in picks.tolist()])


@dataclass(frozen=True)
class DiTTrainConfig:
    steps: int = 4000
    batch: int = 48
    lr: float = 6e-4
    warmup: int = 200
    weight_decay: float = 0.01
    p_uncond: float = 0.1
    ema: float = 0.998
    seed: int = 0
    object_weight: float = 3.0   # extra loss weight on latent cells the object covers (see flow_loss)
    sigma_shift: float = 1.0     # training sigmas shifted toward noise like the sampler's (see sample_sigmas)


def sample_sigmas(batch: int, generator: torch.Generator, shift: float = 1.0) -> torch.Tensor:
    """Half logit-normal (SD3's choice, dense in the middle), half uniform (covers the ends);
    then the sampler's time shift `shift_sigma(s, k)` = k s / (1 + (k - 1) s), so k > 1 spends
    more of training at high noise, where a clip's layout and motion are decided (k = 2 matches
    the default sampling shift; k = 1 leaves s as it is)."""
    logit = torch.sigmoid(torch.randn(batch, generator=generator))
    uni = torch.rand(batch, generator=generator)
    pick = torch.rand(batch, generator=generator) < 0.5
    s = torch.where(pick, logit, uni)
    return shift_sigma(s, shift).clamp(1e-3, 1.0)


def flow_loss(dit: WanDiT, text: TinyTextEncoder, x0: torch.Tensor, captions: list[str],
              generator: torch.Generator, p_uncond: float = 0.1,
              cell_weight: torch.Tensor | None = None, sigma_shift: float = 1.0,
              continuation: torch.Tensor | None = None) -> torch.Tensor:
    """One flow-matching loss on normalized latents x0 [B, C, T, H, W] with random known frames.
    Samples flagged in `continuation` (bool [B]) draw their known frames from
    `CONTINUATION_WEIGHTS` instead of `MODE_WEIGHTS`.

    `cell_weight` [B, 1, T, H, W] (optional) weighs latent cells: the object covers a few of
    the 64 cells of a frame, and without extra weight the loss is mostly the easy flat
    background, while the object's colour, shape and path are what a caption asks for."""
    B, _, T, H, W = x0.shape
    drop = torch.rand(B, generator=generator) < p_uncond
    captions = ["" if d else c for c, d in zip(captions, drop.tolist())]
    context = text.encode(captions)                                       # (B, L, text_dim)
    known = random_frame_masks(B, T, generator)                           # (B, T)
    if continuation is not None and bool(continuation.any()):
        known = torch.where(continuation[:, None], random_frame_masks(B, T, generator, CONTINUATION_WEIGHTS), known)
    sigma = sample_sigmas(B, generator, sigma_shift)                      # (B,)
    eps = torch.randn(x0.shape, generator=generator)
    s = sigma.view(B, 1, 1, 1, 1)
    xs = (1 - s) * x0 + s * eps
    mask = (~known).float()[:, None, :, None, None].expand(B, 1, T, H, W)  # 1 = generate, 0 = known
    xs = canvas.replace_known(xs, x0, mask)
    t = canvas.token_timesteps(mask, 1000 * sigma, dit.config.patch_size)  # (B, tokens)
    v = dit(xs, t, context)
    err = (v - (eps - x0)) ** 2                                           # (B, C, T, H, W)
    weight = mask.expand_as(err)
    if cell_weight is not None:
        weight = weight * cell_weight
    return (err * weight).sum() / weight.sum().clamp_min(1)


def _lr(step: int, cfg: DiTTrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    frac = (step - cfg.warmup) / max(cfg.steps - cfg.warmup, 1)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0))))


class DiTTrainer:
    """Holds the models, optimizer and EMA copies; `step()` runs one batch.

    latents [N, C, T, H, W] are already normalized; `describe(i, rng)` returns a caption
    for clip i (fresh wording every time it is drawn); `object_mask` (optional, see
    `object_mask()`) raises the loss weight where the objects are; `continuation` (optional,
    bool [N]) marks the clips trained only as continuations (see `flow_loss`).
    """

    def __init__(self, dit: WanDiT, text: TinyTextEncoder, latents: torch.Tensor, describe,
                 cfg: DiTTrainConfig = DiTTrainConfig(), object_mask: torch.Tensor | None = None,
                 continuation: torch.Tensor | None = None) -> None:
        self.dit, self.text, self.latents, self.describe, self.cfg = dit, text, latents, describe, cfg
        self.continuation = continuation
        # object_mask [N, 1, T, H, W] in 0..1: where clip i's objects are, on the latent grid
        self.cell_weight = None if object_mask is None else 1 + cfg.object_weight * object_mask
        params = list(dit.parameters()) + list(text.parameters())
        self.opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.99))
        self.ema_dit = copy.deepcopy(dit).requires_grad_(False)
        self.ema_text = copy.deepcopy(text).requires_grad_(False)
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.rng = random.Random(cfg.seed)
        self.step_no = 0

    def step(self) -> float:
        cfg = self.cfg
        idx = torch.randint(0, self.latents.shape[0], (cfg.batch,), generator=self.gen)
        captions = [self.describe(int(i), self.rng) for i in idx]
        for g in self.opt.param_groups:
            g["lr"] = _lr(self.step_no, cfg)
        self.dit.train()
        self.text.train()
        cw = None if self.cell_weight is None else self.cell_weight[idx]
        loss = flow_loss(self.dit, self.text, self.latents[idx], captions, self.gen, cfg.p_uncond, cw,
                         cfg.sigma_shift, None if self.continuation is None else self.continuation[idx])
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(self.dit.parameters()) + list(self.text.parameters()), 1.0)
        self.opt.step()
        decay = min(cfg.ema, (1 + self.step_no) / (10 + self.step_no))
        with torch.no_grad():
            for ema, live in ((self.ema_dit, self.dit), (self.ema_text, self.text)):
                for pe, pl in zip(ema.parameters(), live.parameters()):
                    pe.lerp_(pl, 1 - decay)
        self.step_no += 1
        return float(loss.detach())

    def state(self) -> dict[str, torch.Tensor]:
        """Everything to resume: live and EMA weights, prefixed."""
        out = {}
        for name, mod in (("dit", self.dit), ("text", self.text), ("ema_dit", self.ema_dit),
                          ("ema_text", self.ema_text)):
            out.update({f"{name}.{k}": v.detach().contiguous() for k, v in mod.state_dict().items()})
        return out

    def load(self, state: dict[str, torch.Tensor], step: int) -> None:
        for name, mod in (("dit", self.dit), ("text", self.text), ("ema_dit", self.ema_dit),
                          ("ema_text", self.ema_text)):
            p = f"{name}."
            mod.load_state_dict({k[len(p):]: v for k, v in state.items() if k.startswith(p)})
        self.step_no = step


def object_mask(video: torch.Tensor, stride: tuple[int, int, int]) -> torch.Tensor:
    """Where the objects are, on the latent grid: [B, 1, T', h, w] in {0, 1} from clips
    [B, 3, T, H, W] in [-1, 1] on flat backgrounds. A latent cell counts if any of its pixels
    (its first frame alone for the first latent frame, then groups of `stride[0]` frames)
    differs from the clip's median colour by more than 0.1."""
    st, sh, sw = stride
    bg = video.flatten(2).median(dim=2).values[:, :, None, None, None]
    fg = ((video - bg).abs().amax(dim=1, keepdim=True) > 0.1).float()   # (B, 1, T, H, W)
    fg = torch.cat([fg[:, :, :1].expand(-1, -1, st, -1, -1), fg[:, :, 1:]], dim=2)
    return torch.nn.functional.max_pool3d(fg, (st, sh, sw))


def eval_loss(dit: WanDiT, text: TinyTextEncoder, latents: torch.Tensor, captions: list[str],
              seed: int = 0) -> float:
    """The flow loss on a fixed batch with fixed noise (for learning curves)."""
    gen = torch.Generator().manual_seed(seed)
    dit.eval()
    text.eval()
    with torch.no_grad():
        return float(flow_loss(dit, text, latents, captions, gen, p_uncond=0.0))


__all__ = ["CONTINUATION_WEIGHTS", "DiTTrainConfig", "DiTTrainer", "MODES", "flow_loss", "eval_loss", "frame_mask",
           "object_mask", "random_frame_masks", "sample_sigmas"]
