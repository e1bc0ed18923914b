"""Loading a Wan DiT: layout and config detection from tensor names and shapes, lazy reading,
narrow and fp8 storage.

Config detection follows the official conventions (Wan-Video/Wan2.1 ``wan/configs``): head
width 128, so heads = dim / 128; FLF2V is I2V with ``img_emb.emb_pos``; Wan 2.2 I2V A14B is a
36-channel model without the CLIP branch. Storage dtypes follow ``weights.precision``.

Memory: the model is built on the meta device and each tensor is read straight from the file
into its final buffer (``weights.files.TensorReader``), so loading never holds two copies.
"""
from __future__ import annotations

import json
import logging
import re
from typing import Mapping

import torch
import torch.nn as nn

from ..weights.files import PathOrStateDict, TensorReader, WeightsError
from ..weights.layouts import dit_official_names
from ..weights.precision import FP8_DTYPES, SCALE_SUFFIXES, Linear, storage_dtype
from .config import DIT_PRESETS, DiTConfig
from .model import WanDiT

log = logging.getLogger(__name__)

METADATA_KEY = "spacetime_dit_config"  # optional JSON of DiTConfig fields in a file's metadata


def _layout_error(found: list[str], expected: str) -> WeightsError:
    sample = ", ".join(found[:8]) + (" ..." if len(found) > 8 else "")
    return WeightsError(f"not a Wan DiT checkpoint: expected keys like {expected}; found {len(found)} "
                        f"keys: {sample or 'none'}. Supported layouts: official Wan names, ComfyUI's "
                        "'model.diffusion_model.' prefix, diffusers WanTransformer3DModel")


def detect_config(shapes: Mapping[str, tuple[int, ...]], metadata: Mapping[str, str] | None = None) -> DiTConfig:
    """The ``DiTConfig`` of a checkpoint from its official-named tensor shapes (and, for custom
    small models, the ``spacetime_dit_config`` metadata that fixes what shapes cannot: heads)."""
    need = ("patch_embedding.weight", "text_embedding.0.weight", "time_embedding.0.weight",
            "blocks.0.ffn.0.weight", "head.head.weight")
    missing = [k for k in need if k not in shapes]
    if missing:
        raise _layout_error(sorted(shapes), ", ".join(need))
    dim, in_dim, *patch = shapes["patch_embedding.weight"]
    layers = 1 + max(int(m.group(1)) for k in shapes if (m := re.match(r"blocks\.(\d+)\.", k)))
    img = "img_emb.proj.1.weight" in shapes
    fields: dict = dict(dim=dim, in_dim=in_dim, patch_size=tuple(patch), num_layers=layers,
                        ffn_dim=shapes["blocks.0.ffn.0.weight"][0], text_dim=shapes["text_embedding.0.weight"][1],
                        freq_dim=shapes["time_embedding.0.weight"][1],
                        out_dim=shapes["head.head.weight"][0] // (patch[0] * patch[1] * patch[2]), img_emb=img)
    if img:
        fields["clip_dim"] = shapes["img_emb.proj.1.weight"][1]
        fields["flf_pos_len"] = shapes.get("img_emb.emb_pos", (0, 0))[1]
    fields["model_type"] = ("flf2v" if fields.get("flf_pos_len") else "i2v" if img or in_dim == fields["out_dim"] + 20
                            else "ti2v" if fields["out_dim"] == 48 else "t2v")
    extra = json.loads(metadata[METADATA_KEY]) if metadata and METADATA_KEY in metadata else {}
    if "num_heads" not in extra:
        if dim % 128:
            raise WeightsError(f"cannot tell the number of attention heads of a dim-{dim} DiT (Wan uses "
                               f"head width 128, so dim must be a multiple of 128); pass config=DiTConfig(...) "
                               f"or store '{METADATA_KEY}' metadata with num_heads")
        extra["num_heads"] = dim // 128
    for k, v in extra.items():
        fields[k] = tuple(v) if isinstance(v, list) else v
    return DiTConfig(**fields)


def preset_name(config: DiTConfig) -> str | None:
    """The DIT_PRESETS name equal to ``config`` (first match; A14B experts equal 14B shapes)."""
    return next((k for k, v in DIT_PRESETS.items() if v == config), None)


def config_metadata(config: DiTConfig) -> dict[str, str]:
    """Safetensors metadata that lets ``load_dit`` rebuild a custom (non-Wan-sized) config."""
    keep = ("num_heads", "text_len", "eps", "rope_theta", "model_type")
    return {METADATA_KEY: json.dumps({k: getattr(config, k) for k in keep})}


def load_dit(path_or_state_dict: PathOrStateDict, dtype: torch.dtype | None = None,
             compute_dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
             attention: str = "auto", config: DiTConfig | None = None) -> WanDiT:
    """A ``WanDiT`` from a safetensors file or a state dict, in any supported layout.

    ``dtype``: storage dtype (None: ``compute_dtype``, a file's fp8 weights stay fp8; fp8 stores
    the Linear weights in fp8, see ``weights.precision.storage_dtype``); ``compute_dtype``:
    matmul/attention precision; ``config``: skip detection (custom models without metadata).
    """
    reader = TensorReader(path_or_state_dict, "DiT weights")
    names = dit_official_names(reader.shapes)                      # official -> file key
    scales = {k[: -len(s)] + ".weight": f for k, f in names.items() for s in SCALE_SUFFIXES if k.endswith(s)}
    names = {k: f for k, f in names.items() if not k.endswith(SCALE_SUFFIXES)}
    shapes = {k: reader.shapes[f] for k, f in names.items()}
    cfg = config or detect_config(shapes, reader.metadata)
    with torch.device("meta"):
        model = WanDiT(cfg, compute_dtype=compute_dtype, attention=attention)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(shapes))
    unknown = sorted(set(shapes) - set(expected))
    if missing or unknown:
        raise WeightsError(
            f"checkpoint does not match the detected Wan DiT ({preset_name(cfg) or cfg}): "
            f"missing {len(missing)} keys {missing[:6]}, unexpected {len(unknown)} keys {unknown[:6]}")
    bad = [f"{k}: file {shapes[k]} vs model {s}" for k, s in expected.items() if shapes[k] != s]
    if bad:
        raise WeightsError(f"tensor shapes do not match the detected config: {'; '.join(bad[:6])}")

    modules = dict(model.named_modules())
    for name in expected:
        t = reader.read(names[name])
        mod_name, _, attr = name.rpartition(".")
        module = modules[mod_name]
        target = storage_dtype(name, t.dtype, dtype, compute_dtype, isinstance(module, Linear))
        scale = None
        if name in scales:  # per tensor (ComfyUI), or per output row
            scale = reader.read(scales[name]).float()
            scale = scale.reshape(()) if scale.numel() == 1 else scale.reshape(-1, 1)
        if target in FP8_DTYPES:
            module.scale_weight = None if scale is None else scale.to(device)
        elif t.dtype in FP8_DTYPES and scale is not None:
            t = t.float() * scale  # widened once here; stored in ``target``
        t = t.to(device=device, dtype=target)
        setattr(module, attr, nn.Parameter(t, requires_grad=False))
    log.info("loaded Wan DiT %s (%s, %d layers) compute %s", preset_name(cfg) or "custom",
             cfg.model_type, cfg.num_layers, compute_dtype)
    return model.eval()
