"""Models: video VAE, DiT, patch grid, text encoder, prompt expander (plain PyTorch)."""
from .vae import load_vae, WanVAE, VAEConfig, VAE_PRESETS  # noqa: F401
