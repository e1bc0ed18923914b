"""Weights: safetensors reading (never pickle), key layouts, the precision / fp8 policy, LoRA
merging into a plain DiT and the catalog of known files."""
from .files import PathOrStateDict, TensorReader, WeightsError, load_state_dict, read_safetensors_header  # noqa: F401
from .precision import FP8_DTYPES, Linear, keeps_fp32  # noqa: F401
from .lora import apply_lora  # noqa: F401
