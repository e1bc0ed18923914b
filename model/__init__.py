"""Models: video VAE, DiT, patch grid, text encoder, prompt expander (plain PyTorch)."""
from .vae import load_vae, WanVAE, VAEConfig, VAE_PRESETS  # noqa: F401
from .dit import WanDiT, load_dit  # noqa: F401
from .dit_config import DIT_PRESETS, DiTConfig  # noqa: F401
from .prompt_expander import expand_prompt
