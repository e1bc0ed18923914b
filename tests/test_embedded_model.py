"""The shipped embedded model: it follows prompts and known frames, and training lowers the loss.

Adherence is read by the deterministic analyser, so these tests fail if the weights are
replaced by noise or the text / known-frame conditioning is disconnected.
"""
from __future__ import annotations

import random

import pytest
import torch

from spacetime_video.model.dit import WanDiT
from spacetime_video.model.dit.config import tiny_config
from spacetime_video.model.embedded import config as C
from spacetime_video.training import world
from spacetime_video.training.analyser import analyse
from spacetime_video.model.embedded import load_embedded
from spacetime_video.pipeline import Known
from spacetime_video.pipeline import generate_embedded as generate
from spacetime_video.model.embedded.text_encoder import TextEncoderConfig, TinyTextEncoder
from spacetime_video.training.train_dit import DiTTrainConfig, DiTTrainer, eval_loss
from spacetime_video.training.train_vae import VAETrainConfig, VAETrainer, psnr, vae_loss
from spacetime_video.model.vae import WanVAE
from spacetime_video.model.vae.config import VAEConfig

# (prompt, colour, shape, motion, background): captions in several wordings. Chance is 2/8, 1/8,
# 2.7/8 and 1.1/8; the shipped VAE and text encoder with a freshly initialised DiT read about that.
PROMPTS = [
    ("a red circle moves to the left across a black background", "red", "circle", "left", "black"),
    ("a green square moves up across a gray background", "green", "square", "up", "gray"),
    ("a white square moves to the right across a navy background", "white", "square", "right", "navy"),
    ("a cyan triangle moves down across a beige background", "cyan", "triangle", "down", "beige"),
    ("a orange ball rests in place on a navy background", "orange", "circle", "still", "navy"),
    ("a blue box slides left on a beige background", "blue", "square", "left", "beige"),
    ("a yellow disc rises on a black background", "yellow", "circle", "up", "black"),
    ("a purple wedge falls on a gray background", "purple", "triangle", "down", "gray"),
]
STEPS = C.DEFAULT_STEPS


@pytest.fixture(scope="module")
def model():
    return load_embedded()


def test_shipped_weights_are_small_and_recorded() -> None:
    files = [C.WEIGHTS_DIR / f for f in (C.VAE_FILE, C.DIT_FILE, C.TEXT_FILE)]
    assert sum(f.stat().st_size for f in files) <= 25 * 2**20
    assert (C.WEIGHTS_DIR.parent / "MODEL_CARD.md").is_file()


def test_text_to_video_follows_the_prompt(model) -> None:
    """Adherence above chance for every attribute; the thresholds sit one below the measured
    counts (eight prompts are too few to test the model's 80% / 90% targets: MODEL_CARD.md)."""
    hits = {"background": 0, "colour": 0, "shape": 0, "motion": 0}
    for i, (prompt, colour, shape, motion, background) in enumerate(PROMPTS):
        got = analyse(generate(prompt, steps=STEPS, seed=i, model=model))
        want = {"background": background, "colour": colour, "shape": shape, "motion": motion}
        for key in hits:
            hits[key] += getattr(got, key) == want[key]
    assert hits["background"] >= 7 and hits["colour"] >= 7, hits
    assert hits["shape"] >= 7 and hits["motion"] >= 6, hits


def test_image_to_video_keeps_the_image(model) -> None:
    gt = world.sample_clip(5, split="heldout", combo=("purple", "circle", "up"), background="black").video
    v = generate("a purple circle moves up across a black background", steps=STEPS, seed=3, model=model,
                 known=[Known(gt[:, :1])])
    recon = model.vae.decode(model.vae.encode(gt[None, :, :1]))[0, :, 0]
    assert psnr(v[:, 0], gt[:, 0]) >= 31                      # VAE-limited (34.0 dB measured)
    assert abs(psnr(v[:, 0], gt[:, 0]) - psnr(recon, gt[:, 0])) < 0.5
    assert analyse(v).motion == "up"


def test_connect_matches_both_ends(model) -> None:
    gt = world.sample_clip(9, split="heldout", combo=("yellow", "triangle", "right"), background="navy").video
    prompt = "a yellow triangle moves to the right across a navy background"
    v = generate(prompt, steps=STEPS, seed=4, model=model, known=[Known(gt[:, :1]), Known(gt[:, -1:], "end")])
    free = generate(prompt, steps=STEPS, seed=4, model=model)
    first, last = psnr(v[:, 0], gt[:, 0]), psnr(v[:, -1], gt[:, -1])
    assert first >= 26 and last >= 26                         # measured 27.9 / 28.6 dB
    recon = model.vae.decode(model.vae.encode(gt[None, :, :1]))[0, :, 0]
    assert abs(first - psnr(recon, gt[:, 0])) < 0.5            # the first frame is VAE-limited
    assert first > psnr(free[:, 0], gt[:, 0]) + 5 and last > psnr(free[:, -1], gt[:, -1]) + 5


def test_a_few_dit_steps_lower_the_loss() -> None:
    torch.manual_seed(0)
    text = TinyTextEncoder(TextEncoderConfig(dim=16, heads=2, layers=1, text_dim=16, max_len=8))
    dit = WanDiT(tiny_config(dim=32, ffn_dim=64, num_heads=2, num_layers=1, text_dim=16, text_len=8,
                             freq_dim=32, in_dim=4, out_dim=4))
    # one learnable value per clip and channel (pure noise latents leave little to learn in 40
    # steps now that the head starts at zero, as in the official initialisation)
    lat = torch.randn(8, 4, 1, 1, 1).expand(8, 4, 3, 4, 4).contiguous()
    caps = [world.sample_clip(i).caption for i in range(8)]
    trainer = DiTTrainer(dit, text, lat, lambda i, rng: caps[i], DiTTrainConfig(batch=8, lr=3e-3, warmup=1, steps=40))
    before = eval_loss(dit, text, lat, caps)
    for _ in range(40):
        trainer.step()
    assert eval_loss(dit, text, lat, caps) < 0.9 * before


def test_sigma_shift_moves_training_toward_noise() -> None:
    """`sigma_shift` k maps each training sigma s as the sampler's shift does (k s / (1 + (k - 1) s)):
    the same draws, the median from 0.5 to k / (k + 1); k = 1 changes nothing."""
    from spacetime_video.training.train_dit import sample_sigmas
    from spacetime_video.samplers.schedules import shift_sigma
    plain = sample_sigmas(20000, torch.Generator().manual_seed(0))
    shifted = sample_sigmas(20000, torch.Generator().manual_seed(0), shift=3.0)
    inside = plain > 1e-3                                   # away from the lower clamp
    torch.testing.assert_close(shifted[inside], 3 * plain[inside] / (1 + 2 * plain[inside]))
    torch.testing.assert_close(shifted[inside], shift_sigma(plain[inside], 3.0))
    assert torch.equal(sample_sigmas(20000, torch.Generator().manual_seed(0), shift=1.0), plain)
    assert abs(float(plain.median()) - 0.5) < 0.02 and abs(float(shifted.median()) - 0.75) < 0.02
    assert float(shifted.min()) >= 1e-3 and float(shifted.max()) <= 1.0


def test_a_few_vae_steps_lower_the_loss() -> None:
    torch.manual_seed(0)
    vae = WanVAE(VAEConfig(dim=4, z_dim=4, dim_mult=(1, 2, 2, 2), num_res_blocks=1))
    cfg = VAETrainConfig(batch=2, crop=16, frames=5, lr=5e-3, steps=40)
    from spacetime_video.training.train_vae import crop_batch
    fixed = crop_batch(random.Random(1), cfg)
    before = float(vae_loss(vae.train(), fixed, cfg, torch.Generator().manual_seed(0))[0])
    trainer = VAETrainer(vae, cfg)
    for _ in range(40):
        trainer.step(fixed)
    after = float(vae_loss(vae.train(), fixed, cfg, torch.Generator().manual_seed(0))[0])
    assert after < 0.8 * before


def test_object_mask_marks_the_objects_cells() -> None:
    """The DiT's loss weight map: the cell under the object's centre is marked in the first and
    last latent frames, and the object covers only a small part of each frame."""
    from spacetime_video.training.train_dit import object_mask
    clip = world.sample_clip(0, split="heldout", combo=("red", "square", "right"), background="black")
    for stride in ((4, 8, 8), C.VAE_CONFIG.stride):
        s = stride[1]
        m = object_mask(clip.video[None], stride)
        assert m.shape == (1, 1, 5, 64 // s, 64 // s)
        (x0, y0), (x1, y1) = clip.objects[0].start, clip.objects[0].end
        assert m[0, 0, 0, int(y0) // s, int(x0) // s] == 1 and m[0, 0, -1, int(y1) // s, int(x1) // s] == 1
        assert 0.02 < float(m.mean()) < 0.4
        # a blank clip marks nothing
        assert float(object_mask(torch.zeros(1, 3, 17, 64, 64), stride).sum()) == 0


def test_latent_rgb_factors_preview_the_colours_of_held_out_clips():
    """ComfyUI's latent previews of the embedded model (the config's Latent2RGB factors) show the
    colours a first latent frame covers on clips they were not fitted on, as well as a fresh fit."""
    from spacetime_video.training.latent_rgb import first_frames, first_latent_frame, fit_latent_rgb, preview
    vae = load_embedded().vae
    z, target = first_latent_frame(vae, first_frames(list(range(32)), "heldout"))   # (B, C, h, w), (B, 3, h, w)
    shipped = (preview(z, C.LATENT_RGB_FACTORS, C.LATENT_RGB_BIAS) - target).abs().mean().item()
    flat = (target - target.mean(dim=(0, 2, 3), keepdim=True)).abs().mean().item()
    refit = (preview(z, *fit_latent_rgb(vae, first_frames(list(range(1000, 1128))))) - target).abs().mean().item()
    assert shipped < 0.16 and shipped < flat / 3, (shipped, flat)
    assert shipped < refit + 0.02, (shipped, refit)      # not stale: a new fit is no better
