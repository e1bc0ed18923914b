"""The embedded tiny model's configs: the same Wan classes as the real models, small sizes.

64x64 pixels x 17 frames -> a Wan 2.1-style causal VAE with three levels (stride 4x4x4,
8 latent channels) -> an 8 x 5 x 16 x 16 latent -> DiT patches of 1x2x2 -> 5 x 8 x 8 = 320
tokens. Sized so the whole recipe trains on two CPU cores (MODEL_CARD.md has the recipe and
its times).
"""
from __future__ import annotations

from pathlib import Path

from ..dit.config import DiTConfig
from ..vae.config import VAEConfig
from .text_encoder import TextEncoderConfig

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
VAE_FILE, DIT_FILE, TEXT_FILE = "vae.safetensors", "dit.safetensors", "text_encoder.safetensors"
DISTILL_FILE = "distill_4step_lora.safetensors"   # the 4-step LoRA (training/distill.py)

FRAMES = 17          # pixel frames the model was trained on (4k+1)
SIZE = 64            # pixels per side
Z_DIM = 8

# Wan 2.1 VAE layout with one level fewer than the real one (dim_mult 1,2,4; temporal
# downsample in both downsampling levels), narrow. Four levels (stride 4x8x8) rounded shapes
# off within the training budget; three keep them far better.
VAE_CONFIG = VAEConfig(version="2.1", dim=16, z_dim=Z_DIM, dim_mult=(1, 2, 4), num_res_blocks=1,
                       temperal_downsample=(True, True))

TEXT_CONFIG = TextEncoderConfig(vocab_size=128, max_len=24, dim=64, heads=4, layers=2, text_dim=64)

# Wan DiT layout (patch 1x2x2, qk-norm, cross-attention to text), 4 blocks of width 128.
DIT_CONFIG = DiTConfig(dim=128, ffn_dim=512, num_heads=4, num_layers=4, in_dim=Z_DIM, out_dim=Z_DIM,
                       patch_size=(1, 2, 2),
                       text_dim=TEXT_CONFIG.text_dim, freq_dim=256, text_len=TEXT_CONFIG.max_len,
                       model_type="t2v")

# Sampling defaults measured with the shipped weights (MODEL_CARD.md).
DEFAULT_STEPS = 20
DEFAULT_SHIFT = 2.0
DEFAULT_GUIDANCE = 4.0
# Guidance of a long video's windows (long_video.generate_long_embedded): at 4 the caption's
# motion, amplified, carries an object past the frame's margin, and a minute of 4 s segments keeps
# its object and its directions in fewer segments than at 2 (bench/RESULTS.md).
LONG_GUIDANCE = 2.0

# The 4-step distilled LoRA's sampling: every fifth sigma of the 20-step schedule, no guidance (one
# DiT evaluation per step). It was trained for Euler steps (training/distill.py); UniPC on the same
# sigmas reads right on more prompts (MODEL_CARD.md, chosen on prompts outside the benchmark's).
DISTILLED_STEPS = 4
DISTILLED_SOLVER = "unipc"

# ComfyUI's latent previews (Latent2RGB): a colour per latent pixel of the first latent frame,
# linear in its normalised channels; ridge least squares on the first frames of 512 training clips
# through the shipped VAE (`python -m spacetime_video.training.latent_rgb --clips 512`).
# One [r, g, b] row per channel.
LATENT_RGB_FACTORS = ((-0.3794, -0.3433, -0.2168), (0.4905, 0.379, 0.1375), (-0.3784, -0.3128, -0.1368),
                      (0.5896, 0.5299, 0.2937), (0.0753, 0.015, 0.0115), (-0.1285, -0.0725, 0.0936),
                      (-0.511, -0.3897, -0.1045), (0.47, 0.4344, 0.2244))
LATENT_RGB_BIAS = (-0.1783, -0.2317, -0.2737)
