"""Models: video VAE, DiT, patch grid, text encoder, prompt expander (plain PyTorch)."""

from .prompt_expander import expand_prompt
