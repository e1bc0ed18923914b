"""Long video on one timeline (long_video/): storyboard, window plan, known frames at the joints,
streamed decode, drift control, checkpoints and resume, flat memory; the embedded model and
tiny random Wan configs of each layout."""
from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from spacetime_video.long_video import (CheckpointError, StoryboardError, generate_long, generate_long_embedded,
                                        parse_storyboard, plan_windows)
from spacetime_video.long_video.checkpoint import window_path
from spacetime_video.long_video.drift import Anchor, border_colour, hold_to_anchor
from spacetime_video.long_video.storyboard import latent_length, window_weights
from spacetime_video.model.dit import WanDiT
from spacetime_video.model.dit import tiny_config as dit_tiny
from spacetime_video.model.vae import VAEConfig, WanVAE

SB = "# two segments\n2: a red circle moves to the right on a black background\n\n" \
     "2: a red circle moves to the left on a black background\n"


# --- storyboard and windows -------------------------------------------------------------------
def test_storyboard_lines_comments_and_single_prompt():
    segs = parse_storyboard(SB)
    assert [(s.seconds, s.prompt.split()[-5]) for s in segs] == [(2.0, "right"), (2.0, "left")]
    one = parse_storyboard("a blue square moves up", seconds=3)
    assert len(one) == 1 and one[0].seconds == 3 and one[0].prompt == "a blue square moves up"


@pytest.mark.parametrize("text, words", [
    ("2: fine\nno duration here", ["line 2", "no duration"]),
    ("0: zero", ["line 1", "positive"]),
    ("-3: negative", ["line 1", "positive"]),
    ("nan: not a number", ["line 1", "positive"]),
    ("3:", ["line 1", "no prompt"]),
    ("4000: too long", ["3600"]),
    ("", ["empty"]),
])
def test_storyboard_errors_name_the_line(text, words):
    with pytest.raises(StoryboardError) as e:
        parse_storyboard(text)
    assert all(w in str(e.value) for w in words), str(e.value)


@pytest.mark.parametrize("total, window, overlap", [(5, 5, 2), (21, 5, 1), (21, 5, 2), (22, 5, 3), (121, 21, 4)])
def test_windows_cover_the_timeline_and_keep_exactly_the_frames_before(total, window, overlap):
    wins = plan_windows(total, window, overlap)
    assert wins[0].start == 0 and wins[-1].end == total
    made = set(range(wins[0].end))
    for a, b in zip(wins, wins[1:]):
        assert b.known_end == a.end and b.end - b.start == window             # continues right after
        assert b.known_end - b.start >= overlap                               # keeps at least the overlap
        assert set(range(b.start, b.known_end)) <= made                       # only frames already made
        made |= set(range(b.known_end, b.end))
    assert made == set(range(total))


@pytest.mark.parametrize("window, overlap", [(5, 0), (5, 5), (1, 0)])
def test_bad_overlap_or_window_is_refused(window, overlap):
    with pytest.raises(StoryboardError, match="overlap|window"):
        plan_windows(40, window, overlap)


def test_window_prompt_is_the_segment_of_its_first_new_frame_and_blend_mixes():
    segs = parse_storyboard(SB)                          # changes at frame 16 (8 fps)
    wins = plan_windows(latent_length(segs, 8), 5, 1)
    assert [window_weights(segs, 8, w, False) for w in wins] == [{0: 1.0}, {1: 1.0}]
    segs = parse_storyboard("3: a\n3: b")                # changes at frame 24: latent 6
    win = plan_windows(latent_length(segs, 8), 5, 2)[1]  # new latents 5, 6, 7: frames 20 | 24, 28
    assert window_weights(segs, 8, win, False) == {0: 1.0}
    assert window_weights(segs, 8, plan_windows(latent_length(segs, 8), 5, 2)[2], False) == {1: 1.0}
    mixed = window_weights(segs, 8, win, True)
    assert set(mixed) == {0, 1} and math.isclose(mixed[0], 1 / 3) and math.isclose(sum(mixed.values()), 1.0)


# --- the VAE decoded in pieces, drift control ---------------------------------------------------
def test_decode_session_equals_one_decode_of_the_whole_latent():
    torch.manual_seed(0)
    vae = WanVAE(VAEConfig(version="2.1", dim=8, z_dim=4, dim_mult=(1, 2, 2), num_res_blocks=1,
                           temperal_downsample=(True, True))).eval()
    z = torch.randn(1, 4, 9, 4, 4)
    whole = vae.decode(z)
    s = vae.decode_session()
    parts = torch.cat([s.decode(z[:, :, :5]), s.decode(z[:, :, 5:6]), s.decode(z[:, :, 6:])], dim=2)
    assert torch.equal(parts, whole)


def test_anchor_moves_background_colour_and_latent_statistics():
    frames = torch.full((4, 16, 16, 3), 0.2)
    frames[:, 6:10, 6:10] = torch.tensor([0.9, 0.1, 0.1])                # an object
    anchor = Anchor.of(frames, -1)
    drifted = frames + 0.1
    half = hold_to_anchor(drifted, anchor, 0.5)
    assert torch.allclose(border_colour(half), border_colour(frames) + 0.05, atol=1e-6)
    assert torch.equal(hold_to_anchor(drifted, anchor, 0.0), drifted)
    lat = torch.randn(1, 4, 3, 4, 4)
    a = Anchor.of(lat, 1)
    moved = hold_to_anchor(lat * 3 + 1, a, 1.0)
    assert torch.allclose(moved.mean(dim=(0, 2, 3, 4)), lat.mean(dim=(0, 2, 3, 4)).float(), atol=1e-5)


# --- runs: embedded model ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def embedded():
    from spacetime_video.model.embedded import load_embedded
    return load_embedded()


def _run(embedded, **kw):
    options = dict(steps=3, seed=5, model=embedded)
    options.update(kw)
    return generate_long_embedded(SB, **options)


@pytest.mark.parametrize("continuity", ["pixels", "latents"])
def test_known_frames_are_exactly_the_previous_windows_frames(embedded, continuity, monkeypatch):
    """Every window after the first is sampled with the timeline's own frames as its known part
    (pixels: the last 1 + 4 (k - 1) frames, placed and encoded; latents: the last k latent
    frames), mask 0 there, and keeps them exactly."""
    from spacetime_video.long_video import timeline
    seen = []
    original = timeline.TimelineRun._sample

    def spy(self, win):
        inner = self.sample_window

        def sampler(w, weights, noise, place):
            out = inner(w, weights, noise, place)
            seen.append((win, None if self.state.tail is None else self.state.tail.clone(), place, out))
            return out
        self.sample_window = sampler
        try:
            return original(self, win)
        finally:
            self.sample_window = inner

    monkeypatch.setattr(timeline.TimelineRun, "_sample", spy)
    clip = _run(embedded, continuity=continuity, overlap=2, anchor=0.0)
    assert clip.windows == len(seen) >= 2
    for win, tail, place, out in seen[1:]:
        k = win.known_end - win.start
        assert bool((place.mask[:, :, :k] == 0).all()) and bool((place.mask[:, :, k:] == 1).all())
        if continuity == "latents":
            assert torch.equal(place.known[:, :, :k], tail[:, :, -k:])      # the timeline's own latents
        else:
            n = 1 + 4 * (k - 1)
            assert torch.equal(place.pixels[:n], tail[-n:]) and bool(place.flags[:n].all())
            assert not bool(place.flags[n:].any())
            want = embedded.vae.encode(tail[-n:].permute(3, 0, 1, 2)[None] * 2 - 1)
            assert torch.allclose(place.known[:, :, :k], want.float(), atol=1e-5)  # the last frames, encoded


def test_a_clip_can_start_from_an_image(embedded):
    from spacetime_video.pipeline import generate_embedded
    image = ((generate_embedded("a blue square stays still on a white background", steps=3, seed=1)[:, 0]
              .permute(1, 2, 0) + 1) / 2).clamp(0, 1)[None]                # [1, 64, 64, 3]
    clip = _run(embedded, start=image)
    plain = _run(embedded)
    assert float((clip.frames[0] - image[0]).abs().mean()) < 0.05 < float((plain.frames[0] - image[0]).abs().mean())


def test_resume_after_interrupt_is_bit_identical_and_keeps_finished_windows(embedded, tmp_path):
    full = _run(embedded, run_dir=tmp_path / "a")
    calls = {"n": 0}
    from spacetime_video.long_video import timeline
    original = timeline.TimelineRun._sample

    def dies_on_second(self, win):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("stop")
        return original(self, win)

    timeline.TimelineRun._sample = dies_on_second
    try:
        with pytest.raises(KeyboardInterrupt):
            _run(embedded, run_dir=tmp_path / "b")
    finally:
        timeline.TimelineRun._sample = original
    assert window_path(tmp_path / "b", 0).is_file() and not window_path(tmp_path / "b", 1).exists()
    again = _run(embedded, run_dir=tmp_path / "b")
    assert again.resumed == 1
    assert torch.equal(again.frames, full.frames)
    for i in range(full.windows):                                            # latents bit for bit too
        a, b = (load_file(window_path(tmp_path / d, i))["latent"] for d in ("a", "b"))
        assert torch.equal(a, b)


def test_corrupt_or_foreign_checkpoint_stops_and_deletes_nothing(embedded, tmp_path):
    _run(embedded, run_dir=tmp_path)
    first = window_path(tmp_path, 0)
    first.write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="window_00000.safetensors.*cannot be read"):
        _run(embedded, run_dir=tmp_path)
    assert first.exists() and window_path(tmp_path, 1).exists()
    _run(embedded, run_dir=tmp_path / "c")
    with pytest.raises(CheckpointError, match="other settings"):
        _run(embedded, run_dir=tmp_path / "c", seed=6)


def test_frames_stream_out_window_by_window(embedded):
    got = []
    clip = _run(embedded, on_frames=got.append)
    assert clip.frames is None and len(got) == clip.windows
    assert got[0].shape[0] == 17 and all(g.shape[1:] == (64, 64, 3) for g in got)
    assert sum(g.shape[0] for g in got) == clip.frame_count == 1 + 4 * (latent_length(parse_storyboard(SB), 8) - 1)


@pytest.mark.parametrize("kw, match", [(dict(fps=0), "fps"), (dict(anchor=2.0), "anchor"), (dict(overlap=5), "overlap")])
def test_bad_settings_are_refused_before_sampling(embedded, kw, match):
    with pytest.raises(StoryboardError, match=match):
        _run(embedded, **kw)


# --- tiny random Wan layouts --------------------------------------------------------------------
@pytest.mark.parametrize("family", ["t2v", "ti2v"])
def test_wan_layouts_keep_the_joint_latents(family):
    """Wan 2.1 T2V (known frames re-noised each step) and Wan 2.2 TI2V (clean, timestep 0): in a
    one-latent-timeline run each window's output equals the known latents at its start."""
    torch.manual_seed(0)
    z = 4
    dit = WanDiT(dit_tiny(in_dim=z, out_dim=z, model_type=family, text_dim=16, text_len=8)).eval()
    vae = WanVAE(VAEConfig(version="2.1", dim=8, z_dim=z, dim_mult=(1, 2, 2), num_res_blocks=1,
                           temperal_downsample=(True, True))).eval()
    outs = []
    from spacetime_video.long_video import timeline
    original = timeline.TimelineRun._sample

    def spy(self, win):
        out = original(self, win)
        outs.append((win, self.state.tail, out))
        return out
    timeline.TimelineRun._sample = spy
    try:
        clip = generate_long("3: a test", dit, vae, lambda t: torch.randn(1, 8, 16, generator=torch.Generator().manual_seed(len(t))),
                             width=32, height=32, window=9, fps=8, overlap=1, steps=2, continuity="latents",
                             anchor=0.0)
    finally:
        timeline.TimelineRun._sample = original
    assert clip.windows >= 3
    for win, tail, out in outs[1:]:
        k = win.known_end - win.start
        assert torch.allclose(out[:, :, :k], tail[:, :, -k:], atol=1e-5)


def test_segment_prompts_through_the_prompt_expander_are_seeded_and_recorded(embedded, tmp_path):
    from safetensors import safe_open

    from spacetime_video.long_video.generate import expand_segments
    segs = parse_storyboard(SB)
    once, again = expand_segments(segs, "embedded", 3), expand_segments(segs, "embedded", 3)
    assert once == again and [s.seconds for s in once] == [2.0, 2.0]
    assert all(a.prompt != b.prompt for a, b in zip(once, segs))               # rewritten into captions
    assert expand_segments(segs, None, 3) == segs
    _run(embedded, run_dir=tmp_path, expand="embedded", seed=3)
    with safe_open(str(window_path(tmp_path, 0)), framework="pt") as f:
        recorded = json.loads(f.metadata()["settings"])
    assert [p for _, p in recorded["storyboard"]] == [s.prompt for s in once]
