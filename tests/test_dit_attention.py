"""Attention kernels and the DiT's training path (the embedded model trains a WanDiT)."""
from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from spacetime_video.model import WanDiT
from spacetime_video.model.dit.attention import math_attention, pick_attention, sdpa
from spacetime_video.model.dit.config import tiny_config


def test_math_attention_equals_sdpa_and_chunks():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, n, 16, generator=g) for n in (40, 24, 24))
    q = q * 16 ** -0.5  # the backends take pre-scaled queries
    ref = F.scaled_dot_product_attention(q, k, v, scale=1.0).transpose(1, 2).flatten(2)
    assert torch.allclose(sdpa(q, k, v), ref, atol=1e-6)
    assert torch.allclose(math_attention(q, k, v), ref, atol=1e-6)
    tiny_budget = 2 * 3 * 24 * 4 * 7  # forces chunks of 7 queries
    assert torch.allclose(math_attention(q, k, v, max_scores_bytes=tiny_budget), ref, atol=1e-6)


def test_missing_optional_kernel_falls_back_with_a_warning(caplog):
    caplog.set_level(logging.INFO, logger="spacetime_video.model.dit.attention")
    name, fn = pick_attention("flash_attn", "cpu")  # flash-attn is not installed here
    assert name == "sdpa" and fn is sdpa
    assert "falling back to SDPA" in caplog.text
    assert pick_attention("auto", "cpu")[0] == "math"


def test_wandit_trains_from_scratch():
    """WanDiT(config) is constructible and differentiable (the embedded model's helper trains it)."""
    torch.manual_seed(0)
    cfg = tiny_config(num_heads=2)
    model = WanDiT(cfg)
    assert model.head.head.weight.abs().sum() == 0  # official init: zero output layer
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randn(2, 16, 2, 8, 8)
    ctx = torch.randn(2, 5, cfg.text_dim)
    target = torch.randn_like(x)
    losses = []
    for _ in range(5):
        loss = F.mse_loss(model(x, torch.tensor([900.0, 100.0]), ctx), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert all(p.grad is not None for p in model.blocks[0].self_attn.parameters())


def test_cpu_ffn_runs_in_bounded_chunks_with_the_same_result(monkeypatch):
    """The FFN hidden layer is the biggest temporary of a real-size forward; on the CPU it is
    computed in token chunks under CPU_CHUNK_BYTES (glibc page-faults bigger ones afresh in
    every block). Chunks are per token, so the output is unchanged. The tiny budget here also
    takes the unfused q/k/v path (three matmuls), which must agree with the fused one."""
    from spacetime_video.model.dit import model as dit_mod
    torch.manual_seed(0)
    cfg = tiny_config(num_heads=2)
    model = WanDiT(cfg).eval()
    for p in model.parameters():            # the official init zeroes the head: make it non-trivial
        torch.nn.init.normal_(p, std=0.1)
    x, ctx, t = torch.randn(1, 16, 3, 8, 8), torch.randn(1, 5, cfg.text_dim), torch.tensor([500.0])
    with torch.no_grad():
        whole = model(x, t, ctx)
    seen, separate_q = [], []
    model.blocks[0].ffn.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[0]))
    # the fused q/k/v matmul reads q's weight directly; the separate path calls q as a module
    model.blocks[0].self_attn.q.register_forward_hook(lambda m, i, o: separate_q.append(1))
    rows = 10
    monkeypatch.setattr(dit_mod, "CPU_CHUNK_BYTES", rows * cfg.ffn_dim * 4)
    with torch.no_grad():
        chunked = model(x, t, ctx)
    tokens = 3 * 4 * 4
    assert seen == [rows] * (tokens // rows) + [tokens % rows]
    assert separate_q == [1]
    assert torch.allclose(chunked, whole, rtol=1e-5, atol=1e-6)
    seen.clear()
    model(x, t, ctx)                        # with autograd on: one call, the graph stays simple
    assert seen == [1]


def test_rope_in_place_equals_out_of_place():
    from spacetime_video.model.dit.patches import apply_rope, rope_table
    freqs = rope_table((2, 3, 4), 16, 10000.0, "cpu")
    x = torch.randn(1, 24, 2, 16)
    ref = apply_rope(x.bfloat16(), freqs)   # not float32: the out-of-place path
    mine = x.bfloat16().float()
    got = apply_rope(mine, freqs, inplace=True)
    assert torch.equal(got, ref) and got.data_ptr() == mine.data_ptr()
    keep = x.clone()
    apply_rope(x, freqs)                    # by default the input is never touched
    assert torch.equal(x, keep)
    y = x.clone().requires_grad_(True)      # nor is a tensor autograd tracks, even if asked
    apply_rope(y, freqs, inplace=True)
    assert torch.equal(y.detach(), keep)
