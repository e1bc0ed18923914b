"""Models: video VAE, DiT, patch grid, text encoder, prompt expander (plain PyTorch)."""
