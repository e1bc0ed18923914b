"""The Wan diffusion transformer: config, blocks, attention, spacetime patches, loading."""
from .config import DIT_PRESETS, DiTConfig, tiny_config
from .loading import load_dit
from .model import WanDiT
