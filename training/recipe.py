"""Train the embedded tiny model from a seed: VAE, then latents, then DiT + text encoder.

    python scripts/train_embedded.py vae     --run RUN_DIR [--steps N] [--minutes M]
    python scripts/train_embedded.py latents --run RUN_DIR [--clips N]
    python scripts/train_embedded.py decoder --run RUN_DIR [--steps N]   (optional, beside `dit`)
    python scripts/train_embedded.py dit     --run RUN_DIR [--steps N] [--minutes M]
    python scripts/train_embedded.py adapt   --run RUN_DIR [--steps N]   (optional, not in `all`:
                                              the decoder on the DiT's x0)
    python scripts/train_embedded.py cooldown --run RUN_DIR [--steps N] [--lr LR] [--sigma-shift K]
                                              (after `dit`: a second, lower learning-rate cosine from
                                              the DiT's weights into dit_cool.safetensors)
    python scripts/train_embedded.py export  --run RUN_DIR [--to model/embedded/weights] [--vae-file F]
                                              [--dit-file F]
    python scripts/train_embedded.py distill --run RUN_DIR [--weights DIR] [--trajectories N] [--steps N]
                                              [--first-steps N] [--minutes M] [--rank R] [--bf16]
                                              (after export: a 4-step LoRA distilled from the exported
                                              model's 20-step sampling, into
                                              RUN_DIR/distill_4step_lora.safetensors; training/distill.py)
    python scripts/train_embedded.py walls   --run RUN_DIR [--weights DIR] [--clips N] [--wall-clips N]
                                              [--steps N] [--minutes M] [--lr LR] [--compile]
                                              (a finished model fine-tuned on training clips and the
                                              world's "walls" clips, into RUN_DIR/walls/)
    python scripts/train_embedded.py all     --run RUN_DIR [--compile]   (the recipe: vae, latents,
                                              dit, cooldown, then walls from the cool-down's export
                                              in RUN_DIR/cool/, with the settings in RECIPE; the
                                              model ends in RUN_DIR/walls/; --steps, --minutes,
                                              --batch, --frames, --clips, --lr, --sigma-shift,
                                              --dit-file unused)

Every stage resumes from RUN_DIR's checkpoint (saved every --every steps and at the end; the
optimizer starts afresh), so a stage, or `all`, can be stopped and started again. `--minutes`
caps a stage's wall-clock training time summed over its runs: each checkpoint's metadata holds
the steps done and the seconds spent, so a resumed `all` stays inside its time budget and does
not train a stage that its limit already stopped. `adapt` resumes only a checkpoint made against
the same --dit-file.
"""
from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import torch

from ..model.embedded import config as C
from .stages import log, stage_adapt, stage_cooldown, stage_dit, stage_distill, stage_export, stage_latents, \
    stage_vae, stage_walls

# The recipe (`all`) of the shipped weights (MODEL_CARD.md): each stage's step count and wall-clock
# limit, sized for a 2-core CPU with --compile (the limits and the two encodings of clips add up to
# about 137 minutes). The cool-down draws with seed + 1. The optional `adapt` stage is not part of
# it: its effect on held-out motion was inconsistent.
RECIPE = {
    "vae": dict(steps=5600, minutes=25.0, frames=17, batch=4),
    "latents": dict(clips=3072),
    "dit": dict(steps=26000, minutes=68.0, batch=16, every=200),
    "cooldown": dict(steps=4000, minutes=11.0, batch=16, every=200, lr=2e-4, sigma_shift=3.0),
    "walls": dict(steps=6000, minutes=22.0, batch=16, every=500, lr=1e-4, sigma_shift=3.0, clips=3072,
                  wall_clips=1024),
}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("stage", choices=["vae", "decoder", "latents", "dit", "adapt", "cooldown", "export", "distill",
                                      "walls", "all"])
    ap.add_argument("--run", type=Path, required=True, help="the run folder: checkpoints, latents, logs")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--minutes", type=float, default=1e9)
    ap.add_argument("--every", type=int, default=50)
    ap.add_argument("--clips", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=32, help="batch (the shipped DiT used 16, the VAE 4)")
    ap.add_argument("--frames", type=int, default=9, help="frames per VAE training crop (4k+1)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--to", type=Path, default=C.WEIGHTS_DIR)
    ap.add_argument("--bf16", action="store_true", help="DiT stage: bf16 matmuls (faster on AVX512-BF16 / AMX CPUs)")
    ap.add_argument("--compile", action="store_true",
                    help="vae/decoder/dit/cooldown/all: torch.compile the trained modules (faster steps; "
                         "needs a C++ compiler)")
    ap.add_argument("--lr", type=float, default=2e-4, help="cooldown: peak learning rate")
    ap.add_argument("--sigma-shift", type=float, default=3.0,
                    help="cooldown: shift of the training sigmas toward noise (1 = as `dit`)")
    ap.add_argument("--dit-file", default="dit_ckpt.safetensors",
                    help="export / adapt: the DiT checkpoint in RUN_DIR (dit_cool.safetensors after `cooldown`)")
    ap.add_argument("--weights", type=Path, default=None,
                    help="distill / walls: the embedded model folder to start from (default: the shipped weights)")
    ap.add_argument("--trajectories", type=int, default=512, help="distill: teacher trajectories")
    ap.add_argument("--first-steps", type=int, default=1024,
                    help="distill: extra teacher runs stopped after the student's first step")
    ap.add_argument("--wall-clips", type=int, default=1024, help="walls: clips of the world's walls split")
    ap.add_argument("--rank", type=int, default=16, help="distill: LoRA rank (alpha = rank)")
    ap.add_argument("--live", action="store_true", help="export the live DiT weights, not the EMA")
    ap.add_argument("--vae-file", default="vae_ckpt.safetensors",
                    help="VAE checkpoint in RUN_DIR to export (vae_adapt.safetensors after `adapt`)")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(a.threads)
    a.run.mkdir(parents=True, exist_ok=True)
    if a.stage == "all":
        t0 = time.time()
        r = RECIPE
        stage_vae(a.run, every=a.every, seed=a.seed, compile=a.compile, **r["vae"])
        stage_latents(a.run, seed=a.seed, **r["latents"])
        stage_dit(a.run, seed=a.seed, dtype=torch.bfloat16, compile=a.compile, **r["dit"])
        stage_cooldown(a.run, seed=a.seed + 1, compile=a.compile, **r["cooldown"])
        stage_export(a.run, a.run / "cool", dit_file="dit_cool.safetensors")
        out = stage_walls(a.run, a.run / "cool", seed=a.seed, compile=a.compile, **r["walls"])
        log.info("recipe done in %.1f minutes; the model is in %s (its files go to model/embedded/weights/)",
                 (time.time() - t0) / 60, out)
    elif a.stage == "vae":
        stage_vae(a.run, a.steps or 1600, a.minutes, a.every, a.seed, a.frames, a.batch, compile=a.compile)
    elif a.stage == "decoder":  # after `latents`: the encoder is frozen, the latents stay valid
        stage_vae(a.run, a.steps or 3000, a.minutes, a.every, a.seed, a.frames, a.batch, decoder_only=True,
                  compile=a.compile)
    elif a.stage == "latents":
        stage_latents(a.run, a.clips, a.seed)
    elif a.stage == "dit":
        stage_dit(a.run, a.steps or 4000, a.minutes, a.every, a.seed, a.batch,
                  torch.bfloat16 if a.bf16 else torch.float32, compile=a.compile)
    elif a.stage == "adapt":
        stage_adapt(a.run, a.steps or 2000, a.minutes, a.every, a.seed, a.batch, a.dit_file)
    elif a.stage == "cooldown":
        stage_cooldown(a.run, a.steps or 4000, a.minutes, a.every, a.seed, a.batch, a.lr, a.sigma_shift,
                       compile=a.compile)
    elif a.stage == "distill":
        from .distill import DistillConfig
        stage_distill(a.run, a.weights, a.trajectories, a.first_steps, a.steps or DistillConfig.steps, a.minutes,
                      a.seed, a.rank, torch.bfloat16 if a.bf16 else torch.float32)
    elif a.stage == "walls":
        stage_walls(a.run, a.weights, a.steps or 6000, a.minutes, a.every, a.seed, a.batch, a.lr, a.sigma_shift,
                    a.clips, a.wall_clips, compile=a.compile)
    else:
        stage_export(a.run, a.to, a.live, a.vae_file, a.dit_file)
