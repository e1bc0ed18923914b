"""Step distillation of the embedded DiT into a 4-step LoRA (trajectory distillation).

The teacher is the shipped DiT sampled as the model card measures it: 20 UniPC steps at shift
2 with classifier-free guidance 4 (40 DiT evaluations). Its 20-step schedule passes exactly
through the student's 4-step schedule ``flow_sigmas(4, 2)`` (every fifth sigma), so the
teacher's latent at each student sigma is read off its own trajectory, with no interpolation.

The student is the same DiT with a low-rank adapter (LoRA, Hu et al. 2021, arXiv:2106.09685) on
every block's attention and feed-forward linears, trained for Euler steps without guidance (4
evaluations; sampled with UniPC by default, which reads it better). It learns, for each of its 4 steps, the velocity that takes the teacher's latent
at ``s_i`` onto the teacher's latent at ``s_{i+1}`` in one Euler step — the last step onto the
teacher's final clean latent. This is the multi-step form of progressive / trajectory
distillation (Salimans & Ho 2022, arXiv:2202.00512; the step-wise targets of consistency
trajectory models, Kim et al. 2023, arXiv:2310.02279) with the guidance folded in (Meng et al.
2023, arXiv:2210.03142): the teacher's guided trajectory is the target, so the student needs
neither the unconditional pass nor more steps. Chosen over distribution matching (DMD, what
lightx2v trains for Wan) because a deterministic, per-step regression onto the exact 20-step
trajectory is cheap enough for a 2-core CPU and aims the student's 4-step clip at the teacher's
20-step clip of the same noise, which is what the evaluation compares.

The first step, from pure noise, sets the clip's layout; its error carries through every later
step and it must generalize to unseen noise, so it gets 40% of each batch and 1,024 extra
teacher runs that stop at the student's second sigma (a quarter of a run's cost). An optional
exposure-bias correction (later steps also started from the student's own latents,
``p_rollout``) is off: it did not raise held-out adherence.

Teacher captions come from training clips only (``world.sample_clip(i, "train")`` re-worded), so
no held-out (colour, shape, motion) triple is ever seen. Text-to-video only: the known-frame
modes keep the base model's many-step sampling.

The LoRA is saved in the ComfyUI / lightx2v layout
(``diffusion_model.blocks.N.self_attn.q.lora_down.weight`` / ``.lora_up.weight`` / ``.alpha``),
which ComfyUI's LoraLoaderModelOnly, the pack's LoRA loader and ``model.weights.lora.apply_lora``
read.
"""
from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..model.dit import WanDiT
from ..model.embedded import EmbeddedModel
from ..model.embedded import config as C
from ..model.weights.lora import LORA_PREFIX, lora_state_dict
from ..samplers import cfg_denoiser, flow_sigmas, sample
from . import world

log = logging.getLogger("spacetime.embedded.distill")

TEACHER_STEPS = 20
STUDENT_STEPS = 4
# the linears of every block the LoRA adapts (official Wan module names)
BLOCK_MODULES = ("self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o", "cross_attn.q", "cross_attn.k",
                 "cross_attn.v", "cross_attn.o", "ffn.0", "ffn.2")
# a latent cell whose channels differ this much from the clip's per-channel median counts as object
# (normalized latents; about 1 cell in 8 of the teacher's clips, as the object covers in pixels)
OBJECT_DEVIATION = 1.5


@dataclass(frozen=True)
class DistillConfig:
    trajectories: int = 512      # teacher runs from noise, one training caption each
    rank: int = 16
    alpha: float = 16.0
    steps: int = 2800            # student optimizer steps
    batch: int = 16              # (trajectory, student step) pairs per optimizer step
    lr: float = 2e-3
    warmup: int = 50
    seed: int = 0
    shift: float = C.DEFAULT_SHIFT
    guidance: float = C.DEFAULT_GUIDANCE
    object_weight: float = 3.0   # extra loss weight where the teacher's clip differs from its background
    first_steps: int = 1024      # extra teacher runs stopped after the student's first step (see train_student)
    p_first: float = 0.4         # share of the batch spent on the first step (the rest: steps 2-4 alike)
    rollout_start: float = 0.4   # from this fraction of the steps on, later steps also start from the
    rollout_every: int = 100     # student's own latents (refreshed this often), with probability
    p_rollout: float = 0.0       # p_rollout (see train_student; 0: off, as for the shipped LoRA)


def student_sigmas(shift: float = C.DEFAULT_SHIFT) -> torch.Tensor:
    """The student's schedule: ``(STUDENT_STEPS + 1,)``, every fifth sigma of the teacher's."""
    return flow_sigmas(STUDENT_STEPS, shift)


def training_captions(n: int, seed: int, first: int = 0) -> list[str]:
    """Captions of training clips first..first+n-1 of the distillation's own range (never a held-out
    triple), freshly worded from ``seed``."""
    rng = random.Random(f"distill:{seed}" if first == 0 else f"distill:{seed}:{first}")
    out = []
    for i in range(first, first + n):
        clip = world.sample_clip(10**7 + i)        # clips the DiT stages did not draw
        out.append(world.describe(clip.objects, clip.background, rng))
    return out


def _velocity_denoiser(dit: WanDiT):
    def denoise(x: torch.Tensor, sigma: torch.Tensor, context: torch.Tensor, **_: object) -> torch.Tensor:
        s = sigma.reshape(-1).float()
        return x - s.view(-1, 1, 1, 1, 1) * dit(x, 1000 * s, context)
    return denoise


class _Enough(Exception):
    """Stops a teacher run once the latents asked for are recorded."""


@torch.no_grad()
def teacher_trajectories(model: EmbeddedModel, captions: list[str], cfg: DistillConfig, batch: int = 32,
                         seed: int | None = None, upto: int = STUDENT_STEPS) -> dict[str, torch.Tensor]:
    """The teacher's latents at the student's sigmas: ``x`` (N, upto + 1, C, T, h, w) and the
    caption ``context`` (N, L, D). With ``upto = STUDENT_STEPS`` the last entry is the final clean
    latent; a smaller ``upto`` stops each run at the student's sigma ``upto`` (``upto = 1``: the
    targets of the first step for a quarter of the cost). Noise from ``seed`` (default cfg.seed)."""
    dit, text = model.dit, model.text_encoder
    sigmas = flow_sigmas(TEACHER_STEPS, cfg.shift)
    every = TEACHER_STEPS // STUDENT_STEPS
    st, sh, sw = model.vae.config.stride
    shape = (C.DIT_CONFIG.out_dim, (C.FRAMES - 1) // st + 1, C.SIZE // sh, C.SIZE // sw)
    gen = torch.Generator().manual_seed(cfg.seed if seed is None else seed)
    xs, contexts = [], []
    for b0 in range(0, len(captions), batch):
        caps = captions[b0:b0 + batch]
        cond, uncond = text.encode(caps), text.encode([""] * len(caps))
        noise = torch.randn((len(caps), *shape), generator=gen)
        kept: list[torch.Tensor] = []

        def record(d: dict) -> None:
            if d["i"] % every == 0:
                kept.append(d["x"].clone())               # UniPC's corrected latent at the sigma
                if len(kept) > upto:
                    raise _Enough
        den = cfg_denoiser(_velocity_denoiser(dit), {"context": cond}, {"context": uncond}, cfg.guidance)
        try:
            kept.append(sample(den, noise, sigmas, solver="unipc", callback=record, disable=True))
        except _Enough:
            pass
        xs.append(torch.stack(kept, dim=1))                                  # (b, upto + 1, C, T, h, w)
        contexts.append(cond)
        log.info("teacher: %d / %d trajectories (to student step %d)", b0 + len(caps), len(captions), upto)
    return {"x": torch.cat(xs), "context": torch.cat(contexts)}


class LoRAWeight(nn.Module):
    """A parametrization ``W + (alpha / rank) · up @ down`` of a Linear's weight; ``up`` starts at
    zero so the adapted model starts as the base model."""

    def __init__(self, out_features: int, in_features: int, rank: int, alpha: float,
                 generator: torch.Generator) -> None:
        super().__init__()
        self.down = nn.Parameter(torch.randn(rank, in_features, generator=generator) / math.sqrt(in_features))
        self.up = nn.Parameter(torch.zeros(out_features, rank))
        self.alpha, self.rank = alpha, rank

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w + (self.alpha / self.rank) * (self.up @ self.down).to(w.dtype)


def add_lora(dit: WanDiT, rank: int, alpha: float, seed: int = 0) -> dict[str, LoRAWeight]:
    """Freeze ``dit`` and adapt every block's ``BLOCK_MODULES``: {official module name: LoRA}."""
    dit.requires_grad_(False)
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for i, block in enumerate(dit.blocks):
        for name in BLOCK_MODULES:
            lin = block.get_submodule(name)
            lora = LoRAWeight(lin.out_features, lin.in_features, rank, alpha, gen)
            parametrize.register_parametrization(lin, "weight", lora)
            out[f"blocks.{i}.{name}"] = lora
    return out


def export_lora(loras: dict[str, LoRAWeight]) -> dict[str, torch.Tensor]:
    """The LoRA in the ComfyUI / lightx2v layout (see ``model.weights.lora.lora_state_dict``)."""
    return lora_state_dict({m: (l.up.detach(), l.down.detach(), l.alpha) for m, l in loras.items()})


def _cell_weight(x0: torch.Tensor, extra: float) -> torch.Tensor:
    """1 + extra where a latent cell of the final clip differs from its per-channel median (the
    flat background), so the few object cells a caption describes are not outweighed:
    (B, 1, T, h, w)."""
    bg = x0.flatten(2).median(dim=2).values[:, :, None, None, None]
    dev = (x0 - bg).abs().amax(dim=1, keepdim=True)
    return 1 + extra * (dev > OBJECT_DEVIATION).float()


def _lr(step: int, cfg: DistillConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    frac = (step - cfg.warmup) / max(cfg.steps - cfg.warmup, 1)
    return cfg.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0))))


def distill_loss(dit: WanDiT, x_in: torch.Tensor, x_next: torch.Tensor, context: torch.Tensor, step: torch.Tensor,
                 sigmas: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Velocity regression of the student's Euler steps: from ``x_in`` at ``sigmas[step]`` onto the
    teacher's ``x_next`` at ``sigmas[step + 1]``, ``v* = (x_in − x_next) / (s − s_next)``; x_in,
    x_next (B, C, T, h, w), step (B,) ints, weight (B, 1, T, h, w) or broadcastable."""
    s, s_next = sigmas[step], sigmas[step + 1]                           # (B,)
    target = (x_in - x_next) / (s - s_next).view(-1, 1, 1, 1, 1)
    v = dit(x_in, 1000 * s, context)
    w = weight.expand_as(v)
    return (((v - target) ** 2) * w).sum() / w.sum()


@torch.no_grad()
def student_rollouts(dit: WanDiT, x: torch.Tensor, context: torch.Tensor, sigmas: torch.Tensor,
                     batch: int = 64) -> torch.Tensor:
    """The student's own latents at its sigmas 1..K-1 when it samples from the teacher's noise
    ``x[:, 0]``: (N, K, C, T, h, w), entry k at sigma k (entry 0 is the noise)."""
    out = x[:, :STUDENT_STEPS].clone()
    for b0 in range(0, x.shape[0], batch):
        z, ctx = x[b0:b0 + batch, 0], context[b0:b0 + batch]
        for i in range(STUDENT_STEPS - 1):
            s = sigmas[i].expand(z.shape[0])
            z = z + (sigmas[i + 1] - sigmas[i]) * dit(z, 1000 * s, ctx).float()
            out[b0:b0 + batch, i + 1] = z
    return out


def train_student(dit: WanDiT, data: dict[str, torch.Tensor], cfg: DistillConfig, minutes: float = 1e9,
                  dtype: torch.dtype = torch.float32) -> tuple[dict[str, LoRAWeight], dict]:
    """Train a LoRA on ``dit`` (modified in place: frozen, parametrized) on teacher ``data``: full
    trajectories ``x`` / ``context`` and, optionally, first-step ones ``first_x`` / ``first_context``
    (``teacher_trajectories(upto=1)``). Returns the LoRAs and a record (steps, seconds, final loss).

    The first step, from pure noise, decides the clip's layout: its error carries through every
    later step, and it must generalize to unseen noise, so it gets ``cfg.p_first`` of each batch
    and the cheap extra first-step trajectories; it is weighed uniformly (its target is mostly
    noise), later steps ``cfg.object_weight`` more on the object's cells.

    A student sampling on its own starts its later steps from its own latents, not the teacher's,
    and errors pile up (exposure bias). From ``cfg.rollout_start`` of the run on, a later step
    starts with probability ``cfg.p_rollout`` from the student's own latent of the same noise
    (``student_rollouts``, refreshed every ``cfg.rollout_every`` steps), still aimed at the
    teacher's next latent: the student learns to steer back onto the teacher's trajectory."""
    torch.manual_seed(cfg.seed)
    dit.compute_dtype = dtype
    loras = add_lora(dit, cfg.rank, cfg.alpha, cfg.seed)
    params = [p for l in loras.values() for p in l.parameters()]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0, betas=(0.9, 0.99))
    sigmas = student_sigmas(cfg.shift)
    x, ctx = data["x"], data["context"]
    first_x = torch.cat([x[:, :2], data["first_x"]]) if "first_x" in data else x[:, :2]
    first_ctx = torch.cat([ctx, data["first_context"]]) if "first_context" in data else ctx
    weight = _cell_weight(x[:, -1], cfg.object_weight)
    n_first, n_later = round(cfg.batch * cfg.p_first), cfg.batch - round(cfg.batch * cfg.p_first)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    rollouts, first_rollout = None, int(cfg.steps * cfg.rollout_start)
    t0, avg, step = time.time(), None, 0
    while step < cfg.steps and time.time() - t0 < minutes * 60:
        if cfg.p_rollout > 0 and step >= first_rollout and (step - first_rollout) % cfg.rollout_every == 0:
            dit.eval()
            rollouts = student_rollouts(dit, x, ctx, sigmas)
        dit.train()
        for g in opt.param_groups:
            g["lr"] = _lr(step, cfg)
        i0 = torch.randint(0, first_x.shape[0], (n_first,), generator=gen)
        idx = torch.randint(0, x.shape[0], (n_later,), generator=gen)
        k = torch.randint(1, STUDENT_STEPS, (n_later,), generator=gen)
        x_in = x[idx, k]
        if rollouts is not None:
            own = (torch.rand(n_later, generator=gen) < cfg.p_rollout).view(-1, 1, 1, 1, 1)
            x_in = torch.where(own, rollouts[idx, k], x_in)
        loss = (n_first * distill_loss(dit, first_x[i0, 0], first_x[i0, 1], first_ctx[i0],
                                       torch.zeros(n_first, dtype=torch.long), sigmas, torch.ones(1, 1, 1, 1, 1))
                + n_later * distill_loss(dit, x_in, x[idx, k + 1], ctx[idx], k, sigmas, weight[idx])) / cfg.batch
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        loss = float(loss.detach())
        avg = loss if avg is None else 0.98 * avg + 0.02 * loss
        if step % 20 == 0:
            log.info("distill step %d loss %.4f (avg %.4f) %.0fs", step, loss, avg, time.time() - t0)
    dit.eval()
    return loras, {"steps": step, "seconds": round(time.time() - t0, 1), "loss": avg}


def distill_record(cfg: DistillConfig, train: dict, teacher_seconds: float) -> dict:
    """The metadata a saved LoRA carries: recipe, sampling settings, steps and times."""
    return {"recipe": asdict(cfg), "teacher": {"steps": TEACHER_STEPS, "solver": "unipc", "shift": cfg.shift,
                                               "guidance": cfg.guidance, "seconds": round(teacher_seconds, 1)},
            "sampling": {"steps": STUDENT_STEPS, "solver": "euler", "shift": cfg.shift, "cfg": 1.0},
            "train": train, "prefix": LORA_PREFIX}


__all__ = ["BLOCK_MODULES", "DistillConfig", "LoRAWeight", "STUDENT_STEPS", "TEACHER_STEPS", "add_lora",
           "distill_loss", "distill_record", "export_lora", "student_rollouts", "student_sigmas",
           "teacher_trajectories", "train_student", "training_captions"]
