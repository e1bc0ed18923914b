"""LoRAs load onto our MODEL exactly as onto ComfyUI's own Wan MODEL: the same random weights are
loaded both ways, a random LoRA is written in each key layout that ComfyUI's Wan key map knows
(ComfyUI / lightx2v, PEFT, kohya, Wan-Fun) and applied with the native LoraLoaderModelOnly from a
loras folder; each patches the same weights on both models and changes both samples equally.
Diffusers' names, which ComfyUI's Wan key map does not know, do nothing natively (on either
model) and load through SpacetimeLoraLoader, whose refusals (no key matches, shapes that do not
fit, pickles, paths out of the folder) name the node, the input and the file."""
from __future__ import annotations

import logging
import os
import pickle

import pytest
import torch
from safetensors.torch import save_file

from dit_helpers import random_state_dict

RANK, ALPHA = 4, 2.0
LAYERS = 2
# official module names a LoRA patches (blocks: every linear; outside: embeddings, head, conv)
BLOCK_MODULES = ["self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o", "cross_attn.q", "cross_attn.k",
                 "cross_attn.v", "cross_attn.o", "ffn.0", "ffn.2"]
MODULES = ([f"blocks.{i}.{m}" for i in range(LAYERS) for m in BLOCK_MODULES]
           + ["text_embedding.0", "time_embedding.0", "time_projection.1", "head.head", "patch_embedding"])
# written by hand from diffusers' WanTransformer3DModel, independent of model/weights/layouts.py
DIFFUSERS = {"self_attn.q": "attn1.to_q", "self_attn.k": "attn1.to_k", "self_attn.v": "attn1.to_v",
             "self_attn.o": "attn1.to_out.0", "cross_attn.q": "attn2.to_q", "cross_attn.k": "attn2.to_k",
             "cross_attn.v": "attn2.to_v", "cross_attn.o": "attn2.to_out.0", "ffn.0": "ffn.net.0.proj",
             "ffn.2": "ffn.net.2", "text_embedding.0": "condition_embedder.text_embedder.linear_1",
             "time_embedding.0": "condition_embedder.time_embedder.linear_1",
             "time_projection.1": "condition_embedder.time_proj", "head.head": "proj_out",
             "patch_embedding": "patch_embedding"}
NATIVE_FORMATS = ["lightx2v", "peft", "kohya", "wan_fun"]


@pytest.fixture(scope="module")
def pair(comfy):
    """(native MODEL, our MODEL) on identical random weights that ComfyUI's loader detects."""
    import comfy.sd
    from spacetime_video.model.dit import load_dit
    from spacetime_video.model.dit.config import tiny_config
    from spacetime_video.nodes import comfy_model

    # ComfyUI reads the head count as dim // 128
    cfg = tiny_config(dim=256, num_heads=2, text_dim=4096, text_len=512, freq_dim=256, ffn_dim=256)
    assert cfg.num_layers == LAYERS
    sd = random_state_dict(cfg, 11)
    native = comfy.sd.load_diffusion_model_state_dict({k: v.clone() for k, v in sd.items()},
                                                      model_options={"dtype": torch.float32})
    ours = comfy_model.wrap_dit(load_dit(sd, config=cfg), shift=8.0)
    return native, ours


@pytest.fixture(scope="module")
def loras(comfy, tmp_path_factory):
    """An empty folder registered as ComfyUI's only ``loras`` folder (restored afterwards)."""
    import folder_paths
    folder = tmp_path_factory.mktemp("models") / "loras"
    folder.mkdir()
    saved = folder_paths.folder_names_and_paths["loras"]
    folder_paths.folder_names_and_paths["loras"] = ([str(folder)], saved[1])
    folder_paths.filename_list_cache.pop("loras", None)
    yield folder
    folder_paths.folder_names_and_paths["loras"] = saved
    folder_paths.filename_list_cache.pop("loras", None)


def shapes(model) -> dict[str, tuple[int, ...]]:
    sd = model.model.state_dict()
    return {m: tuple(sd[f"diffusion_model.{m}.weight"].shape) for m in MODULES}


def random_lora(model, seed: int = 0, scale: float = 1.0) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """official module -> (up, down) of rank RANK; convolutions get 1x1x1 up / kernel-sized down."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for m, shape in shapes(model).items():
        fan_in = shape[1] * (shape[2] * shape[3] * shape[4] if len(shape) == 5 else 1)
        up = 0.1 * scale * torch.randn(shape[0], RANK, *[1] * (len(shape) - 2), generator=g)
        down = torch.randn(RANK, *shape[1:], generator=g) / fan_in ** 0.5
        out[m] = up, down
    return out


def write(folder, name: str, fmt: str, pieces: dict, extra: dict | None = None) -> str:
    """``pieces`` (official module -> (up, down)) as a LoRA file in key layout ``fmt``."""
    sd = {}
    for m, (up, down) in pieces.items():
        if fmt == "lightx2v":        # ComfyUI / lightx2v: diffusion_model.<module>.lora_up / lora_down / alpha
            stem, keys = f"diffusion_model.{m}", ("lora_up.weight", "lora_down.weight", "alpha")
        elif fmt == "peft":          # PEFT names under the ComfyUI prefix (diffusion-pipe and others)
            stem, keys = f"diffusion_model.{m}", ("lora_B.weight", "lora_A.weight", None)
        elif fmt in ("kohya", "wan_fun"):  # musubi-tuner / kohya: lora_unet_<module with underscores>
            sep = "__" if fmt == "wan_fun" else "_"
            stem, keys = f"lora_unet{sep}{m.replace('.', '_')}", ("lora_up.weight", "lora_down.weight", "alpha")
        elif fmt == "diffusers":     # diffusers' WanLoraLoaderMixin: transformer.<diffusers module>.lora_B / lora_A
            block = m.split(".", 2)
            name_ = (f"blocks.{block[1]}.{DIFFUSERS[block[2]]}" if m.startswith("blocks.") else DIFFUSERS[m])
            stem, keys = f"transformer.{name_}", ("lora_B.weight", "lora_A.weight", None)
        else:
            raise ValueError(fmt)
        sd[f"{stem}.{keys[0]}"], sd[f"{stem}.{keys[1]}"] = up.contiguous(), down.contiguous()
        if keys[2]:
            sd[f"{stem}.{keys[2]}"] = torch.tensor(ALPHA)
    sd.update(extra or {})
    save_file(sd, str(folder / name))
    return name


def sample(model, seed: int = 0) -> torch.Tensor:
    """Two Euler steps of ComfyUI's own sampler path (SamplerCustom), cfg 1."""
    import comfy.sample
    import comfy.samplers
    from spacetime_video import samplers

    g = torch.Generator().manual_seed(seed)
    pos = [[torch.nn.functional.pad(torch.randn(1, 9, 4096, generator=g), (0, 0, 0, 503)), {}]]
    noise = torch.randn(1, 16, 2, 4, 4, generator=g)
    return comfy.sample.sample_custom(model, noise, 1.0, comfy.samplers.KSAMPLER(samplers.SOLVERS["euler"]),
                                      samplers.flow_sigmas(2, 8.0), pos, pos, torch.zeros_like(noise), seed=seed)


def native_lora(model, name: str, strength: float = 1.0):
    import nodes
    return nodes.LoraLoaderModelOnly().load_lora_model_only(model, name, strength)[0]


def our_lora(model, name: str, strength: float = 1.0):
    from spacetime_video.nodes.lora_nodes import SpacetimeLoraLoader
    return SpacetimeLoraLoader.PREPARE_CLASS_CLONE({}).execute(model=model, lora_name=name,
                                                               strength_model=strength).result[0]


def close(a, b, tol=1e-4) -> bool:
    return bool(torch.allclose(a, b, atol=tol, rtol=tol))


def diffs(pair) -> dict[str, torch.Tensor]:
    """The non-LoRA tensors lightx2v / Kijai LoRAs also carry: norm and bias diffs, modulation."""
    g = torch.Generator().manual_seed(5)
    return {"diffusion_model.blocks.0.norm3.diff": 0.1 * torch.randn(256, generator=g),
            "diffusion_model.blocks.1.self_attn.q.diff_b": 0.1 * torch.randn(256, generator=g),
            "diffusion_model.blocks.0.modulation.diff": 0.1 * torch.randn(1, 6, 256, generator=g),
            "diffusion_model.head.modulation.diff": 0.1 * torch.randn(1, 2, 256, generator=g)}


@pytest.mark.parametrize("fmt", NATIVE_FORMATS)
def test_each_key_layout_patches_both_models_alike(pair, loras, fmt):
    native, ours = pair
    extra = diffs(pair) if fmt == "lightx2v" else None
    name = write(loras, f"{fmt}.safetensors", fmt, random_lora(ours, seed=1), extra)
    a, b = native_lora(native, name), native_lora(ours, name)
    assert set(a.patches) == set(b.patches)
    assert len(b.patches) == len(MODULES) + len(extra or {})   # every module (and diff) matched
    plain = sample(ours)
    out_a, out_b = sample(a), sample(b)
    assert not close(out_b, plain, 1e-2), "the LoRA changed nothing"
    assert close(out_a, out_b), (out_a - out_b).abs().max()
    assert torch.equal(sample(ours), plain)                      # the base MODEL is left unpatched


def test_strength_scales_alike(pair, loras):
    native, ours = pair
    name = write(loras, "half.safetensors", "kohya", random_lora(ours, seed=2))
    out_a, out_b = sample(native_lora(native, name, -0.5)), sample(native_lora(ours, name, -0.5))
    assert close(out_a, out_b), (out_a - out_b).abs().max()
    assert not close(out_b, sample(native_lora(ours, name, 1.0)), 1e-2)


def test_diffusers_names_do_nothing_natively_but_load_through_our_loader(pair, loras):
    native, ours = pair
    pieces = random_lora(ours, seed=3)
    name = write(loras, "diffusers.safetensors", "diffusers", pieces)
    same = write(loras, "diffusers_as_peft.safetensors", "peft", pieces)
    assert not native_lora(native, name).patches and not native_lora(ours, name).patches  # ComfyUI 0.3.75
    reference = sample(native_lora(native, same))
    for model in (native, ours):
        patched = our_lora(model, name)
        assert len(patched.patches) == len(MODULES)
        out = sample(patched)
        assert close(out, reference), (out - reference).abs().max()


# ------------------------------------------------------------------- SpacetimeLoraLoader

def test_our_loader_equals_lora_loader_model_only(pair, loras):
    _, ours = pair
    name = write(loras, "same.safetensors", "lightx2v", random_lora(ours, seed=4), diffs(pair))
    a, b = native_lora(ours, name, 0.8), our_lora(ours, name, 0.8)
    assert set(a.patches) == set(b.patches)
    assert torch.equal(sample(a), sample(b))
    assert our_lora(ours, name, 0.0) is ours                    # strength 0: the model as it was


def error(model, name: str, strength: float = 1.0) -> str:
    from spacetime_video.nodes.errors import SpacetimeNodeError
    with pytest.raises(SpacetimeNodeError) as e:
        our_lora(model, name, strength)
    message = str(e.value)
    assert message.startswith("SpacetimeLoraLoader: input 'lora_name'"), message
    return message


def test_a_lora_for_another_family_is_refused_by_name(pair, loras):
    g = torch.Generator().manual_seed(6)
    flux = {"diffusion_model.double_blocks.0.img_attn.qkv.lora_up.weight": torch.randn(64, 4, generator=g),
            "diffusion_model.double_blocks.0.img_attn.qkv.lora_down.weight": torch.randn(4, 64, generator=g),
            "lora_unet_input_blocks_1_1_proj_in.lora_down.weight": torch.randn(4, 64, generator=g)}
    save_file(flux, str(loras / "flux_style.safetensors"))
    message = error(pair[1], "flux_style.safetensors")
    assert "'flux_style.safetensors' matches none of this model's 69 weights" in message, message
    assert "another model family" in message and "double_blocks.0.img_attn.qkv" in message, message
    assert not native_lora(pair[1], "flux_style.safetensors").patches   # natively: a silent no-op


def test_a_lora_for_another_size_is_refused_naming_key_and_shapes(pair, loras):
    ours = pair[1]
    big = random_lora(ours, seed=7)
    big["blocks.0.self_attn.q"] = torch.randn(512, RANK), torch.randn(RANK, 512)   # a wider model's
    write(loras, "wide.safetensors", "lightx2v", big)
    message = error(ours, "wide.safetensors")
    assert "'diffusion_model.blocks.0.self_attn.q'" in message and "(512, 4)" in message, message
    assert "diffusion_model.blocks.0.self_attn.q.weight is (256, 256)" in message, message
    ranks = random_lora(ours, seed=8)
    ranks["blocks.1.ffn.2"] = torch.randn(256, RANK), torch.randn(2 * RANK, 256)
    write(loras, "ranks.safetensors", "kohya", ranks)
    message = error(ours, "ranks.safetensors")
    assert "'lora_unet_blocks_1_ffn_2'" in message and "different ranks (4 and 8)" in message, message
    write(loras, "norm.safetensors", "lightx2v", {}, {"diffusion_model.blocks.0.norm3.diff": torch.ones(512)})
    message = error(ours, "norm.safetensors")
    assert "(512,)" in message and "blocks.0.norm3.weight is (256,)" in message, message


def test_keys_left_out_are_counted_in_a_warning(pair, loras, caplog):
    i2v_only = {"diffusion_model.blocks.0.cross_attn.k_img.lora_up.weight": torch.randn(256, RANK),
                "diffusion_model.blocks.0.cross_attn.k_img.lora_down.weight": torch.randn(RANK, 256)}
    write(loras, "i2v.safetensors", "lightx2v", random_lora(pair[1], seed=9), i2v_only)
    with caplog.at_level(logging.WARNING, logger="spacetime.nodes"):
        patched = our_lora(pair[1], "i2v.safetensors")
    assert len(patched.patches) == len(MODULES)
    total = 3 * len(MODULES) + 2
    assert f"2 of {total} keys of i2v.safetensors match no weight" in caplog.text, caplog.text
    assert "cross_attn.k_img.lora_down.weight" in caplog.text


class _Marker:
    """Unpickling this writes a file: proof that a pickle was (not) loaded."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.parametrize("suffix", [".ckpt", ".pt"])
def test_pickles_are_refused_unopened(pair, loras, suffix):
    from spacetime_video.nodes.lora_nodes import SpacetimeLoraLoader
    marker = loras.parent / f"unpickled{suffix}"
    with open(loras / f"evil{suffix}", "wb") as f:
        pickle.dump({"x": _Marker(str(marker))}, f)
    message = error(pair[1], f"evil{suffix}")
    assert "pickle" in message and "safetensors" in message, message
    problem = SpacetimeLoraLoader.validate_inputs(lora_name=f"evil{suffix}", strength_model=1.0)
    assert isinstance(problem, str) and "input 'lora_name'" in problem and "pickle" in problem, problem
    assert not marker.exists()


def test_paths_out_of_the_loras_folder_are_refused(pair, loras):
    from spacetime_video.nodes.lora_nodes import SpacetimeLoraLoader
    outside = loras.parent / "outside.safetensors"
    write(loras.parent, outside.name, "lightx2v", random_lora(pair[1], seed=10))
    for name in ("../outside.safetensors", str(outside), os.path.relpath(outside, loras)):
        problem = SpacetimeLoraLoader.validate_inputs(lora_name=name, strength_model=1.0)
        assert isinstance(problem, str) and "input 'lora_name'" in problem, (name, problem)
        assert "not a file in ComfyUI's models/loras folder" in problem, problem
        assert "not a file" in error(pair[1], name)
    write(loras, "inside.safetensors", "lightx2v", random_lora(pair[1], seed=10))
    assert SpacetimeLoraLoader.validate_inputs(lora_name="inside.safetensors", strength_model=1.0) is True


def test_a_lora_acts_on_scaled_fp8_weights_as_on_their_real_values(pair, loras, tmp_path):
    """A ComfyUI "fp8_scaled" file keeps ``weight · scale``: the LoRA must patch the real weight (and
    be stored back scaled), fully loaded and in low-VRAM mode alike, not the unscaled fp8 numbers."""
    import comfy.model_management as mm
    from spacetime_video.model.dit import load_dit
    from spacetime_video.model.dit.loading import config_metadata
    from spacetime_video.nodes import comfy_model

    cfg = pair[1].model.diffusion_model.config
    fp8, real = {"scaled_fp8": torch.empty(2, dtype=torch.float8_e4m3fn)}, {}
    for k, v in random_state_dict(cfg, 11).items():
        if k.startswith("blocks.") and k.endswith(".weight") and v.ndim == 2:
            scale = v.abs().max() / 448.0
            fp8[k], fp8[k[:-len("weight")] + "scale_weight"] = (v / scale).to(torch.float8_e4m3fn), scale.reshape(())
            real[k] = fp8[k].float() * scale
        else:
            fp8[k] = real[k] = v
    save_file(fp8, str(tmp_path / "fp8_scaled.safetensors"), metadata=config_metadata(cfg))
    scaled = comfy_model.wrap_dit(load_dit(str(tmp_path / "fp8_scaled.safetensors")), shift=8.0)
    assert scaled.model.diffusion_model.blocks[0].self_attn.q.weight.dtype == torch.float8_e4m3fn
    reference = comfy_model.wrap_dit(load_dit(real, config=cfg), shift=8.0)
    blocks = {m: ud for m, ud in random_lora(reference, seed=12).items() if m.startswith("blocks.")}
    name = write(loras, "blocks.safetensors", "lightx2v", blocks)
    with torch.no_grad():  # ComfyUI's fp8 rounding writes with out=, which autograd refuses
        want = sample(native_lora(reference, name)) - sample(reference)
        patched = native_lora(scaled, name)
        full = sample(patched)
        got = full - sample(scaled)
        mm.unload_all_models()
        patched.load(torch.device("cpu"), lowvram_model_memory=1)   # patches per use (weight_function)
        real_load, mm.load_models_gpu = mm.load_models_gpu, lambda *a, **k: None
        try:
            low = sample(patched)
        finally:
            mm.load_models_gpu = real_load
            patched.detach()
    error = float((got - want).norm() / want.norm())
    assert error < 0.5, f"the LoRA's effect on fp8_scaled weights is off by {error:.0%}"  # fp8 rounding: ~30 %
    assert close(low, full), (low - full).abs().max()
