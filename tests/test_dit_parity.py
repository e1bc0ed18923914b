"""Fidelity: our DiT vs diffusers' WanTransformer3DModel and ComfyUI's WanModel, same weights."""
from __future__ import annotations

import pytest
import torch

from spacetime_video.model import load_dit
from dit_helpers import TINY, inputs, pad_text, random_state_dict, rel_err

TOL = 1e-5


def diffusers_model(cfg, sd):
    from diffusers import WanTransformer3DModel

    m = WanTransformer3DModel(
        patch_size=cfg.patch_size, num_attention_heads=cfg.num_heads, attention_head_dim=cfg.head_dim,
        in_channels=cfg.in_dim, out_channels=cfg.out_dim, text_dim=cfg.text_dim, freq_dim=cfg.freq_dim,
        ffn_dim=cfg.ffn_dim, num_layers=cfg.num_layers, cross_attn_norm=True, eps=cfg.eps,
        image_dim=cfg.clip_dim if cfg.img_emb else None, added_kv_proj_dim=cfg.dim if cfg.img_emb else None,
        pos_embed_seq_len=cfg.flf_pos_len or None)
    m.load_state_dict(to_diffusers(sd), strict=True)
    return m.eval()


def to_diffusers(sd):
    """diffusers' own converter; it leaves FLF2V's emb_pos alone, which diffusers names pos_embed."""
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    out = convert_wan_transformer_to_diffusers(dict(sd))
    if "img_emb.emb_pos" in out:
        out["condition_embedder.image_embedder.pos_embed"] = out.pop("img_emb.emb_pos")
    return out


def comfy_model(comfy, cfg, sd):
    from comfy.ldm.wan.model import WanModel

    m = WanModel(model_type="i2v" if cfg.img_emb else "t2v", patch_size=cfg.patch_size, text_len=cfg.text_len,
                 in_dim=cfg.in_dim, dim=cfg.dim, ffn_dim=cfg.ffn_dim, freq_dim=cfg.freq_dim,
                 text_dim=cfg.text_dim, out_dim=cfg.out_dim, num_heads=cfg.num_heads,
                 num_layers=cfg.num_layers, eps=cfg.eps, flf_pos_embed_token_number=cfg.flf_pos_len or None,
                 operations=comfy.ops.disable_weight_init, dtype=torch.float32, device="cpu")
    m.load_state_dict(sd, strict=True)
    return m.eval()


@pytest.mark.parametrize("variant", list(TINY))
@torch.no_grad()
def test_matches_diffusers_and_comfy(variant, comfy):
    cfg = TINY[variant]
    sd = random_state_dict(cfg)
    x, ts, ctx, clip = inputs(cfg, b=2)
    ours = load_dit(sd, config=cfg)(x, ts, ctx, clip)

    clip_d = None
    if clip is not None:  # diffusers takes FLF2V's two images on the batch axis, as the official code
        clip_d = clip.reshape(-1, 257, cfg.clip_dim) if cfg.flf_pos_len else clip
    ref_d = diffusers_model(cfg, sd)(x, ts, pad_text(ctx), clip_d, return_dict=False)[0]
    ref_c = comfy_model(comfy, cfg, sd)(x, ts, pad_text(ctx), clip_fea=clip)

    assert ours.shape == (2, cfg.out_dim, *x.shape[2:])
    assert rel_err(ref_d, ref_c) < TOL  # the references agree with each other
    assert rel_err(ours, ref_d) < TOL, rel_err(ours, ref_d)
    assert rel_err(ours, ref_c) < TOL, rel_err(ours, ref_c)


@torch.no_grad()
def test_ti2v_per_token_timesteps_match_references(comfy):
    """Wan 2.2 TI2V: tokens of the clean first frame carry timestep 0, the rest the step's."""
    cfg = TINY["ti2v"]
    sd = random_state_dict(cfg, seed=3)
    x, _, ctx, _ = inputs(cfg, b=1, t=3, hw=8)
    per_frame = 4 * 4
    ts = torch.full((1, 3 * per_frame), 700.0)
    ts[:, :per_frame] = 0.0
    ours = load_dit(sd, config=cfg)(x, ts, ctx)
    ref_d = diffusers_model(cfg, sd)(x, ts, pad_text(ctx), return_dict=False)[0]
    cm = comfy_model(comfy, cfg, sd)
    ref_c = cm(x, ts, pad_text(ctx))
    # ComfyUI's WAN22 turns its denoise mask into per-frame timesteps [B, T]; same result.
    ref_cf = cm(x, torch.tensor([[0.0, 700.0, 700.0]]), pad_text(ctx))
    assert rel_err(ours, ref_d) < TOL and rel_err(ours, ref_c) < TOL and rel_err(ours, ref_cf) < TOL
    # and it differs from giving every token 700 (the first frame's timestep matters)
    assert rel_err(load_dit(sd, config=cfg)(x, torch.tensor([700.0]), ctx), ours) > 1e-3
