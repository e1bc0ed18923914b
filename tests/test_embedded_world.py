"""The embedded world: deterministic clips whose labels the analyser reads back correctly."""
from __future__ import annotations

import random

import pytest
import torch

from spacetime_video.training import analyser, world
from spacetime_video.training.train_dit import CONTINUATION_WEIGHTS, flow_loss, frame_mask, random_frame_masks
from spacetime_video.model.embedded.text_encoder import TinyTextEncoder, Tokenizer, build_vocabulary
from spacetime_video.model.embedded.vocab import COLOURS, MOTIONS, SHAPES


def test_clip_is_deterministic_and_well_formed() -> None:
    a, b = world.sample_clip(7), world.sample_clip(7)
    assert torch.equal(a.video, b.video) and a.caption == b.caption
    assert a.video.shape == (3, world.FRAMES, world.SIZE, world.SIZE)
    assert float(a.video.min()) >= -1 and float(a.video.max()) <= 1
    assert not torch.equal(a.video, world.sample_clip(8).video)


def test_heldout_triples_never_in_training() -> None:
    assert 8 <= len(world.HELD_OUT) <= 16
    for s in range(300):
        c = world.sample_clip(s)
        for o in c.objects:
            assert (o.colour, o.shape, o.motion) not in world.HELD_OUT
    # every colour, shape and motion still occurs in training triples
    train = {(c, s, m) for c in COLOURS for s in SHAPES for m in MOTIONS} - world.HELD_OUT
    assert {t[0] for t in train} == set(COLOURS) and {t[2] for t in train} == set(MOTIONS)
    held = world.sample_clip(3, split="heldout")
    assert (held.labels["colour"], held.labels["shape"], held.labels["motion"]) in world.HELD_OUT


@pytest.mark.parametrize("split", ["train", "heldout"])
def test_analyser_reads_ground_truth(split: str) -> None:
    for seed in range(25):
        clip = world.sample_clip(seed, split)
        got = analyser.analyse(clip.video)
        assert got.background == clip.background, clip.caption
        want = sorted((o.colour, o.shape, o.motion) for o in clip.objects)
        assert sorted((o.colour, o.shape, o.motion) for o in got.objects) == want, clip.caption


def test_walls_clips_move_at_training_speeds_and_then_rest_at_the_margin() -> None:
    """A walls clip's object moves its caption's way at a training clip's speed until it reaches
    the margin the training tracks keep from the edge, then stays put to the last frame."""
    moved = 0
    for seed in range(30):
        clip = world.sample_clip(seed, "walls")
        (obj,) = clip.objects
        assert obj.motion in ("left", "right", "up", "down")
        assert (obj.colour, obj.shape, obj.motion) not in world.HELD_OUT
        axis = 0 if obj.motion in ("left", "right") else 1
        toward_high = obj.motion in ("right", "down")
        margin = 1.35 * obj.size[0] + 2
        assert obj.end[axis] == pytest.approx(world.SIZE - margin if toward_high else margin)
        assert obj.end[1 - axis] == obj.start[1 - axis]
        travel = obj.end[axis] - obj.start[axis]
        assert travel * (1 if toward_high else -1) >= 0
        v = clip.video
        T = v.shape[1]
        # the frames from the one where it arrives on are all the same; those before all differ
        rest = next(t for t in range(T) if torch.equal(v[:, t], v[:, -1]))
        assert all(torch.equal(v[:, t], v[:, -1]) for t in range(rest, T))
        assert all(not torch.equal(v[:, t], v[:, t + 1]) for t in range(rest))
        assert rest / (T - 1) == pytest.approx(obj.stop, abs=1 / (T - 1))
        if rest >= 2:   # its speed is a training clip's: 30-45% of the frame over a clip
            assert 0.3 * world.SIZE - 1e-6 <= abs(travel) / obj.stop <= 0.45 * world.SIZE + 1e-6
        if abs(travel) >= 10:
            moved += 1
            got = analyser.analyse(v)
            assert [(o.colour, o.shape, o.motion) for o in got.objects] == [(obj.colour, obj.shape, obj.motion)]
    assert moved >= 10
    with pytest.raises(ValueError, match="'walls'"):
        world.sample_clip(0, "edges")


def test_continuation_clips_train_only_from_their_first_frames() -> None:
    """Samples flagged as continuations get the first one or two latent frames known (the
    timestep of those tokens is 0) and never text-to-video; unflagged samples keep every mode."""
    steps = []

    class Probe(torch.nn.Module):      # stands in for the DiT and records per-token timesteps
        config = type("Cfg", (), {"patch_size": (1, 2, 2)})

        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(()))

        def forward(self, x, t, context):
            steps.append(t)
            return x * self.w

    B, T = 64, 5
    x0 = torch.randn(B, 8, T, 4, 4)
    flags = torch.arange(B) < B // 2
    flow_loss(Probe(), TinyTextEncoder(), x0, ["a red ball"] * B, torch.Generator().manual_seed(0),
              continuation=flags)
    known = (steps[-1].view(B, T, 4) == 0).all(-1)       # (B, T): tokens at timestep 0
    firsts = known[flags]
    assert set(map(tuple, firsts.int().tolist())) == {(1, 0, 0, 0, 0), (1, 1, 0, 0, 0)}
    assert set(CONTINUATION_WEIGHTS) == {"i2v", "extend"}
    others = known[~flags]
    assert bool((~others[:, 0]).any()) and bool(others[:, -1].any())   # text-to-video and known ends


def _soften(video: torch.Tensor, sigma: float) -> torch.Tensor:
    """What a decoder does to a clip [3, T, H, W]: a Gaussian blur of `sigma` pixels, and each
    frame averaged with the one before (a moving edge smeared by its per-frame step)."""
    k = torch.exp(-torch.arange(-3, 4.0) ** 2 / (2 * sigma ** 2))
    k = k / k.sum()
    C, T, H, W = video.shape
    x = video.transpose(0, 1).reshape(T * C, 1, H, W)
    x = torch.nn.functional.pad(x, (3, 3, 3, 3), mode="replicate")
    x = torch.nn.functional.conv2d(torch.nn.functional.conv2d(x, k.view(1, 1, 1, 7)), k.view(1, 1, 7, 1))
    x = x.reshape(T, C, H, W).transpose(0, 1)
    return torch.cat([x[:, :1], (x[:, 1:] + x[:, :-1]) / 2], dim=1)


@pytest.mark.parametrize("sigma", [1.0, 1.8])
def test_analyser_reads_shapes_of_soft_clips(sigma: float) -> None:
    """A blurred, motion-smeared square is still a square: every shape of 30 clips (train and
    held-out) reads the same after `_soften`. (The box-fill rule used before read 30/30 at
    sigma 1.0 but 28/30 at 1.4 and 26/30 at 1.8, 2 of the 10 squares as circles at each.)"""
    for seed in range(15):
        for split in ("train", "heldout"):
            clip = world.sample_clip(seed, split, pair_prob=0.0)
            got = analyser.analyse(_soften(clip.video, sigma))
            assert (got.colour, got.shape) == (clip.labels["colour"], clip.labels["shape"]), (clip.caption, got)


def test_analyser_every_motion_and_shape_and_layout() -> None:
    for i, motion in enumerate(MOTIONS):
        for j, shape in enumerate(SHAPES):
            clip = world.sample_clip(100 + 3 * i + j, combo=("red", shape, motion), pair_prob=0.0)
            frames = (clip.video.permute(1, 2, 3, 0) + 1) / 2        # ComfyUI [T, H, W, 3] 0..1
            got = analyser.analyse(frames)
            assert (got.colour, got.shape, got.motion) == ("red", shape, motion)


def test_analyser_rejects_bad_layout_and_sees_a_jump() -> None:
    with pytest.raises(ValueError, match="expected"):
        analyser.analyse(torch.zeros(5, 4, 4))
    clip = world.sample_clip(0, combo=("blue", "circle", "right"))
    smooth = analyser.analyse(clip.video).objects[0].max_step
    jumped = torch.cat([clip.video[:, :9], clip.video[:, :8]], dim=1)  # back to the start mid-clip
    assert analyser.analyse(jumped).objects[0].max_step > 3 * smooth


def test_describe_rewords_but_keeps_meaning() -> None:
    clip = world.sample_clip(11)
    words = {world.describe(clip.objects, clip.background, random.Random(i)) for i in range(20)}
    assert len(words) > 3


def test_tokenizer_and_text_encoder() -> None:
    tok = Tokenizer(max_len=8)
    ids, mask = tok(["A red ball rolls LEFT, on navy!", "", "zebra"])
    vocab = build_vocabulary()
    assert vocab[int(ids[0, 1])] == "a" and vocab[int(ids[0, 2])] == "red"
    assert mask.sum(1).tolist() == [8, 1, 2] and vocab[int(ids[2, 1])] == "<unk>"
    enc = TinyTextEncoder()
    out = enc.encode(["a red ball", ""]).detach()
    assert out.shape == (2, enc.config.max_len, enc.config.text_dim)
    assert float(out[1, 1:].abs().sum()) == 0 and float(out[1, 0].abs().sum()) > 0


def test_known_frame_modes() -> None:
    assert frame_mask("connect", 5).tolist() == [True, False, False, False, True]
    assert frame_mask("extend", 5).tolist() == [True, True, False, False, False]
    with pytest.raises(ValueError, match="valid modes"):
        frame_mask("sideways", 5)
    m = random_frame_masks(64, 5, torch.Generator().manual_seed(0))
    assert m.shape == (64, 5) and bool((~m).any(1).all())


def test_text_encoder_file_with_foreign_metadata_loads(tmp_path) -> None:
    """Metadata values that are not JSON (e.g. {"format": "pt"}) are kept as text, not an error."""
    from safetensors.torch import save_file
    from spacetime_video.model.embedded import load_text_encoder
    enc = TinyTextEncoder()
    path = tmp_path / "text.safetensors"
    save_file({k: v.contiguous() for k, v in enc.state_dict().items()}, str(path), metadata={"format": "pt"})
    loaded = load_text_encoder(path)
    assert torch.equal(loaded.encode(["a red ball"]), enc.eval().encode(["a red ball"]))


def test_validation_prompts_are_the_held_out_combinations_on_other_seeds() -> None:
    from spacetime_video.training.evaluate import heldout_prompts, validation_prompts
    held, val = heldout_prompts(), validation_prompts()
    assert len(held) == 22 and len(val) == 44
    assert {c for _, _, c in val} == {c for _, _, c in held}
    assert not {(t, s) for t, s, _ in val} & {(t, s) for t, s, _ in held}
