"""The implementations bench/gpu_check.py compares, each built from the same official-layout
random weights: our DiT / VAE (each attention kernel), ComfyUI's native Wan and diffusers'."""
from __future__ import annotations

import importlib.util
import sys
from typing import TYPE_CHECKING

import torch

import bench_dit  # helpers shared with the CPU benchmarks

if TYPE_CHECKING:
    from gpu_check import Case, Device


def import_comfy(dev: Device):
    """ComfyUI's ``comfy`` package from the test host (``SPACETIME_COMFYUI`` to override)."""
    if str(bench_dit.COMFY) not in sys.path:
        sys.path.insert(0, str(bench_dit.COMFY))
    import comfy.cli_args

    comfy.cli_args.args.cpu = not dev.cuda     # must precede any import of comfy.model_management
    import comfy.ldm.modules.attention
    import comfy.ops  # noqa: F401
    return comfy


def our_attention(st, dev: Device) -> list[str]:
    """The attention kernels to run ours with: SDPA, and flash-attn / SageAttention where they
    are installed and usable (CUDA); on CPU, SDPA and the chunked matmul attention ("math")."""
    if not dev.cuda:
        return ["sdpa", "math"]
    names = ["sdpa"]
    for name in ("flash_attn", "sageattention"):
        if importlib.util.find_spec(name) is None:
            print(f"ours with {name}: skipped, not installed")
        elif st.model.dit.attention.pick_attention(name, dev.torch)[0] != name:
            print(f"ours with {name}: skipped, installed but not usable (see the warning above)")
        else:
            names.append(name)
    return names


def build_dit(st, impl: str, cfg, sd: dict, dev: Device, dtype: torch.dtype):
    """call(x, t, ctx) -> velocity of one implementation, from official-layout weights."""
    if impl.startswith("ours"):
        model = st.model.load_dit(sd, compute_dtype=dtype, device=dev.torch, attention=impl.split(":")[1],
                                  config=cfg)
        return model
    ref = dict(patch_size=cfg.patch_size, in_dim=cfg.in_dim, out_dim=cfg.out_dim, dim=cfg.dim, ffn_dim=cfg.ffn_dim,
               num_heads=cfg.num_heads, num_layers=cfg.num_layers, text_dim=cfg.text_dim, freq_dim=cfg.freq_dim,
               eps=cfg.eps)
    if impl == "comfy":
        import comfy.ops
        from comfy.ldm.wan.model import WanModel

        # Built on the meta device; the weights become its parameters (assign=True), then move.
        model = WanModel(text_len=cfg.text_len, operations=comfy.ops.disable_weight_init, dtype=dtype,
                         device="meta", **ref)
        bench_dit._load_assign(model, sd, keep_dtypes=True)
        bench_dit._no_meta(model)
        model.to(dev.torch)
        return lambda x, t, ctx: model(x.to(dtype), t, ctx.to(dtype))
    if impl == "diffusers":
        from diffusers import WanTransformer3DModel
        from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers
        from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed

        with torch.device("meta"):
            model = WanTransformer3DModel(
                patch_size=ref["patch_size"], num_attention_heads=cfg.num_heads, attention_head_dim=cfg.head_dim,
                in_channels=cfg.in_dim, out_channels=cfg.out_dim, text_dim=cfg.text_dim, freq_dim=cfg.freq_dim,
                ffn_dim=cfg.ffn_dim, num_layers=cfg.num_layers, cross_attn_norm=True, eps=cfg.eps)
        bench_dit._load_assign(model, convert_wan_transformer_to_diffusers(dict(sd)), keep_dtypes=False)
        model.rope = WanRotaryPosEmbed(cfg.head_dim, cfg.patch_size, 1024)   # its buffers are not weights
        bench_dit._no_meta(model)
        diffusers_to(model, dev, dtype)
        return lambda x, t, ctx: model(x.to(dtype), t, ctx.to(dtype), return_dict=False)[0]
    raise ValueError(f"unknown implementation {impl!r}")


def diffusers_to(model, dev: Device, dtype: torch.dtype) -> None:
    """Move a diffusers model to `dev` in `dtype` as ``from_pretrained(torch_dtype=dtype)`` leaves
    it: the modules the class lists in ``_keep_in_fp32_modules`` stay in float32."""
    keep = set(getattr(model, "_keep_in_fp32_modules", None) or ())
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        fp32 = bool(keep.intersection(name.split("."))) and t.is_floating_point()
        t.data = t.data.to(dev.torch, torch.float32 if fp32 else dtype if t.is_floating_point() else t.dtype)


def diffusers_vae_config(case: Case) -> dict:
    version, dim, dec_dim, z_dim = case.config
    if version == "2.1":
        return dict(base_dim=dim, z_dim=z_dim)
    return dict(base_dim=dim, decoder_base_dim=dec_dim, z_dim=z_dim, is_residual=True, in_channels=12,
                out_channels=12, patch_size=2, scale_factor_spatial=16)


def vae_weights(case: Case, device: torch.device) -> tuple[dict, dict]:
    """(official-layout, diffusers-layout) random weights of one VAE: diffusers' own fresh
    initialisation, carried to the official names by our layout rules (ComfyUI checks them)."""
    from diffusers import AutoencoderKLWan

    from spacetime_video.model.weights.layouts import wan_vae_to_official

    torch.manual_seed(0)
    with torch.device(device):                     # initialised on the GPU: seconds, not minutes
        model = AutoencoderKLWan(**diffusers_vae_config(case))
    diffusers_sd = {k: v.cpu() for k, v in model.state_dict().items()}
    official, layout = wan_vae_to_official(diffusers_sd)
    assert layout == "diffusers", layout
    return official, diffusers_sd


def build_vae(st, impl: str, case: Case, weights: tuple[dict, dict], dev: Device, dtype: torch.dtype):
    """decode(z) -> video in [-1, 1] of one implementation."""
    official, diffusers_sd = weights
    version, dim, dec_dim, z_dim = case.config
    if impl == "ours":
        model = st.model.load_vae(official, dtype=dtype, device=dev.torch)
        return model.decode
    if impl == "comfy":
        import comfy.ldm.wan.vae as wan21
        import comfy.ldm.wan.vae2_2 as wan22

        common = dict(dim=dim, z_dim=z_dim, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                      temperal_downsample=[False, True, True])
        with dev.torch:                            # built where it runs (its own init is wasted work)
            model = wan21.WanVAE(**common) if version == "2.1" else wan22.WanVAE(dec_dim=dec_dim, **common)
        model.load_state_dict(official)
        model = model.to(dev.torch, dtype).eval()
        return lambda z: model.decode(z).clamp(-1, 1)    # its VAE Decode node clamps afterwards
    if impl == "diffusers":
        from diffusers import AutoencoderKLWan

        with dev.torch:
            model = AutoencoderKLWan(**diffusers_vae_config(case))
        model.load_state_dict(diffusers_sd)
        diffusers_to(model.eval(), dev, dtype)
        return lambda z: model.decode(z).sample
    raise ValueError(f"unknown implementation {impl!r}")
