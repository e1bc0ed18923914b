"""Unit tests of the Wan VAE on tiny configs: shapes, streaming, errors, loading, tiling."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from spacetime_video.model import VAE_PRESETS, VAEConfig, WanVAE, load_vae
from spacetime_video.model.weights.files import WeightsError
from spacetime_video.model.vae.cache import CausalCache
from spacetime_video.model.vae.tiling import TileGrid, ramp_weights, tile_spans

TINY = {"2.1": VAEConfig(version="2.1", dim=8, z_dim=4), "2.2": VAEConfig(version="2.2", dim=8, dec_dim=12, z_dim=4)}


@pytest.fixture(autouse=True)
def one_thread():
    """One thread is ~10x faster for tiny models on the shared 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny(version: str, seed: int = 0, dtype: torch.dtype = torch.float32) -> WanVAE:
    torch.manual_seed(seed)
    vae = WanVAE(TINY[version]).eval()
    for k, v in vae.state_dict().items():
        if k.endswith("gamma"):
            v.copy_(1 + 0.2 * torch.randn_like(v))
        elif k.endswith("bias"):
            v.copy_(0.1 * torch.randn_like(v))
    return vae.to(dtype)


def clip(vae: WanVAE, frames: int, latent_hw: tuple[int, int] = (2, 2), seed: int = 1) -> torch.Tensor:
    s = vae.config.stride[1]
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, 3, frames, latent_hw[0] * s, latent_hw[1] * s, generator=g) * 2 - 1


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


# ---------------------------------------------------------------- config
def test_presets():
    assert VAE_PRESETS["wan2.1"].stride == (4, 8, 8) and VAE_PRESETS["wan2.1"].z_dim == 16
    assert VAE_PRESETS["wan2.2"].stride == (4, 16, 16) and VAE_PRESETS["wan2.2"].z_dim == 48
    assert VAE_PRESETS["wan2.1"].version == "2.1" and VAE_PRESETS["wan2.2"].version == "2.2"
    with torch.device("meta"):
        n21 = sum(p.numel() for p in WanVAE(VAE_PRESETS["wan2.1"]).parameters())
        n22 = sum(p.numel() for p in WanVAE(VAE_PRESETS["wan2.2"]).parameters())
    assert 126e6 < n21 < 128e6 and 700e6 < n22 < 710e6


def test_config_validation():
    with pytest.raises(ValueError, match="version"):
        VAEConfig(version="3.0")
    with pytest.raises(ValueError, match="one flag per downsample"):
        VAEConfig(dim_mult=(1, 2), temperal_downsample=(True, True))
    with pytest.raises(ValueError, match="z_dim is 4"):
        VAEConfig(z_dim=4, latents_mean=(0.0,) * 16)


# ---------------------------------------------------------------- encode / decode
@pytest.mark.parametrize("version", ["2.1", "2.2"])
@pytest.mark.parametrize("frames", [1, 5, 9])
def test_shapes_and_range(version, frames):
    vae = tiny(version)
    x = clip(vae, frames)
    z = vae.encode(x)
    assert z.shape == (1, 4, (frames - 1) // 4 + 1, 2, 2)
    out = vae.decode(z)
    assert out.shape == x.shape and out.dtype == torch.float32
    assert out.abs().max() <= 1 and out.std() > 0.01
    assert not z.requires_grad and not out.requires_grad


@pytest.mark.parametrize("version", ["2.1", "2.2"])
def test_chunked_equals_whole_clip(version):
    """The cached path (1, 4, 4, ... frames in, one latent frame out, frames split after every
    temporal upsample) equals one whole-clip pass. In fp64 to 1e-12: the cache logic is exact.
    In fp32 the two paths pick different conv kernels, and rounding through ~50 layers leaves
    a gap of 0.4-0.6e-6 (encode) and 0.75-1.45e-6 (decode) over seeds: bounds 1e-6 and 3e-6."""
    for dtype, tol_enc, tol_dec in ((torch.float32, 1e-6, 3e-6), (torch.float64, 1e-12, 1e-12)):
        vae = tiny(version, dtype=dtype)
        x = clip(vae, 17).to(dtype)
        z = vae.encode(x)
        assert rel(z, vae.encode(x, chunked=False)) <= tol_enc
        assert rel(vae.decode(z, clamp=False), vae.decode(z, clamp=False, chunked=False)) <= tol_dec


def test_custom_temporal_stride():
    """A config with one temporal downsample takes 2k+1 frames; chunks of 1, 2, 2, ..."""
    cfg = VAEConfig(dim=4, z_dim=3, dim_mult=(1, 2), num_res_blocks=1, temperal_downsample=(True,))
    assert cfg.stride == (2, 2, 2)
    vae = WanVAE(cfg).eval()
    x = torch.rand(1, 3, 7, 4, 4) * 2 - 1
    z = vae.encode(x)
    assert z.shape == (1, 3, 4, 2, 2)
    assert rel(z, vae.encode(x, chunked=False)) <= 1e-6
    assert vae.decode(z).shape == x.shape
    with pytest.raises(ValueError, match="5 or 7"):
        vae.encode(torch.zeros(1, 3, 6, 4, 4))
    assert load_vae(vae.state_dict()).config == cfg   # the detector reads odd configs too


@pytest.mark.parametrize("version", ["2.1", "2.2"])
def test_callback_streams_frames_in_order(version):
    vae = tiny(version)
    z = vae.encode(clip(vae, 13))
    seen = []
    out = vae.decode(z, callback=lambda frames, start: seen.append((start, frames.clone())))
    assert [(s, f.shape[2]) for s, f in seen] == [(0, 1), (1, 4), (5, 4), (9, 4)]
    assert torch.equal(torch.cat([f for _, f in seen], dim=2), out)


@pytest.mark.parametrize("version", ["2.1", "2.2"])
def test_cache_window_is_bounded(version):
    """After any number of latent frames the cache holds the same few frames per layer."""
    vae = tiny(version)
    x = vae.conv2(torch.randn(1, 4, 6, 2, 2))
    sizes = []
    with torch.no_grad():
        cache = CausalCache()
        for t, _ in enumerate(vae._decode_stream(x, cache, chunked=True)):
            sizes.append((cache.nbytes(), len(cache)))
    assert sizes[1] == sizes[2] == sizes[-1]  # the first chunk is 1 frame, then steady state
    frames = cache.nbytes() / 4
    assert frames < 40 * 16 * 32 * 32   # a bounded window, well below one decoded clip of features


def test_grad_flows_in_training_mode():
    """The embedded model trains this module: encode/decode keep autograd in train()."""
    vae = tiny("2.1").train()
    x = clip(vae, 5)
    mean, logvar = vae.encode_moments(x)
    out = vae.decode(mean, clamp=False)
    ((out - x) ** 2).mean().add(logvar.mean()).backward()
    assert vae.encoder.conv1.weight.grad.abs().sum() > 0
    assert vae.decoder.head[2].weight.grad.abs().sum() > 0
    vae.eval()
    assert rel(vae.decode(vae.encode(x), clamp=False), out.detach()) < 1e-6


def test_bf16_and_fp16_compute():
    ref = tiny("2.2")
    x = clip(ref, 5)
    z32 = ref.encode(x)
    for dtype in (torch.bfloat16, torch.float16):
        vae = load_vae(ref.state_dict(), dtype=dtype)
        z = vae.encode(x)
        assert z.dtype == dtype and rel(z, z32) < 0.05
        out = vae.decode(z32)
        assert out.dtype == dtype and rel(out, ref.decode(z32)) < 0.05


def test_normalize_uses_published_stats():
    cfg = VAEConfig(version="2.1", dim=4, z_dim=16)
    vae = load_vae(WanVAE(cfg).state_dict())       # z_dim 16 of a 2.1 VAE: the published stats
    assert vae.latent_mean.flatten()[0].item() == pytest.approx(-0.7571)
    assert vae.latent_std.flatten()[-1].item() == pytest.approx(1.9160)
    z = torch.randn(1, 16, 2, 2, 2)
    n = vae.normalize(z)
    assert torch.allclose(n[:, 0], (z[:, 0] + 0.7571) / 2.8184)
    assert torch.allclose(vae.denormalize(n), z, atol=1e-6)
    assert "latent_mean" not in vae.state_dict()
    assert torch.equal(tiny("2.1").latent_std, torch.ones(1, 4, 1, 1, 1))  # custom: identity


# ---------------------------------------------------------------- input errors
@pytest.mark.parametrize("frames,expected", [(18, "17 or 21"), (2, "1 or 5"), (0, "1, 5, 9")])
def test_bad_frame_count_names_valid_counts(frames, expected):
    vae = tiny("2.1")
    with pytest.raises(ValueError, match=expected):
        vae.encode(torch.zeros(1, 3, frames, 16, 16))


def test_bad_size_names_valid_sizes():
    with pytest.raises(ValueError, match=r"height 20 is not a multiple of 8.*16 or 24"):
        tiny("2.1").encode(torch.zeros(1, 3, 1, 20, 16))
    with pytest.raises(ValueError, match=r"width 40 is not a multiple of 16.*32 or 48"):
        tiny("2.2").encode(torch.zeros(1, 3, 1, 32, 40))
    with pytest.raises(ValueError, match=r"\[B, 3, T, H, W\]"):
        tiny("2.1").encode(torch.zeros(3, 1, 16, 16))


def test_bad_latent_names_channels():
    with pytest.raises(ValueError, match="4 channels"):
        tiny("2.1").decode(torch.zeros(1, 16, 1, 2, 2))


# ---------------------------------------------------------------- loading
def test_load_from_file_detects_config(tmp_path):
    for version in ("2.1", "2.2"):
        vae = tiny(version)
        path = tmp_path / f"vae{version}.safetensors"
        save_file({k: v.to(torch.bfloat16) for k, v in vae.state_dict().items()}, str(path))
        loaded = load_vae(path)
        assert loaded.config == TINY[version] and loaded.config.version == version
        assert loaded.dtype == torch.float32
        assert torch.equal(loaded.decoder.conv1.weight, vae.decoder.conv1.weight.to(torch.bfloat16).float())


def test_truncated_and_corrupt_files(tmp_path):
    path = tmp_path / "vae.safetensors"
    save_file(tiny("2.1").state_dict(), str(path))
    data = path.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match="truncated"):
        load_vae(tmp_path / "cut.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(WeightsError, match="corrupt"):
        load_vae(tmp_path / "junk.safetensors")
    with pytest.raises(WeightsError, match="pickle"):
        load_vae(tmp_path / "vae.pth")


def test_not_a_wan_vae_says_what_it_found():
    dit = {"blocks.0.self_attn.q.weight": torch.zeros(4, 4), "patch_embedding.weight": torch.zeros(4, 16, 1, 2, 2)}
    with pytest.raises(WeightsError, match=r"not a Wan VAE.*2 tensors.*blocks\.0\.self_attn\.q\.weight.*diffusion"):
        load_vae(dit)
    sd_vae = {"decoder.mid.block_1.norm1.weight": torch.zeros(4), "encoder.conv_in.weight": torch.zeros(4, 3, 3, 3)}
    with pytest.raises(WeightsError, match="image VAE"):
        load_vae(sd_vae)


def test_damaged_state_dict_is_refused():
    sd = tiny("2.1").state_dict()
    wrong = dict(sd)
    wrong["decoder.middle.0.residual.2.weight"] = torch.zeros(3, 3, 3, 3, 3)
    with pytest.raises(WeightsError, match="do not fit"):
        load_vae(wrong)
    missing = {k: v for k, v in sd.items() if not k.startswith("decoder.head.")}
    with pytest.raises(WeightsError, match=r"missing \['decoder\.head"):
        load_vae(missing)


# ---------------------------------------------------------------- tiling
def test_tile_spans_and_weights_partition_unity():
    assert tile_spans(10, 4, 1) == [(0, 4), (3, 7), (6, 10)]
    assert tile_spans(3, 4, 1) == [(0, 3)]
    for spans in (tile_spans(10, 4, 1), tile_spans(11, 6, 2), tile_spans(9, 4, 3)):
        total = torch.zeros(spans[-1][1] * 8, dtype=torch.float64)
        for (a, b), w in zip(spans, ramp_weights(spans, 8)):
            total[a * 8:b * 8] += w
        assert torch.allclose(total, torch.ones_like(total))


@pytest.mark.parametrize("decode", [True, False])
def test_tile_grid_is_exact_for_local_streams(decode):
    """With a per-pixel stream the blended tiles reproduce the untiled result exactly: the
    placement and the blend weights are right; any tiled/untiled gap is the network's context."""
    grid = TileGrid.plan((6, 5), (24, 16), (8, 8), (8, 8), 2, decode=decode)   # factor 4
    assert len(grid.tiles) == 3 * 4       # rows [0,3) [2,5) [3,6); columns of 2 with step 1
    x = torch.randn(1, 2, 3, 6 * (1 if decode else 4), 5 * (1 if decode else 4))

    def stream(t, cache, chunked):        # "decode": 4x nearest upsample; "encode": 4x average pool
        for i in range(t.shape[2]):
            f = t[:, :, i:i + 1]
            yield (f.repeat_interleave(4, -1).repeat_interleave(4, -2) if decode
                   else torch.nn.functional.avg_pool3d(f, (1, 4, 4)))

    out = torch.cat(list(grid.run(x, stream, lambda y: y * 2 + 1, True)), dim=2)
    whole = torch.cat([y * 2 + 1 for y in stream(x, None, True)], dim=2)
    assert torch.allclose(out, whole, atol=1e-6)


@pytest.mark.parametrize("version", ["2.1", "2.2"])
def test_tiled_vae_close_to_untiled(version):
    """One tile covering the frame is bit-identical. Real tiles (6 of 8 latent pixels, overlap 2)
    change the result because the network sees no context beyond a tile (its mid-block
    attention spans the whole frame): measured mean |diff| 0.06 (2.1) and 0.03 (2.2) on
    outputs of std 0.28 with these random tiny weights. Stated tolerance: mean |diff| <=
    0.35 std, and encoding a tile-sized frame in tiles is exact."""
    vae = tiny(version)
    s = vae.config.stride[1]
    x = torch.nn.functional.interpolate(torch.rand(1, 3, 5, 4, 4) * 2 - 1, size=(5, 8 * s, 8 * s), mode="trilinear")
    z = vae.encode(x)
    out = vae.decode(z)
    assert torch.equal(vae.decode(z, tile=(8 * s, 8 * s)), out)
    assert torch.equal(vae.encode(x, tile=(8 * s, 8 * s)), z)
    seen = []
    tiled = vae.decode(z, tile=(6 * s, 6 * s), tile_overlap=(2 * s, 2 * s), callback=lambda f, i: seen.append(i))
    assert seen == [0, 1] and tiled.shape == out.shape and tiled.abs().max() <= 1
    assert (tiled - out).abs().mean() <= 0.35 * out.std()
    zt = vae.encode(x, tile=(6 * s, 6 * s), tile_overlap=(2 * s, 2 * s))
    assert zt.shape == z.shape and rel(zt, z) < 0.5
    with pytest.raises(ValueError, match="overlap"):
        vae.decode(z, tile=(2 * s, 2 * s), tile_overlap=(2 * s, 2 * s))


@pytest.mark.parametrize("preset", ["wan2.1", "wan2.2"])
def test_real_sizes_detected_from_shapes(preset):
    """The released VAEs (official and diffusers layouts) are recognised from tensor shapes
    alone; built on the meta device, so no memory or time is spent."""
    from diffusers import AutoencoderKLWan

    from spacetime_video.model.weights.layouts import wan_vae_to_official
    from spacetime_video.model.vae import vae_config_from_state_dict

    with torch.device("meta"):
        official = WanVAE(VAE_PRESETS[preset]).state_dict()
        kwargs = dict(base_dim=96, z_dim=16) if preset == "wan2.1" else dict(
            base_dim=160, decoder_base_dim=256, z_dim=48, is_residual=True, in_channels=12, out_channels=12,
            patch_size=2, scale_factor_spatial=16)
        diffusers_sd = AutoencoderKLWan(**kwargs).state_dict()
    assert vae_config_from_state_dict(official) == VAE_PRESETS[preset]
    converted, layout = wan_vae_to_official(diffusers_sd)
    assert layout == "diffusers" and set(converted) == set(official)
    assert vae_config_from_state_dict(converted) == VAE_PRESETS[preset]
