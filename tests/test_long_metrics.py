"""The long-video benchmark's measures (bench/long_metrics.py) on clips drawn by the embedded
world's renderer, where the right answer is known: no model involved."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from spacetime_video.training.world import ObjectSpec, render

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import long_metrics as L  # noqa: E402

FPS = 8.0


def clip(*tracks: tuple[str, tuple[float, float], tuple[float, float], int]) -> torch.Tensor:
    """IMAGE [n, 64, 64, 3] in 0..1: a red circle along each (motion, start, end, frames) track in turn."""
    pieces = [render((ObjectSpec("red", "circle", m, a, b, (8.0, 8.0)),), "black", frames=n) for m, a, b, n in tracks]
    return ((torch.cat(pieces, dim=1).permute(1, 2, 3, 0) + 1) / 2).clamp(0, 1)


def test_a_clean_track_scores_full_marks():
    frames = clip(("right", (14.0, 32.0), (44.0, 32.0), 33), ("left", (44.0, 32.0), (14.0, 32.0), 32))
    segs = [(33 / FPS, "red", "circle", "right"), (32 / FPS, "red", "circle", "left")]
    m = L.measure(frames, segs, FPS)
    assert m["identity"] == 1.0 and m["motion"] == 1.0 and m["one_object"] == 1.0 and m["smooth"] == 1.0
    assert m["drift"] < 1.0 and m["seam_ratio"] < 1.5


def test_a_teleport_and_a_wrong_direction_are_counted():
    # the second segment asks for "left" but the object jumps back 25 px and moves right again
    frames = clip(("right", (14.0, 32.0), (44.0, 32.0), 33), ("right", (19.0, 32.0), (49.0, 32.0), 32))
    segs = [(33 / FPS, "red", "circle", "right"), (32 / FPS, "red", "circle", "left")]
    m = L.measure(frames, segs, FPS, joints=[32])
    assert m["seam_ratio_joints"] == m["seam_ratio"]            # the jump is at the joint (frame 32 to 33)
    assert L.measure(frames, segs, FPS, joints=[10, 20])["seam_ratio_joints"] < 1.5
    assert m["motion"] == 0.5
    assert m["smooth"] == pytest.approx(1 - 1 / 64)          # one of 64 frame pairs jumps
    assert m["seam_ratio"] > 5 and m["seam_ratio_late"] == m["seam_ratio"]


def test_a_jump_at_the_first_frame_counts_only_in_the_seam_ratio():
    frames = clip(("right", (14.0, 32.0), (44.0, 32.0), 33))
    frames[0] = clip(("still", (30.0, 20.0), (30.0, 20.0), 1))[0]   # the first frame elsewhere
    m = L.measure(frames, [(33 / FPS, "red", "circle", "right")], FPS)
    assert m["seam_ratio"] > 5 and m["seam_ratio_late"] < 1.5


def test_room_is_the_travel_left_before_the_track_ends():
    frames = clip(("right", (44.0, 32.0), (54.0, 32.0), 17), ("up", (54.0, 32.0), (54.0, 20.0), 16))
    segs = [(17 / FPS, "red", "circle", "right"), (16 / FPS, "red", "circle", "up")]
    rows = L.room(frames, segs, FPS)
    assert [ok for _, ok in rows] == [True, True]
    assert rows[0][0] == pytest.approx(64 - 44 - L.TRACK_MARGIN, abs=0.5)
    assert rows[1][0] == pytest.approx(32 - L.TRACK_MARGIN, abs=1.0)
    assert L.room_line(rows).startswith("segments starting with under 20 px of travel left: 2 / 2")
