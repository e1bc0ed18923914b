"""Parity of our Wan VAE with the references, on identical random weights (tiny configs).

References: ComfyUI's own ``comfy.ldm.wan.vae.WanVAE`` (2.1) / ``comfy.ldm.wan.vae2_2.WanVAE``
(2.2), fed the official-layout state dict, and diffusers 0.42.1 ``AutoencoderKLWan`` (2.1: the
weights moved with diffusers' own ``convert_wan_vae_to_diffusers``; 2.2, for which diffusers
has no converter: the model built in diffusers and its diffusers-layout state dict fed to
``load_vae``). fp32 agreement: relative error ||ours - ref|| / ||ref|| <= 1e-5.
"""
from __future__ import annotations

import pytest
import torch

from spacetime_video.model import VAEConfig, WanVAE, load_vae

TOL = 1e-5
FRAMES = [1, 5, 9, 17]
DIMS = {"2.1": dict(dim=8, z_dim=4), "2.2": dict(dim=8, dec_dim=12, z_dim=4)}


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models are dominated by thread start-up and spinning on a shared 2-core machine:
    one thread runs these tests 10x faster. Restored afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def randomize(sd: dict[str, torch.Tensor], seed: int = 0) -> None:
    """Norm gains and biases away from their 1 / 0 defaults so that a wrongly wired gain or
    bias changes the output."""
    g = torch.Generator().manual_seed(seed)
    for k, v in sd.items():
        if k.endswith("gamma"):
            v.copy_(1 + 0.2 * torch.randn(v.shape, generator=g))
        elif k.endswith("bias"):
            v.copy_(0.1 * torch.randn(v.shape, generator=g))


def video(version: str, frames: int, seed: int = 1) -> torch.Tensor:
    size = 16 if version == "2.1" else 32     # 2 x 2 latent pixels
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, 3, frames, size, size, generator=g) * 2 - 1


@pytest.fixture(scope="module", params=["2.1", "2.2"])
def pair_comfy(request, comfy):
    """(version, ours, ComfyUI's WanVAE) with the same official-layout weights."""
    import comfy.ldm.wan.vae as wan21
    import comfy.ldm.wan.vae2_2 as wan22

    version = request.param
    torch.manual_seed(0)
    ours = WanVAE(VAEConfig(version=version, **DIMS[version])).eval()
    randomize(ours.state_dict())
    common = dict(dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[], temperal_downsample=[False, True, True])
    ref = (wan21.WanVAE(**DIMS[version], **common) if version == "2.1"
           else wan22.WanVAE(**DIMS[version], **common))
    ref.load_state_dict(ours.state_dict(), strict=True)
    return version, ours, ref.eval()


@pytest.fixture(scope="module", params=["2.1", "2.2"])
def pair_diffusers(request):
    """(version, ours, diffusers AutoencoderKLWan) with the same weights."""
    from diffusers import AutoencoderKLWan
    from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

    version = request.param
    torch.manual_seed(0)
    if version == "2.1":
        ours = WanVAE(VAEConfig(version="2.1", **DIMS["2.1"])).eval()
        randomize(ours.state_dict())
        ref = AutoencoderKLWan(base_dim=8, z_dim=4).eval()
        ref.load_state_dict(convert_wan_vae_to_diffusers(ours.state_dict()), strict=True)
    else:
        ref = AutoencoderKLWan(base_dim=8, decoder_base_dim=12, z_dim=4, is_residual=True, in_channels=12,
                               out_channels=12, patch_size=2, scale_factor_spatial=16).eval()
        randomize(ref.state_dict())
        ours = load_vae(ref.state_dict())
        assert ours.config == VAEConfig(version="2.2", **DIMS["2.2"])
    return version, ours, ref


@pytest.mark.parametrize("frames", FRAMES)
def test_matches_comfyui(pair_comfy, frames):
    version, ours, ref = pair_comfy
    x = video(version, frames)
    with torch.no_grad():
        z_ref = ref.encode(x)
        x_ref = ref.decode(z_ref)          # ComfyUI's model does not clamp (its VAE wrapper does)
    z = ours.encode(x)
    assert z.shape == z_ref.shape == (1, 4, (frames - 1) // 4 + 1, 2, 2)
    assert rel(z, z_ref) <= TOL
    out = ours.decode(z_ref, clamp=False)
    assert out.shape == x_ref.shape == x.shape
    assert rel(out, x_ref) <= TOL


@pytest.mark.parametrize("frames", FRAMES)
def test_matches_diffusers(pair_diffusers, frames):
    version, ours, ref = pair_diffusers
    x = video(version, frames)
    with torch.no_grad():
        z_ref = ref.encode(x).latent_dist.mode()
        x_ref = ref.decode(z_ref).sample   # diffusers clamps to [-1, 1], as we do by default
    assert (x_ref.abs() < 1).float().mean() > 0.9, "random weights saturate: the comparison would be void"
    z = ours.encode(x)
    assert rel(z, z_ref) <= TOL
    assert rel(ours.decode(z_ref), x_ref) <= TOL


def test_references_agree_through_our_layouts(pair_diffusers, comfy):
    """Weights read from diffusers' layout, written back in official names, load into ComfyUI's
    model and give diffusers' output: our key translation is right in both directions."""
    import comfy.ldm.wan.vae as wan21
    import comfy.ldm.wan.vae2_2 as wan22

    version, ours, ref = pair_diffusers
    cls = wan21.WanVAE if version == "2.1" else wan22.WanVAE
    theirs = cls(**DIMS[version], dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                 temperal_downsample=[False, True, True])
    theirs.load_state_dict(ours.state_dict(), strict=True)
    x = video(version, 5)
    with torch.no_grad():
        assert rel(theirs.encode(x), ref.encode(x).latent_dist.mode()) <= TOL


@pytest.mark.parametrize("version", ["2.1", "2.2"])
def test_layouts_give_identical_output(version):
    """The same weights as official, prefixed and diffusers keys: bit-identical results."""
    from diffusers import AutoencoderKLWan
    from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

    torch.manual_seed(3)
    if version == "2.1":
        base = WanVAE(VAEConfig(version="2.1", **DIMS["2.1"])).eval()
        randomize(base.state_dict(), seed=3)
        official = base.state_dict()
        diffusers_sd = convert_wan_vae_to_diffusers(official)
    else:
        ref = AutoencoderKLWan(base_dim=8, decoder_base_dim=12, z_dim=4, is_residual=True, in_channels=12,
                               out_channels=12, patch_size=2, scale_factor_spatial=16)
        randomize(ref.state_dict(), seed=3)
        diffusers_sd = ref.state_dict()
        official = load_vae(diffusers_sd).state_dict()
    layouts = {
        "official": official,
        "comfy checkpoint prefix": {f"first_stage_model.{k}": v for k, v in official.items()},
        "vae. prefix": {f"vae.{k}": v for k, v in official.items()},
        "diffusers": diffusers_sd,
        "prefixed diffusers": {f"vae.{k}": v for k, v in diffusers_sd.items()},
    }
    x = video(version, 5)
    results = {}
    for name, sd in layouts.items():
        vae = load_vae(sd)
        z = vae.encode(x)
        results[name] = (z, vae.decode(z))
    z0, x0 = results["official"]
    for name, (z, out) in results.items():
        assert torch.equal(z, z0), name
        assert torch.equal(out, x0), name
