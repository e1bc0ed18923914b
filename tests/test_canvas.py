"""model/canvas.py: sizes, placement, masks and per-token timesteps (plain torch, no ComfyUI)."""
from __future__ import annotations

import pytest
import torch

from spacetime_video.model import canvas, sizes


def test_nearest_length_is_4k_plus_1():
    assert [sizes.nearest_length(n) for n in (1, 2, 3, 4, 5, 80, 81, 82, 83, 0)] == [1, 1, 5, 5, 5, 81, 81, 81, 85, 1]


def test_snap_canvas_reports_changes_and_latent_grid():
    size, notes = canvas.snap_canvas(70, 50, 10, stride=(4, 8, 8), patch=(1, 2, 2), channels=16)
    assert (size.width, size.height, size.length) == (64, 48, 9)
    assert size.latent_shape == (16, 3, 6, 8)
    assert size.grid == (3, 3, 4) and size.tokens == 36
    assert len(notes) == 3 and "width 70 -> 64" in notes[0] and "4k+1" in notes[2]
    same, none = canvas.snap_canvas(64, 32, 5, stride=(4, 16, 16), channels=48)
    assert none == [] and same.latent_shape == (48, 2, 2, 4)


def test_check_canvas_names_nearest_values():
    assert canvas.check_canvas(32, 32, 5) == []
    problems = canvas.check_canvas(40, 32, 6)
    assert "width 40" in problems[0] and "32 or 48" in problems[0]
    assert "length 6" in problems[1] and "5 or 9" in problems[1]


def test_place_and_masks_extend_both_ends():
    pixels, known = canvas.new_pixel_canvas(9, 4, 4)
    clip = torch.rand(5, 4, 4, 3)
    canvas.place(pixels, known, clip, 0)          # frames 0..4 -> latents 0, 1
    canvas.place(pixels, known, clip[:4], 5)      # frames 5..8 -> latent 2
    assert torch.equal(pixels[:5], clip) and known.all()
    assert canvas.latent_known(known).tolist() == [True, True, True]
    known[6] = False
    assert canvas.latent_known(known).tolist() == [True, True, False]
    m = canvas.noise_mask(known, (2, 2))
    assert m.shape == (1, 1, 3, 2, 2) and m[0, 0, :, 0, 0].tolist() == [0.0, 0.0, 1.0]
    known[5:7] = False   # frames 5, 6 unknown, 7, 8 known: a lead-in, so latent 2 is kept
    assert canvas.latent_known(known).tolist() == [True, True, True]


def test_place_errors_name_sizes_and_range():
    pixels, known = canvas.new_pixel_canvas(5, 4, 4)
    with pytest.raises(canvas.CanvasError, match="4x4"):
        canvas.place(pixels, known, torch.rand(1, 8, 4, 3), 0)
    with pytest.raises(canvas.CanvasError, match="0..3"):
        canvas.place(pixels, known, torch.rand(2, 4, 4, 3), 4)
    with pytest.raises(canvas.CanvasError, match="1..3"):
        canvas.clip_end(torch.rand(3, 4, 4, 3), 5, "last")
    assert not known.any()  # nothing was written by the refused placements


def test_concat_mask_matches_first_frame_counted_four_times():
    known = torch.zeros(9, dtype=torch.bool)
    known[0] = True   # image-to-video
    known[8] = True   # plus a last frame (FLF2V): only frame 8 of latent 2
    m = canvas.concat_mask(known, (1, 1))
    assert m.shape == (1, 4, 3, 1, 1)
    assert m[0, :, 0, 0, 0].tolist() == [0, 0, 0, 0]      # latent 0: frame 0 x4, known
    assert m[0, :, 1, 0, 0].tolist() == [1, 1, 1, 1]      # frames 1..4 unknown
    assert m[0, :, 2, 0, 0].tolist() == [1, 1, 1, 0]      # frames 5..8: only 8 known


def test_replace_known():
    x, k = torch.zeros(1, 2, 3, 2, 2), torch.ones(1, 2, 3, 2, 2)
    mask = torch.tensor([0.0, 1.0, 1.0]).view(1, 1, 3, 1, 1)
    out = canvas.replace_known(x, k, mask)
    assert out[:, :, 0].eq(1).all() and out[:, :, 1:].eq(0).all()


def test_token_timesteps_zero_on_known_tokens():
    mask = torch.ones(1, 1, 3, 4, 4)
    mask[:, :, 0] = 0
    t = canvas.token_timesteps(mask, torch.tensor([500.0, 250.0]))
    assert t.shape == (2, 3 * 2 * 2)
    assert t[0, :4].eq(0).all() and t[0, 4:].eq(500).all() and t[1, 4:].eq(250).all()
    half = torch.ones(1, 1, 1, 2, 2)
    half[..., 0, 0] = 0
    assert canvas.token_timesteps(half, torch.tensor([100.0])).tolist() == [[75.0]]


def test_estimate_peak_bytes_grows_with_tokens():
    small, _ = canvas.snap_canvas(64, 64, 5)
    big, _ = canvas.snap_canvas(128, 128, 17)
    a = canvas.estimate_peak_bytes(small, 1536, 30, 8960, 2)
    b = canvas.estimate_peak_bytes(big, 1536, 30, 8960, 2)
    assert 1.3e9 * 2 < a < b  # ~1.4 B params in bf16 at least


def test_fill_lead_in_holds_the_next_known_frame():
    pixels, known = canvas.new_pixel_canvas(9, 2, 2)
    end = torch.rand(1, 2, 2, 3)
    canvas.place(pixels, known, end, 8)                 # one end image (loop / connect)
    filled = canvas.fill_lead_in(pixels, known)
    assert torch.equal(filled, end.expand(9, 2, 2, 3))
    assert pixels[1:8].eq(canvas.GREY).all()            # the canvas itself is untouched
    assert canvas.latent_known(known).tolist() == [False, False, True]


def test_sizes_name_the_valid_values_around_a_bad_one():
    assert sizes.frames_problem(17) is None and sizes.side_problem("width", 32, 16) is None
    assert "use 17 or 21" in sizes.frames_problem(18) and "(1, 5, 9, ...)" in sizes.frames_problem(0)
    assert sizes.frames_problem(0).endswith("use 1")
    assert "use 16" in sizes.side_problem("height", 8, 16) and "use 16 or 32" in sizes.side_problem("h", 20, 16)
    assert sizes.side_problem("width", 40, 8, "stride", "resize") is None
    assert sizes.side_problem("width", 41, 8, "stride", "resize") == \
        "width 41 is not a multiple of 8 (stride): use 40 or 48 (resize)"


def test_start_frame_of_each_position():
    assert canvas.start_frame("start", 17, 5) == 0
    assert canvas.start_frame("end", 17, 5) == 12
    assert canvas.start_frame(3, 17, 5) == 3
    with pytest.raises(canvas.CanvasError, match="'start', 'end' or a frame index"):
        canvas.start_frame("middle", 17, 5)


def test_known_latents_encode_the_filled_canvas_in_order():
    pixels, known = canvas.new_pixel_canvas(9, 2, 2)
    end = torch.rand(1, 2, 2, 3)
    canvas.place(pixels, known, end, 8)
    seen = []

    def encode(p):  # a stand-in VAE: one latent per group of frames, the group's mean
        seen.append(p.clone())
        return torch.stack([p[0].mean(-1), p[1:5].mean((0, -1)), p[5:9].mean((0, -1))]).view(1, 1, 3, 2, 2)

    z = canvas.known_latents(encode, pixels, known)
    assert torch.equal(seen[0], canvas.fill_lead_in(pixels, known))      # lead-in filled, whole canvas once
    assert canvas.noise_mask(known, (2, 2))[0, 0, :, 0, 0].tolist() == [1.0, 1.0, 0.0]
    assert torch.allclose(z[0, 0, 2], end[0].mean(-1))


def test_known_input_clean_or_renoised():
    x, clean, noise = torch.zeros(1, 2, 3, 2, 2), torch.ones(1, 2, 3, 2, 2), torch.full((1, 2, 3, 2, 2), 3.0)
    mask = torch.tensor([0.0, 1.0, 1.0]).view(1, 1, 3, 1, 1)              # latent 0 known
    assert torch.equal(canvas.known_input(x, clean, mask)[:, :, 0], clean[:, :, 0])
    renoised = canvas.known_input(x, clean, mask, sigma=0.25, noise=noise)
    assert torch.allclose(renoised[:, :, 0], torch.full((1, 2, 2, 2), 0.75 * 1 + 0.25 * 3.0))
    assert torch.equal(renoised[:, :, 1:], x[:, :, 1:])
