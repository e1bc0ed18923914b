"""The Long Video node with a Wan 2.1 I2V model and ComfyUI's own CLIP-vision model (a tiny
random one, built by ``comfy.clip_vision.ClipVisionModel`` from a config of our own), in-process:
every window's DiT call gets the CLIP-vision view of that window's image condition, the start
image's when ``reanchor`` is on, the previous window's last frame when it is off."""
from __future__ import annotations

import json

import pytest
import torch

from dit_helpers import random_state_dict

STORYBOARD = "1: a kite moves right\n1: a kite moves left"


@pytest.fixture(scope="module")
def parts(comfy, tmp_path_factory):
    import comfy.clip_vision
    import folder_paths

    from spacetime_video.model.dit import load_dit
    from spacetime_video.model.dit.config import tiny_config
    from spacetime_video.model.embedded.text_encoder import TextEncoderConfig, TinyTextEncoder
    from spacetime_video.model.vae import WanVAE, load_vae
    from spacetime_video.model.vae.config import VAEConfig
    from spacetime_video.nodes.comfy_model import wrap_dit
    from spacetime_video.nodes.comfy_vae import wrap_vae

    before = folder_paths.get_output_directory()
    folder_paths.set_output_directory(str(tmp_path_factory.mktemp("output")))
    torch.manual_seed(0)
    cfg = tiny_config(text_dim=32, text_len=8, in_dim=36, model_type="i2v", img_emb=True, clip_dim=24)
    model = wrap_dit(load_dit(random_state_dict(cfg, 3), config=cfg), shift=5.0)
    vae = wrap_vae(load_vae({k: v.clone() for k, v in WanVAE(VAEConfig(dim=4, z_dim=16, num_res_blocks=1))
                            .state_dict().items()}))
    text = TinyTextEncoder(TextEncoderConfig(vocab_size=128, max_len=8, dim=16, heads=2, layers=1, text_dim=32))
    config = tmp_path_factory.mktemp("clip") / "tiny_clip_vision.json"
    config.write_text(json.dumps(dict(hidden_act="gelu", hidden_size=24, image_size=28, intermediate_size=48,
                                      layer_norm_eps=1e-5, model_type="clip_vision_model", num_attention_heads=2,
                                      num_channels=3, num_hidden_layers=3, patch_size=14, projection_dim=16)))
    clip_vision = comfy.clip_vision.ClipVisionModel(str(config))
    g = torch.Generator().manual_seed(1)
    clip_vision.load_sd({k: (1.0 if k.endswith("weight") and v.ndim == 1 else 0.0) + 0.3 * torch.randn(v.shape, generator=g)
                         for k, v in clip_vision.get_sd().items()})
    yield model, vae, text, clip_vision
    folder_paths.set_output_directory(before)


def _run(parts, reanchor: bool, clip_vision: bool = True, seed: int = 0, seen: list | None = None):
    """(the clip features of every DiT call (into ``seen`` as they come), or None where none came;
    the start image; the CLIP-vision model)."""
    from spacetime_video.nodes.long_video_nodes import SpacetimeLongVideo
    model, vae, text, cv = parts
    image = torch.rand(1, 32, 32, 3, generator=torch.Generator().manual_seed(5))
    inner = model.model.diffusion_model
    seen, real = [] if seen is None else seen, inner._forward

    def recording(*args, **kwargs):           # (x, timestep, context, clip_fea, ...) as ComfyUI calls it
        clip_fea = kwargs.get("clip_fea", args[3] if len(args) > 3 else None)
        seen.append(None if clip_fea is None else clip_fea.detach().clone())
        return real(*args, **kwargs)

    inner._forward = recording
    try:
        node = SpacetimeLongVideo.PREPARE_CLASS_CLONE({})
        node.execute(model, vae, STORYBOARD, "", 8.0, 1.0, 32, 32, 9, 1, "pixels", 0.5, False, "off", seed, 2, 1.0,
                     "euler", 5.0, f"spacetime/clip_vision_{reanchor}_{clip_vision}_{seed}", text_encoder=text,
                     image=image, clip_vision=cv if clip_vision else None, reanchor=reanchor)
    finally:
        del inner._forward
    return seen, image, cv


def _view(cv, frame: torch.Tensor) -> torch.Tensor:
    return cv.encode_image(frame[None], crop=False).penultimate_hidden_states


def test_reanchored_windows_all_see_the_start_image(parts):
    seen, image, cv = _run(parts, reanchor=True)
    assert len(seen) == 4                                    # 2 s at 8 fps: 2 windows of 9 frames, 2 steps each
    start = _view(cv, image[0])
    assert start.shape == (1, 5, 24)                          # 28 px / 14: 4 patches and the class token
    for fea in seen:
        assert fea is not None and torch.allclose(fea, start)


def test_without_reanchor_a_window_sees_the_last_frame_before_it(parts):
    seen, image, cv = _run(parts, reanchor=False, seed=1)
    start = _view(cv, image[0])
    assert torch.allclose(seen[0], start) and torch.allclose(seen[1], start)    # window 1 starts at the image
    assert seen[2] is not None and not torch.allclose(seen[2], start, atol=1e-3)  # window 2: its own first frame
    assert torch.allclose(seen[2], seen[3])


def test_a_model_with_a_clip_vision_branch_asks_for_clip_vision_before_sampling(parts):
    from spacetime_video.nodes.errors import SpacetimeNodeError
    seen = []
    with pytest.raises(SpacetimeNodeError, match=r"SpacetimeLongVideo: input 'clip_vision'.*Load CLIP Vision"):
        _run(parts, reanchor=True, clip_vision=False, seed=2, seen=seen)
    assert seen == []


def test_the_sampler_node_asks_for_a_clip_vision_view(parts):
    from spacetime_video.nodes.errors import SpacetimeNodeError
    from spacetime_video.nodes.sampler import SpacetimeSampler
    model, _, _, cv = parts
    latent = {"samples": torch.zeros(1, 16, 3, 4, 4)}
    cond = [[torch.randn(1, 8, 32), {}]]
    with pytest.raises(SpacetimeNodeError, match=r"SpacetimeSampler: input 'clip_vision_output'.*Load CLIP Vision"):
        SpacetimeSampler.execute(model, cond, cond, latent, 0, 1, 1.0, "euler", 5.0, 1.0)
    view = cv.encode_image(torch.rand(1, 32, 32, 3), crop=False)
    out = SpacetimeSampler.execute(model, cond, cond, latent, 0, 1, 1.0, "euler", 5.0, 1.0, clip_vision_output=view)
    assert out.result[0]["samples"].shape == (1, 16, 3, 4, 4)
