"""The Wan diffusion transformer (every Wan 2.1 / 2.2 variant is a ``DiTConfig``).

Behaviour follows the official model (Wan-Video/Wan2.1 and Wan2.2 ``wan/modules/model.py``,
Wan et al. 2025, arXiv:2503.20314), checked against diffusers' ``WanTransformer3DModel`` and
ComfyUI's ``comfy.ldm.wan.model.WanModel`` in tests/test_dit_parity.py. Module names equal the
official checkpoint keys, so the official layout loads without renaming.

Precision: the residual stream, norms, time embedding and adaLN modulation run in float32 (as
the official code does under autocast); the matmuls and attention run in ``compute_dtype``.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..weights.precision import Linear
from .attention import AttentionFn, pick_attention, tune_cpu_allocator, whole_keys
from .config import DiTConfig
from .patches import Grid, apply_rope, grid_of, patchify, rope_table, unpatchify

log = logging.getLogger(__name__)
Rope = torch.Tensor  # (L, 1, head_dim/2) complex64, from patches.rope_table
TokenRunner = Callable[..., torch.Tensor]  # (dit, x, e, e0, ctx, ctx_img, rope, attn) -> (B, L, out)


def sinusoidal_embedding(dim: int, t: torch.Tensor) -> torch.Tensor:
    """Wan's timestep features (cos half, then sin half), computed in float64: (N,) -> (N, dim)."""
    half = dim // 2
    freqs = torch.pow(10000.0, -torch.arange(half, dtype=torch.float64, device=t.device) / half)
    angles = torch.outer(t.to(torch.float64), freqs)
    return torch.cat([angles.cos(), angles.sin()], dim=1).float()


def modulate(h: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: ``h * (1 + scale) + shift`` with h (B, G, n, D) and shift/scale (B, G, D)."""
    return torch.addcmul(shift.unsqueeze(2), h, 1 + scale.unsqueeze(2))


class RMSNorm(nn.Module):
    """RMS norm over the whole width (across heads), float32 result."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor, gain: float = 1.0) -> torch.Tensor:
        # the statistic accumulates in fp32 without a widened copy; then one fp32 result, scaled.
        # ``gain`` folds a constant into the weight (the attention scale for queries).
        norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True, dtype=torch.float32)
        r = torch.rsqrt(norm.square() / x.shape[-1] + self.eps)  # (..., 1), small: out of place
        # (x * r promotes x to float32 inside the multiply: no separate widened copy)
        return torch.mul(x, r).mul_(self.weight.float() * gain)


def heads_first(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, L, H, d) -> contiguous (B, H, L, d) in ``dtype``: cast and transpose in one pass."""
    return t.transpose(1, 2).to(dtype, memory_format=torch.contiguous_format)


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int, eps: float) -> None:
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.o = (Linear(dim, dim) for _ in range(4))
        self.norm_q, self.norm_k = RMSNorm(dim, eps), RMSNorm(dim, eps)

    def forward(self, x: torch.Tensor, rope: Rope, attn: AttentionFn) -> torch.Tensor:
        b, n, d = x.shape                                    # x (B, L, D) in compute dtype
        w_bytes, out_bytes, ceiling = d * d * x.element_size(), b * n * d * x.element_size(), 2 * CPU_CHUNK_BYTES
        if x.device.type == "cpu" and (3 * w_bytes > ceiling or 3 * out_bytes > ceiling >= out_bytes):
            # a fused weight or output would pass glibc's 32 MB mmap ceiling where three
            # separate ones stay under it (5B and up): three matmuls (see CPU_CHUNK_BYTES)
            q, k, v = self.q(x), self.k(x), self.v(x)
        else:
            # one matmul for q, k, v (faster than three on CPU: bench/bench_dit.py); the concatenated
            # weight is transient, so the checkpoint keys and the autograd graph stay per layer
            w = torch.cat([m.weight_as(x.dtype) for m in (self.q, self.k, self.v)])
            bias = torch.cat([m.bias_as(x.dtype) for m in (self.q, self.k, self.v)])
            q, k, v = F.linear(x, w, bias).split(d, dim=-1)  # (B, L, D) each, strided views
        q = self.norm_q(q, gain=(d // self.heads) ** -0.5)   # attention scale folded in
        q = heads_first(apply_rope(q.view(b, n, self.heads, -1), rope, inplace=True), x.dtype)
        k = heads_first(apply_rope(self.norm_k(k).view(b, n, self.heads, -1), rope, inplace=True), x.dtype)
        v = v.view(b, n, self.heads, -1).transpose(1, 2)     # (B, H, L, d)
        return self.o(attn(q, k, v))                         # (B, L, D)


class TextMemo:
    """The text conditioning of a run kept across its steps: the embedded text and every block's
    cross-attention keys and values, for each of the last ``size`` distinct contexts (a guided
    batch and, after guidance stops, the conditional one). A context is recognised by value, so
    a caller may pass a fresh tensor each step. Used only without autograd."""

    @dataclass
    class Entry:
        context: torch.Tensor
        batch: int
        ctx: torch.Tensor
        kv: dict = field(default_factory=dict)   # CrossAttention -> (k, v)

    def __init__(self, size: int = 2) -> None:
        self.size = size
        self.entries: list[TextMemo.Entry] = []
        self.active: TextMemo.Entry | None = None
        self.hits = 0

    @torch.compiler.disable   # a value lookup: outside any compiled graph
    def find(self, context: torch.Tensor, batch: int) -> Entry | None:
        for e in self.entries:
            if (e.batch == batch and e.context.shape == context.shape and e.context.dtype == context.dtype
                    and e.context.device == context.device and torch.equal(e.context, context)):
                self.hits += 1
                return e
        return None

    def add(self, context: torch.Tensor, batch: int, ctx: torch.Tensor) -> Entry:
        entry = TextMemo.Entry(context.detach().clone(), batch, ctx)
        self.entries = (self.entries + [entry])[-self.size:]
        return entry


class CrossAttention(nn.Module):
    """Queries from the video tokens; keys/values from text (and CLIP-vision tokens for I2V)."""

    memo: TextMemo | None = None   # set by WanDiT.use_text_memo

    def __init__(self, dim: int, heads: int, eps: float, img: bool) -> None:
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.o = (Linear(dim, dim) for _ in range(4))
        self.norm_q, self.norm_k = RMSNorm(dim, eps), RMSNorm(dim, eps)
        if img:
            self.k_img, self.v_img = Linear(dim, dim), Linear(dim, dim)
            self.norm_k_img = RMSNorm(dim, eps)

    def _kv(self, ctx: torch.Tensor, k: Linear, v: Linear, norm: RMSNorm) -> tuple[torch.Tensor, torch.Tensor]:
        b = ctx.shape[0]
        return (heads_first(norm(k(ctx)).view(b, -1, self.heads, ctx.shape[-1] // self.heads), ctx.dtype),
                v(ctx).view(b, -1, self.heads, ctx.shape[-1] // self.heads).transpose(1, 2))

    def text_kv(self, ctx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The text keys and values, from the memo of the call when one is active."""
        entry = self.memo.active if self.memo is not None else None
        if entry is None:
            return self._kv(ctx, self.k, self.v, self.norm_k)
        kv = entry.kv.get(self)
        if kv is None:
            kv = entry.kv[self] = self._kv(ctx, self.k, self.v, self.norm_k)
        return kv

    def forward(self, x: torch.Tensor, ctx: torch.Tensor, ctx_img: torch.Tensor | None,
                attn: AttentionFn) -> torch.Tensor:
        b, n, _ = x.shape
        q = self.norm_q(self.q(x), gain=(x.shape[-1] // self.heads) ** -0.5)  # scale folded in
        q = heads_first(q.view(b, n, self.heads, -1), x.dtype)
        attn = whole_keys(attn)             # the text keys are whole on every rank of a parallel run
        out = attn(q, *self.text_kv(ctx))                                  # (B, L, D)
        if ctx_img is not None:
            out = out + attn(q, *self._kv(ctx_img, self.k_img, self.v_img, self.norm_k_img))
        return self.o(out)


# Largest temporary the CPU forward makes in one piece (the FFN hidden layer; attention scores
# are bounded the same way in attention.math_attention). glibc hands blocks above 32 MB to
# mmap and back to the kernel on free, so a bigger temporary is page-faulted afresh in every
# block; chunks below it are reused from the heap. bench/bench_dit.py measures the effect.
CPU_CHUNK_BYTES = 16 * 2**20


def chunked_ffn(ffn: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """``ffn(x)`` for x (B, L, D) on the CPU in token chunks whose hidden activations stay under
    CPU_CHUNK_BYTES. Per-token, so the result equals the unchunked one up to the matmul
    kernels' summation order. Unchunked while training (the autograd graph stays one op per
    layer) and off the CPU."""
    b, n, d = x.shape
    rows = max(1, CPU_CHUNK_BYTES // (ffn[0].out_features * x.element_size()))
    if x.device.type != "cpu" or b * n <= rows or torch.is_grad_enabled():
        return ffn(x)
    flat = x.reshape(b * n, d)
    first = ffn(flat[:rows])
    out = torch.empty(b * n, first.shape[-1], dtype=first.dtype, device=x.device)
    out[:rows] = first
    for i in range(rows, b * n, rows):
        out[i:i + rows] = ffn(flat[i:i + rows])
    return out.view(b, n, -1)


class WanBlock(nn.Module):
    def __init__(self, c: DiTConfig) -> None:
        super().__init__()
        self.eps = c.eps
        self.self_attn = SelfAttention(c.dim, c.num_heads, c.eps)
        self.norm3 = nn.LayerNorm(c.dim, c.eps)  # before cross-attention (cross_attn_norm)
        self.cross_attn = CrossAttention(c.dim, c.num_heads, c.eps, c.img_emb)
        self.ffn = nn.Sequential(Linear(c.dim, c.ffn_dim), nn.GELU(approximate="tanh"),
                                 Linear(c.ffn_dim, c.dim))
        self.modulation = nn.Parameter(torch.zeros(1, 6, c.dim))  # adaLN table added to e0

    def forward(self, x: torch.Tensor, e0: torch.Tensor, ctx: torch.Tensor,
                ctx_img: torch.Tensor | None, rope: Rope, attn: AttentionFn) -> torch.Tensor:
        b, n, d = x.shape                                    # x (B, L, D) residual stream
        g = e0.shape[1]                                      # e0 (B, G, 6, D): G timestep groups
        mods = (self.modulation.unsqueeze(0) + e0).to(x.dtype)  # fp32 sum, then residual dtype
        shift1, scale1, gate1, shift2, scale2, gate2 = mods.unbind(2)
        cdt = ctx.dtype

        h = F.layer_norm(x, (d,), eps=self.eps).view(b, g, -1, d)
        y = self.self_attn(modulate(h, shift1, scale1).view(b, n, d).to(cdt), rope, attn)
        x = torch.addcmul(x.view(b, g, -1, d), y.view(b, g, -1, d), gate1.unsqueeze(2)).view(b, n, d)

        x = x + self.cross_attn(self.norm3(x).to(cdt), ctx, ctx_img, attn)  # fp32 + cdt -> fp32

        h = F.layer_norm(x, (d,), eps=self.eps).view(b, g, -1, d)
        y = chunked_ffn(self.ffn, modulate(h, shift2, scale2).view(b, n, d).to(cdt))
        return torch.addcmul(x.view(b, g, -1, d), y.view(b, g, -1, d), gate2.unsqueeze(2)).view(b, n, d)


class Head(nn.Module):
    def __init__(self, c: DiTConfig) -> None:
        super().__init__()
        self.eps = c.eps
        self.head = Linear(c.dim, c.out_dim * math.prod(c.patch_size))
        self.modulation = nn.Parameter(torch.zeros(1, 2, c.dim))

    def forward(self, x: torch.Tensor, e: torch.Tensor, cdt: torch.dtype) -> torch.Tensor:
        b, n, d = x.shape                                    # e (B, G, D), time embedding
        shift, scale = (self.modulation.unsqueeze(0) + e.unsqueeze(2)).unbind(2)
        h = F.layer_norm(x, (d,), eps=self.eps).view(b, e.shape[1], -1, d)
        return self.head(modulate(h, shift, scale).view(b, n, d).to(cdt)).float()


class MLPProj(nn.Module):
    """CLIP-vision tokens -> model width (``img_emb``); FLF2V adds learned positions first."""

    def __init__(self, c: DiTConfig) -> None:
        super().__init__()
        self.proj = nn.Sequential(nn.LayerNorm(c.clip_dim), Linear(c.clip_dim, c.clip_dim), nn.GELU(),
                                  Linear(c.clip_dim, c.dim), nn.LayerNorm(c.dim))
        self.emb_pos = nn.Parameter(torch.zeros(1, c.flf_pos_len, c.clip_dim)) if c.flf_pos_len else None

    def forward(self, clip_fea: torch.Tensor) -> torch.Tensor:
        x = clip_fea.float()                                 # (B, N, 1280)
        if self.emb_pos is not None:
            n = min(x.shape[1], self.emb_pos.shape[1])
            x = x[:, :n] + self.emb_pos[:, :n].float()
        return self.proj(x)                                  # (B, N, D) float32


class WanDiT(nn.Module):
    """``v = dit(x, timestep, context, clip_fea=None)``: velocity of a latent video.

    See the README's Python API for the call. ``compute_dtype`` sets the matmul/attention precision.
    """

    def __init__(self, config: DiTConfig, compute_dtype: torch.dtype = torch.float32,
                 attention: str = "auto") -> None:
        super().__init__()
        c = self.config = config
        self.compute_dtype = compute_dtype
        self.attention = attention
        self.patch_embedding = nn.Conv3d(c.in_dim, c.dim, c.patch_size, c.patch_size)
        self.text_embedding = nn.Sequential(Linear(c.text_dim, c.dim), nn.GELU(approximate="tanh"),
                                            Linear(c.dim, c.dim))
        self.time_embedding = nn.Sequential(Linear(c.freq_dim, c.dim), nn.SiLU(), Linear(c.dim, c.dim))
        self.time_projection = nn.Sequential(nn.SiLU(), Linear(c.dim, 6 * c.dim))
        self.blocks = nn.ModuleList(WanBlock(c) for _ in range(c.num_layers))
        self.head = Head(c)
        self.img_emb = MLPProj(c) if c.img_emb else None
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """Fresh-model initialisation as the official ``WanModel.init_weights``: Xavier-uniform
        linears with zero bias, N(0, 0.02) text/time embeddings, a zero output layer, and
        adaLN tables ~ N(0, 1/dim). (A no-op on the meta device, where load_dit builds.)"""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.xavier_uniform_(self.patch_embedding.weight.flatten(1))
        for seq in (self.text_embedding, self.time_embedding):
            for m in seq:
                if isinstance(m, nn.Linear):
                    nn.init.normal_(m.weight, std=0.02)
        nn.init.zeros_(self.head.head.weight)
        for p in [b.modulation for b in self.blocks] + [self.head.modulation]:
            nn.init.normal_(p, std=self.config.dim ** -0.5)

    # -- conditioning, built once per call and shared by every block --------------------------
    def time_groups(self, timestep: torch.Tensor | float, b: int, grid: Grid) -> torch.Tensor:
        """Timesteps as (B, G) for G equal groups of consecutive tokens: 1 (one per sample),
        T' (per frame) or L (per token). Per-token input that is constant per frame is reduced."""
        t = torch.as_tensor(timestep).float()
        t = t.reshape(1) if t.ndim == 0 else t
        n_tok, frames = math.prod(grid), grid[0]
        if t.ndim == 1:
            if t.shape[0] not in (1, b):
                raise ValueError(f"timestep has {t.shape[0]} values for a batch of {b}; pass [B] or [B, {n_tok}]")
            return t.expand(b).unsqueeze(1)
        if t.ndim != 2 or t.shape[0] not in (1, b) or t.shape[1] not in (n_tok, frames):
            raise ValueError(f"timestep of shape {tuple(t.shape)} does not fit batch {b} and grid {grid}: "
                             f"pass [B], [B, {n_tok}] (per token) or [B, {frames}] (per frame)")
        t = t.expand(b, -1)
        if t.shape[1] == n_tok != frames:
            per_frame = t.reshape(b, frames, -1)
            if bool((per_frame == per_frame[..., :1]).all()):
                t = per_frame[..., 0]
        if bool((t == t[:, :1]).all()):
            t = t[:, :1]
        return t.contiguous()

    def embed_time(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, G) timesteps -> e (B, G, D) and the block modulation input e0 (B, G, 6, D), fp32."""
        b, g = t.shape
        w = self.time_embedding[0].weight
        e = self.time_embedding(sinusoidal_embedding(self.config.freq_dim, t.flatten()).to(w.device, torch.float32))
        e0 = self.time_projection(e).view(b, g, 6, self.config.dim)
        return e.view(b, g, -1), e0

    def embed_text(self, context: torch.Tensor, b: int) -> torch.Tensor:
        c = self.config
        if context.ndim != 3 or context.shape[-1] != c.text_dim or context.shape[0] not in (1, b):
            raise ValueError(f"context must be [B, L, {c.text_dim}] text-encoder states (B = {b} or 1); "
                             f"got {tuple(context.shape)}")
        if context.shape[1] < c.text_len:  # zero-pad to text_len, as the official model does
            context = F.pad(context, (0, 0, 0, c.text_len - context.shape[1]))
        return self.text_embedding(context.to(self.compute_dtype)).expand(b, -1, -1)

    def embed_image(self, clip_fea: torch.Tensor | None, b: int) -> torch.Tensor | None:
        c = self.config
        if self.img_emb is None:
            if clip_fea is not None:
                log.debug("clip_fea ignored: this %s model has no CLIP-vision branch", c.model_type)
            return None
        want = "[B, 514, 1280] (first and last frame)" if c.flf_pos_len else "[B, 257, 1280]"
        if clip_fea is None or clip_fea.ndim != 3 or clip_fea.shape[-1] != c.clip_dim:
            got = None if clip_fea is None else tuple(clip_fea.shape)
            raise ValueError(f"this {c.model_type} model needs clip_fea {want}: CLIP-vision (ViT-H) "
                             f"penultimate tokens; got {got}")
        if c.flf_pos_len and clip_fea.shape[0] == 2 * b and 2 * clip_fea.shape[1] == c.flf_pos_len:
            clip_fea = clip_fea.reshape(b, c.flf_pos_len, -1)  # official layout: images on the batch axis
        if clip_fea.shape[0] not in (1, b):
            raise ValueError(f"clip_fea batch {clip_fea.shape[0]} does not match the latent batch {b}; want {want}")
        return self.img_emb(clip_fea).to(self.compute_dtype).expand(b, -1, -1)

    def forward(self, x: torch.Tensor, timestep: torch.Tensor | float, context: torch.Tensor,
                clip_fea: torch.Tensor | None = None) -> torch.Tensor:
        c = self.config
        grid = grid_of(x.shape, c.patch_size, c.in_dim)
        b = x.shape[0]
        attn = self.attention_fn(x.device)
        if x.device.type == "cpu":
            tune_cpu_allocator()
        e, e0 = self.embed_time(self.time_groups(timestep, b, grid))
        memo = self.text_memo if not torch.is_grad_enabled() else None
        entry = memo.find(context, b) if memo is not None else None
        ctx = entry.ctx if entry is not None else self.embed_text(context, b)  # (B, text_len, D)
        if memo is not None:
            memo.active = entry or memo.add(context, b, ctx)
        ctx_img = self.embed_image(clip_fea, b)              # (B, 257|514, D) or None
        rope = rope_table(grid, c.head_dim, c.rope_theta, x.device)
        try:
            out = self.run_tokens(x, e, e0, ctx, ctx_img, rope, attn)  # (B, L, out_dim * prod(patch))
        finally:
            if memo is not None:
                memo.active = None
        return unpatchify(out, grid, c.patch_size, c.out_dim).to(x.dtype)

    text_memo: TextMemo | None = None

    def use_text_memo(self, memo: TextMemo | None) -> None:
        """Keep the text keys and values across calls in ``memo`` (None: recompute every call)."""
        self.text_memo = memo
        for block in self.blocks:
            block.cross_attn.memo = memo

    # -- the per-token part of the call; a sequence-parallel plan (model/parallel) splits it ----
    sequence_parallel: "TokenRunner | None" = None

    def embed_patches(self, x: torch.Tensor, tokens: slice = slice(None)) -> torch.Tensor:
        """The patch embedding of ``x`` (B, C, T, H, W) -> (B, n, D) float32, for the ``tokens``
        range of the (t, h, w) sequence (all of it by default)."""
        w = self.patch_embedding
        return patchify(x.float(), w.weight.float(), w.bias.float(), self.config.patch_size, tokens)

    def run_tokens(self, x: torch.Tensor, e: torch.Tensor, e0: torch.Tensor, ctx: torch.Tensor,
                   ctx_img: torch.Tensor | None, rope: Rope, attn: AttentionFn) -> torch.Tensor:
        """Patch embedding, the blocks and the output head: latent (B, C, T, H, W) -> per-token
        output (B, L, out_dim * prod(patch)). With ``sequence_parallel`` set, that plan runs this
        part over its share of the tokens and gathers the output."""
        if self.sequence_parallel is not None:
            return self.sequence_parallel(self, x, e, e0, ctx, ctx_img, rope, attn)
        tokens = self.run_blocks(self.embed_patches(x), e0, ctx, ctx_img, rope, attn)  # (B, L, D) fp32
        return self.head(tokens, e, self.compute_dtype)

    # -- points a host may take over (the ComfyUI MODEL: block patches, attention overrides) ----
    def attention_fn(self, device: torch.device) -> AttentionFn:
        """The attention kernel of this call (``attention`` picked for ``device``)."""
        return pick_attention(self.attention, device)[1]

    def run_blocks(self, tokens: torch.Tensor, e0: torch.Tensor, ctx: torch.Tensor, ctx_img: torch.Tensor | None,
                   rope: Rope, attn: AttentionFn) -> torch.Tensor:
        """The transformer blocks in order over the (B, L, D) residual stream."""
        for block in self.blocks:
            tokens = block(tokens, e0, ctx, ctx_img, rope, attn)
        return tokens
