"""Attention kernel choice for the DiT: PyTorch SDPA by default; flash-attn or SageAttention
when importable on a CUDA device, with a fallback and one log line saying which is used.

Every backend takes q, k, v as (B, heads, L, head_dim) (any strides), with q already scaled
by 1/sqrt(head_dim) (the DiT folds the scale into the q norm's gain, so no pass over the
scores is spent on it), and returns (B, L, heads*head_dim).
"""
from __future__ import annotations

import ctypes
import importlib
import logging
import os
import sys
from typing import Callable

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
BACKENDS = ("auto", "sdpa", "math", "flash_attn", "sageattention")


def whole_keys(attn: AttentionFn) -> AttentionFn:
    """The kernel for attention whose keys are whole on every rank (cross-attention to text):
    a sequence-parallel kernel carries its single-rank kernel as ``local``; any other is itself."""
    return getattr(attn, "local", attn)


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """torch.nn.functional.scaled_dot_product_attention (fused kernels on CPU and GPU)."""
    return F.scaled_dot_product_attention(q, k, v, scale=1.0).transpose(1, 2).flatten(2)  # (B, L, H*d)


def math_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                   max_scores_bytes: int = 16 * 2**20) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v as two batched matmuls, chunked over queries so that the score
    block stays under ``max_scores_bytes``. On CPUs with bf16 matmul units (AVX512-BF16, AMX)
    this beats SDPA's CPU flash kernel (measured in bench/bench_dit.py); exact in float32.
    The bound is below glibc's 32 MB mmap ceiling, so one freed score block is reused by the
    next chunk instead of being returned to the kernel and page-faulted again."""
    b, h, n, d = q.shape
    kt = k.transpose(-1, -2)                                             # (B, H, d, Lk)
    chunk = max(1, min(n, max_scores_bytes // max(1, b * h * k.shape[2] * q.element_size())))
    out = torch.empty(b, n, h, d, dtype=q.dtype, device=q.device)
    for i in range(0, n, chunk):
        s = torch.matmul(q[:, :, i:i + chunk], kt)                        # (B, H, c, Lk)
        if torch.is_grad_enabled() and s.requires_grad:
            s = s.softmax(-1)
        else:  # in place: a fresh score-sized buffer costs more in page faults than the softmax
            torch.ops.aten._softmax.out(s, -1, False, out=s)
        out[:, i:i + chunk] = torch.matmul(s, v).transpose(1, 2)
    return out.flatten(2)


def _flash_attn() -> AttentionFn:
    fa = importlib.import_module("flash_attn")

    def run(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if q.device.type != "cuda" or q.dtype not in (torch.float16, torch.bfloat16):
            return sdpa(q, k, v)
        return fa.flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), softmax_scale=1.0).flatten(2)
    return run


def _sageattention() -> AttentionFn:
    sa = importlib.import_module("sageattention")

    def run(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if q.device.type != "cuda" or q.dtype not in (torch.float16, torch.bfloat16):
            return sdpa(q, k, v)
        return sa.sageattn(q, k, v, tensor_layout="HND", sm_scale=1.0).transpose(1, 2).flatten(2)
    return run


_LOADERS = {"flash_attn": _flash_attn, "sageattention": _sageattention}
_logged: set[str] = set()


def pick_attention(name: str = "auto", device: torch.device | str = "cpu") -> tuple[str, AttentionFn]:
    """The attention function for ``name``; optional kernels fall back to SDPA with a warning.

    "auto" tries flash-attn then SageAttention on CUDA (else SDPA), and uses the chunked
    matmul attention on CPU.
    """
    if name not in BACKENDS:
        raise ValueError(f"attention {name!r} is not one of {BACKENDS}")
    on_cuda = torch.device(device).type == "cuda"
    wanted = ["flash_attn", "sageattention"] if name == "auto" and on_cuda else (
        [] if name in ("auto", "sdpa", "math") else [name])
    chosen, fn = ("math", math_attention) if name == "math" or (name == "auto" and not on_cuda) else ("sdpa", sdpa)
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


_allocator_tuned: bool | None = None


def tune_cpu_allocator() -> bool:
    """Keep freed large blocks inside the process (glibc ``mallopt``) so that the DiT's big
    per-block temporaries are reused instead of being mmap-ed and page-faulted afresh each time.

    The CPU forward keeps its own temporaries below glibc's adaptive 32 MB mmap threshold, so
    the gain is small (bench/RESULTS.md, "tuned" against "default"). It
    affects the whole process (up to 2 GB of freed memory stays in the heap instead of going back
    to the OS), which a host such as ComfyUI may not want, so it is opt-in: set
    ``SPACETIME_MALLOC_TUNING=1``. Logged once when applied. Linux/glibc only; elsewhere a no-op.
    """
    global _allocator_tuned
    if _allocator_tuned is not None:
        return _allocator_tuned
    _allocator_tuned = False
    if os.environ.get("SPACETIME_MALLOC_TUNING", "0") != "1" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        ok = libc.mallopt(m_mmap_threshold, 1 << 30) == 1 and libc.mallopt(m_trim_threshold, 1 << 31) == 1
    except (OSError, AttributeError):
        ok = False
    _allocator_tuned = ok
    if ok:
        log.info("CPU DiT: glibc malloc keeps freed blocks for reuse (SPACETIME_MALLOC_TUNING=1)")
    return ok
