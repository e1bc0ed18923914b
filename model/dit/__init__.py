"""The Wan diffusion transformer: config, blocks, attention, spacetime patches, loading."""
from .config import DIT_PRESETS, DiTConfig, tiny_config  # noqa: F401
from .loading import load_dit  # noqa: F401
from .model import TextMemo, WanDiT  # noqa: F401
