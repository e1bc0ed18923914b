"""The precision policy of the DiT weights (the one place it is decided): which parameters stay float32, which may be stored
narrow (bf16, fp16, fp8), and the ``Linear`` that widens a narrow weight when it is used.

ComfyUI's "fp8_scaled" files store Linear weights as float8_e4m3fn with a per-tensor
``<layer>.scale_weight`` (newer: ``weight_scale``) and a ``scaled_fp8`` marker key (ComfyUI
``comfy/ops.py`` ``scaled_fp8_ops``); the real weight is ``weight.float() * scale``. Such
weights stay fp8 in memory and are widened layer by layer in ``Linear.forward``.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)
SCALE_SUFFIXES = (".scale_weight", ".weight_scale")

# Parameters kept in float32 whatever the storage dtype: small, and precision-critical (the
# official code runs time embedding, modulation and norms in float32).
FP32_PARAMS = ("time_embedding.", "time_projection.", "modulation", "norm", "img_emb.proj.0.",
               "img_emb.proj.4.", "img_emb.emb_pos")


def keeps_fp32(name: str) -> bool:
    """Whether the parameter ``name`` (official key) is always stored in float32."""
    return name.startswith(FP32_PARAMS[:2]) or any(p in name for p in FP32_PARAMS[2:])


class Linear(nn.Linear):
    """``nn.Linear`` whose weight may be stored narrower than the compute dtype (bf16, fp16, or
    fp8 with a per-tensor ``scale_weight``); it is widened to the input's dtype when used."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__(in_features, out_features, bias)
        self.register_buffer("scale_weight", None, persistent=False)  # set when loading scaled fp8

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


def storage_dtype(name: str, src: torch.dtype, dtype: torch.dtype | None, compute: torch.dtype,
                  linear: bool) -> torch.dtype:
    """The dtype the parameter ``name`` is kept in, given its dtype in the file (``src``), the
    requested storage ``dtype`` (None: as the file has it where that is fp8, else the compute
    dtype) and whether it belongs to a ``Linear``. Only Linear weights are ever stored in fp8;
    the parameters of :func:`keeps_fp32` are always float32."""
    if keeps_fp32(name):
        return torch.float32
    big = linear and name.endswith(".weight")
    if dtype in FP8_DTYPES:  # a file's own fp8 weights stay as they are (with their scales)
        return (src if src in FP8_DTYPES else dtype) if big else compute
    if src in FP8_DTYPES and big and dtype is None:
        return src  # stays fp8; widened per layer at run time by Linear
    return dtype or compute
