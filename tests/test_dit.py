"""DiT unit tests: layouts, config detection, timesteps, errors, fp8 storage, patch grid."""
from __future__ import annotations

import dataclasses

import pytest
import torch
from safetensors.torch import save_file

from spacetime_video.model import DIT_PRESETS, WanDiT, load_dit
from spacetime_video.model.dit.config import param_count
from spacetime_video.model.dit.loading import config_metadata, detect_config
from spacetime_video.model.weights.layouts import dit_official_names
from spacetime_video.model.weights.files import WeightsError
from spacetime_video.model.dit.patches import LatentShapeError, patchify, rope_table, unpatchify
from dit_helpers import TINY, inputs, random_state_dict, rel_err
from test_dit_parity import to_diffusers


@pytest.fixture(scope="module")
def t2v():
    cfg = TINY["i2v"]  # the richest key set (img_emb, k_img/v_img)
    return cfg, random_state_dict(cfg)


@torch.no_grad()
def test_every_layout_and_file_gives_identical_output(t2v, tmp_path):
    cfg, sd = t2v
    x, ts, ctx, clip = inputs(cfg)
    want = load_dit(sd, config=cfg)(x, ts, ctx, clip)
    layouts = {"official": sd, "comfy": {f"model.diffusion_model.{k}": v for k, v in sd.items()},
               "diffusers": to_diffusers(sd)}
    for name, layout in layouts.items():
        assert torch.equal(load_dit(layout, config=cfg)(x, ts, ctx, clip), want), name
        path = tmp_path / f"{name}.safetensors"
        save_file({k: v.contiguous() for k, v in layout.items()}, str(path), metadata=config_metadata(cfg))
        model = load_dit(path)  # config from shapes + metadata (heads of a tiny model)
        assert model.config == cfg
        assert torch.equal(model(x, ts, ctx, clip), want), name
    shards = tmp_path / "sharded"  # diffusers repos ship a folder of shards
    shards.mkdir()
    keys = sorted(layouts["diffusers"])
    for i, part in enumerate((keys[: len(keys) // 2], keys[len(keys) // 2:])):
        save_file({k: layouts["diffusers"][k].contiguous() for k in part},
                  str(shards / f"diffusion_pytorch_model-0000{i + 1}-of-00002.safetensors"),
                  metadata=config_metadata(cfg))
    assert torch.equal(load_dit(shards)(x, ts, ctx, clip), want)


def test_presets_detected_from_shapes():
    for name, cfg in DIT_PRESETS.items():
        with torch.device("meta"):
            shapes = {k: tuple(v.shape) for k, v in WanDiT(cfg).state_dict().items()}
        got = detect_config(shapes)
        assert got == cfg, name
        assert got.vae == ("2.2" if name.startswith("wan2.2-ti2v") else "2.1")
    assert DIT_PRESETS["wan2.1-flf2v-14b"].model_type == "flf2v"


def test_param_count_matches_modules():
    for cfg in TINY.values():
        assert param_count(cfg) == sum(p.numel() for p in WanDiT(cfg).parameters())
    assert 1.40e9 < param_count(DIT_PRESETS["wan2.1-t2v-1.3b"]) < 1.45e9


@torch.no_grad()
def test_equal_per_token_timesteps_equal_scalar_call():
    cfg = TINY["ti2v"]
    model = load_dit(random_state_dict(cfg), config=cfg)
    x, _, ctx, _ = inputs(cfg, b=2)
    scalar = model(x, torch.tensor([500.0, 120.0]), ctx)
    tokens = 3 * 4 * 4
    per_token = torch.tensor([500.0, 120.0])[:, None].expand(2, tokens)
    assert torch.equal(model(x, per_token, ctx), scalar)
    per_frame = torch.tensor([[500.0] * 3, [120.0] * 3])
    assert torch.equal(model(x, per_frame, ctx), scalar)
    # a genuinely per-token pattern (not constant per frame) also runs and differs
    mixed = per_token.clone()
    mixed[:, ::2] = 0.0
    assert rel_err(model(x, mixed, ctx), scalar) > 1e-3


@torch.no_grad()
def test_context_is_zero_padded_to_text_len(t2v):
    cfg, sd = t2v
    model = load_dit(sd, config=cfg)
    x, ts, ctx, clip = inputs(cfg)
    padded = torch.nn.functional.pad(ctx, (0, 0, 0, cfg.text_len - ctx.shape[1]))
    assert torch.equal(model(x, ts, ctx, clip), model(x, ts, padded, clip))


@torch.no_grad()
def test_bf16_compute_close_to_fp32(t2v):
    cfg, sd = t2v
    x, ts, ctx, clip = inputs(cfg)
    ref = load_dit(sd, config=cfg)(x, ts, ctx, clip)
    bf = load_dit(sd, config=cfg, compute_dtype=torch.bfloat16)
    assert bf.blocks[0].self_attn.q.weight.dtype == torch.bfloat16
    assert bf.blocks[0].modulation.dtype == torch.float32  # adaLN tables stay fp32
    assert rel_err(bf(x, ts, ctx, clip), ref) < 3e-2


def _scaled_fp8(sd, suffix="scale_weight"):
    """A ComfyUI-style "fp8_scaled" file: block Linear weights in e4m3fn with a per-tensor scale
    (``scale_weight``; newer ComfyUI files name it ``weight_scale``)."""
    out, deq = {"model.diffusion_model.scaled_fp8": torch.empty(2, dtype=torch.float8_e4m3fn)}, {}
    for k, v in sd.items():
        if (k.startswith("blocks.") and k.endswith(".weight") and v.ndim == 2) or k == "patch_embedding.weight":
            scale = v.abs().max() / 448.0
            q = (v / scale).to(torch.float8_e4m3fn)
            out[f"model.diffusion_model.{k}"] = q
            out[f"model.diffusion_model.{k[:-7]}.{suffix}"] = scale.reshape(())
            deq[k] = q.float() * scale
        else:
            out[f"model.diffusion_model.{k}"] = v.to(torch.bfloat16)
            deq[k] = v.to(torch.bfloat16).float()
    return out, deq


@pytest.mark.parametrize("suffix", ["scale_weight", "weight_scale"])
@torch.no_grad()
def test_scaled_fp8_file_round_trip(t2v, tmp_path, suffix):
    cfg, sd = t2v
    x, ts, ctx, clip = inputs(cfg)
    fp8, dequantised = _scaled_fp8(sd, suffix)
    path = tmp_path / "fp8_scaled.safetensors"
    save_file(fp8, str(path), metadata=config_metadata(cfg))
    model = load_dit(path)
    assert model.blocks[0].ffn[0].weight.dtype == torch.float8_e4m3fn  # stays fp8 in memory
    assert model.patch_embedding.weight.dtype == torch.float32  # a scaled fp8 conv is widened at load
    out = model(x, ts, ctx, clip)
    # exact dequantisation: same as fp32 weights w8 * scale
    assert rel_err(out, load_dit(dequantised, config=cfg)(x, ts, ctx, clip)) < 1e-5
    # and within fp8 precision of the original fp32 weights (stated tolerance: 10 %)
    assert rel_err(out, load_dit(sd, config=cfg)(x, ts, ctx, clip)) < 0.1
    # asking for fp8 storage keeps the file's own fp8 weights (and scales) as they are and
    # stores the other Linear weights in the asked fp8
    e5m2 = load_dit(path, dtype=torch.float8_e5m2)
    assert e5m2.blocks[0].ffn[0].weight.dtype == torch.float8_e4m3fn
    assert torch.equal(e5m2.blocks[0].ffn[0].scale_weight, model.blocks[0].ffn[0].scale_weight)
    assert e5m2.text_embedding[0].weight.dtype == torch.float8_e5m2


def test_unknown_checkpoint_names_expected_and_found_keys():
    with pytest.raises(WeightsError, match=r"expected keys like patch_embedding.weight.*found 2 keys: decoder"):
        load_dit({"decoder.conv.weight": torch.zeros(1), "encoder.x": torch.zeros(1)})


def test_shape_mismatch_and_missing_keys_are_reported(t2v):
    cfg, sd = t2v
    bad = dict(sd)
    bad["blocks.1.ffn.2.weight"] = torch.zeros(cfg.dim, cfg.ffn_dim + 1)
    with pytest.raises(WeightsError, match=r"blocks.1.ffn.2.weight: file \(128, 257\) vs model \(128, 256\)"):
        load_dit(bad, config=cfg)
    del bad["blocks.1.ffn.2.weight"]
    with pytest.raises(WeightsError, match=r"missing 1 keys \['blocks.1.ffn.2.weight'\]"):
        load_dit(bad, config=cfg)


def test_pickle_and_heads_errors(tmp_path):
    with pytest.raises(WeightsError, match="pickle"):
        load_dit(tmp_path / "model.pth")
    cfg = dataclasses.replace(TINY["t2v"], dim=64, ffn_dim=64)
    with pytest.raises(WeightsError, match="cannot tell the number of attention heads"):
        load_dit(random_state_dict(cfg))


@torch.no_grad()
def test_latent_that_does_not_fit_is_refused(t2v):
    cfg, sd = t2v
    model = load_dit(sd, config=cfg)
    x, ts, ctx, clip = inputs(cfg)
    with pytest.raises(LatentShapeError, match=r"expects 36 latent channels.*got 16"):
        model(x[:, :16], ts, ctx, clip)
    with pytest.raises(LatentShapeError, match=r"3 x 7 x 8 does not fit the patch grid 1 x 2 x 2.*8 x 8"):
        model(x[..., :7, :], ts, ctx, clip)
    with pytest.raises(ValueError, match=r"needs clip_fea \[B, 257, 1280\]"):
        model(x, ts, ctx)
    with pytest.raises(ValueError, match=r"context must be \[B, L, 32\]"):
        model(x, ts, ctx[..., :8], clip)
    with pytest.raises(ValueError, match=r"pass \[B\], \[B, 48\] \(per token\)"):
        model(x, torch.zeros(1, 5), ctx, clip)


def test_patch_grid_matches_conv3d_and_round_trips():
    conv = torch.nn.Conv3d(16, 32, (1, 2, 2), (1, 2, 2))
    x = torch.randn(2, 16, 3, 6, 8)
    ref = conv(x).flatten(2).transpose(1, 2)  # (t, h, w) row-major tokens
    assert torch.allclose(patchify(x, conv.weight, conv.bias, (1, 2, 2)), ref, atol=1e-5)
    tok = torch.randn(2, 3 * 3 * 4, 16 * 4)
    vid = unpatchify(tok, (3, 3, 4), (1, 2, 2), 16)
    assert vid.shape == (2, 16, 3, 6, 8)
    assert torch.equal(vid[0, :, 1, 2:4, 4:6].permute(1, 2, 0).reshape(-1), tok[0, 1 * 12 + 1 * 4 + 2])


def test_rope_tables_are_cached_per_grid():
    a = rope_table((3, 4, 4), 64)
    assert rope_table((3, 4, 4), 64) is a
    assert rope_table((3, 4, 5), 64) is not a
    assert a.shape == (48, 1, 32) and torch.allclose(a.abs(), torch.ones(a.shape))
    # token (t=1, h=2, w=3) rotates its first time pair by 1 radian, its first h pair by 2
    tok = 1 * 16 + 2 * 4 + 3
    assert torch.allclose(a[tok, 0, 0].angle(), torch.tensor(1.0))
    assert torch.allclose(a[tok, 0, 12].angle(), torch.tensor(2.0))  # 64 -> (12, 10, 10) pairs


def test_conversion_table_maps_diffusers_names():
    names = dit_official_names(["blocks.3.attn2.add_k_proj.weight", "blocks.3.norm2.bias",
                                "scale_shift_table", "blocks.0.scale_shift_table", "proj_out.weight",
                                "blocks.0.attn2.norm_added_q.weight"])
    assert set(names) == {"blocks.3.cross_attn.k_img.weight", "blocks.3.norm3.bias", "head.modulation",
                          "blocks.0.modulation", "head.head.weight"}
