"""The embedded model's 4-step distilled LoRA: the ComfyUI / lightx2v file layout the distillation
writes, ``apply_lora``'s merge (the same update as the training parametrization and as ComfyUI's
own LoRA patching of the embedded MODEL) and its refusals, and the shipped LoRA: it loads, and its
4-step clips are closer to the 20-step guided clips than 4 steps of the base model."""
from __future__ import annotations

import copy

import pytest
import torch
from safetensors.torch import load_file

from dit_helpers import random_state_dict

from spacetime_video.model.dit import WanDiT
from spacetime_video.model.dit.config import tiny_config
from spacetime_video.model.embedded import config as C
from spacetime_video.model.embedded import load_embedded
from spacetime_video.model.weights import WeightsError
from spacetime_video.model.weights.lora import apply_lora, lora_state_dict
from spacetime_video.training.distill import BLOCK_MODULES, add_lora, export_lora

SHIPPED = C.WEIGHTS_DIR / C.DISTILL_FILE


def _trained_lora(cfg, rank: int = 4, alpha: float = 2.0, seed: int = 0):
    """(base DiT, the DiT with a LoRA whose up weights are random, the LoRAs)."""
    base = WanDiT(cfg)
    base.load_state_dict(random_state_dict(cfg, seed))      # random everywhere (a fresh head outputs zeros)
    base.eval()
    student = copy.deepcopy(base)
    loras = add_lora(student, rank, alpha, seed)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for lora in loras.values():
            lora.up.copy_(0.05 * torch.randn(lora.up.shape, generator=g))
    return base, student.eval(), loras


def _inputs(cfg, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(1, cfg.in_dim, 2, 4, 4, generator=g), torch.tensor([700.0]),
            torch.randn(1, cfg.text_len, cfg.text_dim, generator=g))


def test_export_layout_and_merge_equal_the_trained_parametrization():
    cfg = tiny_config()
    base, student, loras = _trained_lora(cfg)
    sd = export_lora(loras)
    blocks = [f"diffusion_model.blocks.{i}.{m}" for i in range(cfg.num_layers) for m in BLOCK_MODULES]
    assert set(sd) == {f"{b}.{k}" for b in blocks for k in ("lora_up.weight", "lora_down.weight", "alpha")}
    assert sd["diffusion_model.blocks.0.ffn.0.lora_down.weight"].shape == (4, cfg.dim)
    assert sd["diffusion_model.blocks.0.ffn.0.lora_up.weight"].shape == (cfg.ffn_dim, 4)
    assert float(sd["diffusion_model.blocks.1.cross_attn.o.alpha"]) == 2.0
    merged = apply_lora(copy.deepcopy(base), sd)
    w = base.blocks[1].self_attn.k.weight + (2.0 / 4) * (sd["diffusion_model.blocks.1.self_attn.k.lora_up.weight"]
                                                         @ sd["diffusion_model.blocks.1.self_attn.k.lora_down.weight"])
    assert torch.allclose(merged.blocks[1].self_attn.k.weight, w, atol=1e-6)
    x, t, ctx = _inputs(cfg)
    with torch.no_grad():
        out, ref, plain = merged(x, t, ctx), student(x, t, ctx), base(x, t, ctx)
    assert not torch.allclose(out, plain, atol=1e-3)             # the LoRA changes the model
    assert torch.allclose(out, ref, atol=1e-5), (out - ref).abs().max()
    half = apply_lora(copy.deepcopy(base), sd, strength=0.5).blocks[0].ffn[2].weight
    full = merged.blocks[0].ffn[2].weight
    assert torch.allclose(half - base.blocks[0].ffn[2].weight, 0.5 * (full - base.blocks[0].ffn[2].weight), atol=1e-6)


def test_other_layouts_and_a_stray_key_merge_alike(caplog):
    cfg = tiny_config()
    base, _, loras = _trained_lora(cfg)
    sd = export_lora(loras)
    reference = apply_lora(copy.deepcopy(base), sd).state_dict()
    peft = {}                                   # PEFT names (lora_A / lora_B) under ComfyUI's model. prefix
    for k, v in sd.items():
        k = "model." + k
        if k.endswith(".alpha"):
            peft[k] = v
        else:
            peft[k.replace("lora_down", "lora_A").replace("lora_up", "lora_B")] = v
    peft["diffusion_model.blocks.0.not_a_module.lora_up.weight"] = torch.zeros(3, 2)
    with caplog.at_level("WARNING", logger="spacetime.weights"):
        other = apply_lora(copy.deepcopy(base), peft).state_dict()
    assert "left out" in caplog.text and "not_a_module" in caplog.text
    assert all(torch.allclose(other[k], reference[k], atol=1e-6) for k in reference)


def test_refusals_name_the_file_and_the_misfit(tmp_path):
    cfg = tiny_config()
    base, _, loras = _trained_lora(cfg)
    foreign = {"lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.zeros(4, 2),
               "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(2, 4)}
    with pytest.raises(WeightsError, match=r"'sd15.safetensors' matches none of this model's \d+ weights; it is "
                                           "probably for another model family"):
        apply_lora(copy.deepcopy(base), foreign, name="sd15.safetensors")
    bigger = lora_state_dict({"blocks.0.self_attn.q": (torch.zeros(2 * cfg.dim, 4), torch.zeros(4, 2 * cfg.dim), 4)})
    with pytest.raises(WeightsError, match=r"'big': LoRA module 'blocks.0.self_attn.q' .* makes a "
                                           r"\d+x\d+ update, but this model's blocks.0.self_attn.q.weight is .*another "
                                           "size of the model"):
        apply_lora(copy.deepcopy(base), bigger, name="big")
    damaged = export_lora(loras)
    damaged["diffusion_model.blocks.0.ffn.0.lora_up.weight"] = torch.zeros(cfg.ffn_dim, 3)
    with pytest.raises(WeightsError, match="have different ranks .* the file is damaged"):
        apply_lora(copy.deepcopy(base), damaged)
    with pytest.raises(WeightsError, match="pickle|unpickle|safetensors"):
        (tmp_path / "lora.ckpt").write_bytes(b"x")
        apply_lora(copy.deepcopy(base), tmp_path / "lora.ckpt")
    untouched = copy.deepcopy(base)       # a refused LoRA leaves the model as it was
    with pytest.raises(WeightsError):
        apply_lora(untouched, damaged)
    assert all(torch.equal(a, b) for a, b in zip(untouched.state_dict().values(), base.state_dict().values()))


# ------------------------------------------------------------------ the shipped LoRA

def test_shipped_lora_is_small_and_covers_every_block():
    assert SHIPPED.stat().st_size <= 2 * 2**20
    sd = load_file(str(SHIPPED))
    assert len(sd) == 3 * C.DIT_CONFIG.num_layers * len(BLOCK_MODULES)
    assert all(k.startswith("diffusion_model.blocks.") for k in sd)
    base, distilled = load_embedded(), load_embedded(distilled=True)
    assert distilled.vae is base.vae and distilled.text_encoder is base.text_encoder
    assert not torch.equal(distilled.dit.blocks[0].ffn[0].weight, base.dit.blocks[0].ffn[0].weight)
    assert torch.equal(base.dit.blocks[0].ffn[0].weight, load_embedded().dit.blocks[0].ffn[0].weight)


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * torch.log10(4 / ((a - b) ** 2).mean()))   # videos in [-1, 1]


def test_four_distilled_steps_come_closer_to_twenty_guided_steps_than_four_plain_ones():
    """The first 4 of the evaluation's 22 held-out prompts (bench/bench_distill.py measures all):
    4 distilled steps against 4 Euler steps of the base model, both at cfg 1 (4 evaluations)."""
    from spacetime_video.pipeline import generate_embedded
    from spacetime_video.training.analyser import analyse
    from spacetime_video.training.evaluate import heldout_prompts
    base = load_embedded()
    gain, adherent = [], {"distilled": 0, "plain": 0}
    for prompt, seed, combo in heldout_prompts()[:4]:
        ref = generate_embedded(prompt, seed=seed, model=base)                       # 20 steps, guidance 4
        fast = generate_embedded(prompt, seed=seed, distilled=True)                  # 4 steps, cfg 1
        plain = generate_embedded(prompt, seed=seed, model=base, steps=C.DISTILLED_STEPS, guidance=1.0,
                                  solver=C.DISTILLED_SOLVER)
        gain.append(_psnr(fast, ref) - _psnr(plain, ref))
        for name, video in (("distilled", fast), ("plain", plain)):
            a = analyse(video)
            adherent[name] += (a.colour, a.shape, a.motion) == combo
    assert sum(gain) / len(gain) > 1.5, gain                     # dB closer to the 20-step clip
    assert adherent["distilled"] > adherent["plain"], adherent


def test_comfy_patching_of_the_shipped_lora_equals_the_distilled_loader(comfy):
    """ComfyUI's LoRA patching (LoraLoaderModelOnly's load_lora_for_models) of the shipped file on
    the embedded MODEL samples as the loader's ``distilled`` MODEL, whose DiT apply_lora merged."""
    import comfy.sample
    import comfy.samplers
    import comfy.sd
    from spacetime_video import samplers
    from spacetime_video.nodes.embedded_nodes import SpacetimeEmbeddedLoader, SpacetimeTextEncode

    plain, _, enc = SpacetimeEmbeddedLoader.execute(shift=C.DEFAULT_SHIFT).result
    merged = SpacetimeEmbeddedLoader.execute(shift=C.DEFAULT_SHIFT, distilled=True).result[0]
    patched = comfy.sd.load_lora_for_models(plain, None, load_file(str(SHIPPED)), 1.0, 0)[0]
    assert len(patched.patches) == C.DIT_CONFIG.num_layers * len(BLOCK_MODULES)
    pos = SpacetimeTextEncode.execute(enc, "a red circle moves to the right across a navy background").result[0]
    noise = torch.randn(1, C.Z_DIM, 5, 16, 16, generator=torch.Generator().manual_seed(0))

    def run(model):
        return comfy.sample.sample_custom(model, noise, 1.0, comfy.samplers.KSAMPLER(samplers.SOLVERS["euler"]),
                                          samplers.flow_sigmas(C.DISTILLED_STEPS, C.DEFAULT_SHIFT), pos, pos,
                                          torch.zeros_like(noise), seed=0)
    a, b, base = run(patched), run(merged), run(plain)
    assert torch.allclose(a, b, atol=1e-4, rtol=1e-4), (a - b).abs().max()
    assert not torch.allclose(a, base, atol=1e-2)


# ------------------------------------------------------------------ the training code

def test_teacher_latents_are_the_twenty_step_sampling_read_at_the_student_sigmas():
    from spacetime_video.pipeline import generate_latent
    from spacetime_video.training.distill import DistillConfig, student_sigmas, teacher_trajectories
    torch.set_num_threads(2)
    m, cfg = load_embedded(), DistillConfig()
    caption = "a green ball drifts right across a black background"
    full = teacher_trajectories(m, [caption], cfg, batch=1, seed=7)
    first = teacher_trajectories(m, [caption], cfg, batch=1, seed=7, upto=1)
    assert full["x"].shape[:2] == (1, 5) and first["x"].shape[:2] == (1, 2)
    assert torch.equal(first["x"], full["x"][:, :2])
    noise = torch.randn(full["x"][:, 0].shape, generator=torch.Generator().manual_seed(7))
    assert torch.equal(full["x"][:, 0], noise) and float(student_sigmas()[0]) > 0.999
    z = generate_latent(m.dit, m.vae, m.text_encoder.encode([caption]), m.text_encoder.encode([""]),
                        frames=C.FRAMES, height=C.SIZE, width=C.SIZE, steps=20, shift=C.DEFAULT_SHIFT,
                        guidance=C.DEFAULT_GUIDANCE, seed=7, per_token=True)
    assert torch.allclose(full["x"][:, -1], m.vae.normalize(z), atol=1e-4)


def test_distill_stage_writes_a_loadable_lora_and_reuses_its_teacher_runs(tmp_path, caplog):
    from spacetime_video.training.stages import stage_distill
    torch.set_num_threads(2)
    out = stage_distill(tmp_path, None, trajectories=1, first_steps=1, steps=2, minutes=5, seed=0, rank=4)
    sd = load_file(str(out))
    assert sd["diffusion_model.blocks.3.ffn.2.lora_down.weight"].shape == (4, C.DIT_CONFIG.ffn_dim)
    from spacetime_video.model.weights.files import json_metadata
    record = json_metadata(out)["training"]
    assert record["train"]["steps"] == 2 and record["sampling"] == {"steps": 4, "solver": "euler", "shift": 2.0,
                                                                    "cfg": 1.0}
    apply_lora(copy.deepcopy(load_embedded().dit), out)
    with caplog.at_level("INFO", logger="spacetime.embedded.train"):
        stage_distill(tmp_path, None, trajectories=1, first_steps=1, steps=1, minutes=5, seed=0, rank=4)
    assert caplog.text.count("reusing 1 teacher trajectories") == 2
