"""The public API of the README, end to end on tiny random weights written to safetensors files:
load_vae -> encode -> load_dit -> flow_sigmas -> sample -> decode, and expand_prompt."""
from __future__ import annotations

import torch
from safetensors.torch import save_file

import spacetime_video as st
from spacetime_video.model.dit.config import tiny_config
from spacetime_video.model.dit.loading import config_metadata


def test_design_api_round_trip(tmp_path):
    torch.manual_seed(0)
    vae_cfg = st.model.VAEConfig(dim=8, z_dim=16, num_res_blocks=1)
    save_file(st.model.WanVAE(vae_cfg).state_dict(), str(tmp_path / "vae.safetensors"))
    dit_cfg = tiny_config(in_dim=16, out_dim=16)
    save_file({k: v.contiguous() for k, v in st.model.WanDiT(dit_cfg).state_dict().items()},
              str(tmp_path / "dit.safetensors"), metadata=config_metadata(dit_cfg))

    vae = st.model.load_vae(tmp_path / "vae.safetensors")
    video = torch.rand(1, 3, 5, 32, 32) * 2 - 1              # [B, 3, T, H, W] in [-1, 1]
    z = vae.encode(video)
    assert z.shape == (1, 16, 2, 4, 4)

    dit = st.model.load_dit(tmp_path / "dit.safetensors")
    context = torch.randn(1, 8, dit.config.text_dim)
    v = dit(torch.randn_like(z), torch.tensor([500.0]), context)
    assert v.shape == z.shape and torch.isfinite(v).all()

    def denoiser(x, sigma):                                  # velocity -> x0 (flow matching)
        return x - sigma.view(-1, 1, 1, 1, 1) * dit(x, 1000 * sigma, context)

    sigmas = st.samplers.flow_sigmas(4, shift=5.0)
    assert sigmas[0] > 0.99 and sigmas[-1] == 0 and (sigmas[1:] < sigmas[:-1]).all()
    x0 = st.samplers.sample(denoiser, torch.randn_like(z), sigmas, solver="unipc")
    out = vae.decode(x0)
    assert out.shape == video.shape and out.abs().max() <= 1.0 + 1e-5

    text = st.model.expand_prompt("a red fox", task="t2v", seed=0)
    assert "fox" in text and len(text.split()) > 10
    assert text == st.model.expand_prompt("a red fox", task="t2v", seed=0)

    # the one-call pipeline on the same files, and its top-level names
    assert st.load_vae is st.model.load_vae and st.load_dit is st.model.load_dit
    clip = st.generate(dit, vae, context, torch.zeros_like(context), frames=5, height=32, width=32, steps=2,
                       guidance=2.0, seed=1, known=[st.Known(video[0].permute(1, 2, 3, 0)[:1] * 0.5 + 0.5)])
    assert clip.shape == (3, 5, 32, 32) and clip.abs().max() <= 1.0 + 1e-5
    assert st.expand_prompt("a red fox", seed=0) == text


def test_generate_embedded_follows_the_prompt():
    from spacetime_video.training.analyser import analyse
    video = st.generate_embedded("a yellow circle moves to the right across a navy background", seed=3, steps=12)
    assert video.shape == (3, 17, 64, 64)
    seen = analyse(video)
    assert (seen.background, seen.colour) == ("navy", "yellow")
