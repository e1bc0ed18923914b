"""Loading a Wan DiT: layout and config detection from tensor names and shapes, lazy reading,
fp8 storage.

Config detection follows the official conventions (Wan-Video/Wan2.1 ``wan/configs``): head
width 128, so heads = dim / 128; FLF2V is I2V with ``img_emb.emb_pos``; Wan 2.2 I2V A14B is a
36-channel model without the CLIP branch. ComfyUI's "fp8_scaled" files store Linear weights as
float8_e4m3fn with a per-tensor ``<layer>.scale_weight`` (newer: ``weight_scale``) and a
``scaled_fp8`` marker key (ComfyUI ``comfy/ops.py`` ``scaled_fp8_ops``, ``model_detection.py``);
the real weight is ``weight.float() * scale``. Such weights stay fp8 in memory and are widened
layer by layer in ``Linear.forward``.

Memory: the model is built on the meta device and each tensor is read straight from the file
into its final buffer (plain reads, no mmap), so loading never holds two copies of the weights.
"""
from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

from .convert import dit_official_names
from .dit_config import DIT_PRESETS, DiTConfig
from .loading import PICKLE_SUFFIXES, PathOrStateDict, WeightsError, read_safetensors_header

if TYPE_CHECKING:
    from .dit import WanDiT

log = logging.getLogger(__name__)

FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)
ST_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
             "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2, "I64": torch.int64,
             "I32": torch.int32, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool}
METADATA_KEY = "spacetime_dit_config"  # optional JSON of DiTConfig fields in a file's metadata
SCALE_SUFFIXES = (".scale_weight", ".weight_scale")


class Linear(nn.Linear):
    """``nn.Linear`` whose weight may be stored narrower than the compute dtype (bf16, fp16, or
    fp8 with a per-tensor ``scale_weight``); it is widened to the input's dtype when used."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__(in_features, out_features, bias)
        self.register_buffer("scale_weight", None, persistent=False)  # set by load_dit for fp8

    def weight_as(self, dtype: torch.dtype) -> torch.Tensor:
        """The weight as used in ``dtype`` (widened, and scaled if stored as scaled fp8)."""
        w = self.weight
        if w.dtype != dtype:
            w = w.to(dtype)
            if self.scale_weight is not None:
                w = w * self.scale_weight.to(dtype)
        return w

    def bias_as(self, dtype: torch.dtype) -> torch.Tensor | None:
        return None if self.bias is None else self.bias.to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight_as(x.dtype), self.bias_as(x.dtype))


class _Reader:
    """Shapes, dtypes and lazy tensor reads for a safetensors path or an in-memory state dict."""

    def __init__(self, source: PathOrStateDict) -> None:
        self.sd: Mapping[str, torch.Tensor] | None = None
        self.metadata: dict[str, str] = {}
        if isinstance(source, Mapping):
            self.sd = source
            self.shapes = {k: tuple(v.shape) for k, v in source.items()}
            self.dtypes = {k: v.dtype for k, v in source.items()}
            return
        path = Path(source)
        if path.suffix.lower() in PICKLE_SUFFIXES:
            raise WeightsError(f"{path.name}: pickle checkpoints are not loaded (they can run code); "
                               "use the .safetensors release of these weights")
        files = sorted(path.glob("*.safetensors")) if path.is_dir() else [path]  # sharded diffusers dirs
        if not files or not all(f.is_file() for f in files):
            raise WeightsError(f"DiT weights not found: {path} (a .safetensors file, or a folder of them)")
        self.entries: dict[str, tuple[Path, int, dict]] = {}
        for f in files:
            header = read_safetensors_header(f)
            self.metadata.update(header.pop("__metadata__", None) or {})
            start = 8 + int.from_bytes(f.open("rb").read(8), "little")
            self.entries.update({k: (f, start, v) for k, v in header.items()})
        self.shapes = {k: tuple(v["shape"]) for k, (_, _, v) in self.entries.items()}
        self.dtypes = {k: ST_DTYPES.get(v["dtype"]) for k, (_, _, v) in self.entries.items()}

    def read(self, key: str) -> torch.Tensor:
        if self.sd is not None:
            return self.sd[key]
        path, start, e = self.entries[key]
        dtype = self.dtypes[key]
        if dtype is None:
            raise WeightsError(f"{path.name}: tensor {key} has unsupported dtype {e['dtype']}")
        t = torch.empty(self.shapes[key], dtype=dtype)
        begin, end = e["data_offsets"]
        with open(path, "rb") as f:  # plain read into the final buffer: no mmap, no copy
            f.seek(start + begin)
            if end > begin and f.readinto(memoryview(t.view(-1).view(torch.uint8).numpy())) != end - begin:
                raise WeightsError(f"{path.name}: short read for {key}; the file is truncated")
        return t


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


def _storage_dtype(name: str, src: torch.dtype, dtype: torch.dtype | None, compute: torch.dtype,
                   linear: bool) -> torch.dtype:
    from .dit import keeps_fp32
    if keeps_fp32(name):
        return torch.float32
    if src in FP8_DTYPES and linear and name.endswith(".weight") and (dtype is None or dtype == src):
        return src  # stays fp8; widened per layer at run time by Linear
    return dtype if dtype is not None and dtype not in FP8_DTYPES else compute


def load_dit(path_or_state_dict: PathOrStateDict, dtype: torch.dtype | None = None,
             compute_dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
             attention: str = "auto", config: DiTConfig | None = None) -> "WanDiT":
    """A ``WanDiT`` from a safetensors file or a state dict, in any supported layout.

    ``dtype``: storage dtype (None: ``compute_dtype``, fp8 weights stay fp8); ``compute_dtype``:
    matmul/attention precision; ``config``: skip detection (custom models without metadata).
    """
    from .dit import WanDiT

    reader = _Reader(path_or_state_dict)
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
        target = _storage_dtype(name, t.dtype, dtype, compute_dtype, isinstance(module, Linear))
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
