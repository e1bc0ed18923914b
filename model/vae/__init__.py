"""The Wan video VAE (2.1 and 2.2): config, layers, causal cache, spatial tiles, loading."""
from .config import VAE_PRESETS, VAEConfig  # noqa: F401
from .loading import load_vae, vae_config_from_state_dict  # noqa: F401
from .model import WanVAE  # noqa: F401
