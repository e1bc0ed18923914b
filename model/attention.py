"""Attention kernel choice for the DiT: PyTorch SDPA by default; flash-attn or SageAttention
when importable on a CUDA device, with a fallback and one log line saying which is used.

Every backend takes q, k, v as (B, L, heads, head_dim) and returns (B, L, heads*head_dim).
"""
from __future__ import annotations

import importlib
import logging
from typing import Callable

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
BACKENDS = ("auto", "sdpa", "flash_attn", "sageattention")


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """torch.nn.functional.scaled_dot_product_attention (fused kernels on CPU and GPU)."""
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2).flatten(2)  # (B, L, heads*head_dim)


def _flash_attn() -> AttentionFn:
    fa = importlib.import_module("flash_attn")

    def run(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if q.device.type != "cuda" or q.dtype not in (torch.float16, torch.bfloat16):
            return sdpa(q, k, v)
        return fa.flash_attn_func(q, k, v).flatten(2)
    return run


def _sageattention() -> AttentionFn:
    sa = importlib.import_module("sageattention")

    def run(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if q.device.type != "cuda" or q.dtype not in (torch.float16, torch.bfloat16):
            return sdpa(q, k, v)
        return sa.sageattn(q, k, v, tensor_layout="NHD").flatten(2)
    return run


_LOADERS = {"flash_attn": _flash_attn, "sageattention": _sageattention}
_logged: set[str] = set()


def pick_attention(name: str = "auto", device: torch.device | str = "cpu") -> tuple[str, AttentionFn]:
    """The attention function for ``name``; optional kernels fall back to SDPA with a warning.

    "auto" tries flash-attn then SageAttention on CUDA, and uses SDPA elsewhere.
    """
    if name not in BACKENDS:
        raise ValueError(f"attention {name!r} is not one of {BACKENDS}")
    on_cuda = torch.device(device).type == "cuda"
    wanted = ["flash_attn", "sageattention"] if name == "auto" and on_cuda else (
        [] if name in ("auto", "sdpa") else [name])
    chosen, fn = "sdpa", sdpa
    for cand in wanted:
        try:
            chosen, fn = cand, _LOADERS[cand]()
            break
        except Exception as e:  # an optional kernel: warn once and fall back
            if name == cand:
                log.warning("attention %s is not usable (%s); falling back to SDPA", cand, e)
    key = f"{name}:{chosen}"
    if key not in _logged:
        _logged.add(key)
        log.info("DiT attention: %s (asked: %s)", chosen, name)
    return chosen, fn
