"""Models (plain PyTorch): the video VAE, the DiT, weights, the canvas of known frames, the
embedded tiny model and the prompt expander."""
from .dit import DIT_PRESETS, DiTConfig, WanDiT, load_dit
from .prompt_expander import expand_prompt
from .vae import VAE_PRESETS, VAEConfig, WanVAE, load_vae

__all__ = ["DIT_PRESETS", "DiTConfig", "VAE_PRESETS", "VAEConfig", "WanDiT", "WanVAE", "expand_prompt",
           "load_dit", "load_vae"]
