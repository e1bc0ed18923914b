"""Video files: MP4/WebM/GIF with metadata, reading ranges, and the two video nodes on a host."""
from __future__ import annotations

import shutil

import pytest
import torch

from spacetime_video.nodes import video_file
from nodes_helpers import error_message, queue, run, saved_files


def _ramp(n=9, h=16, w=24) -> torch.Tensor:
    """Frames whose brightness encodes the frame index: [N, H, W, 3]."""
    return torch.linspace(0.05, 0.95, n).view(n, 1, 1, 1).expand(n, h, w, 3).contiguous()


@pytest.mark.parametrize("fmt", ["mp4", "webm", "gif"])
def test_write_read_roundtrip_with_metadata(tmp_path, fmt):
    path = video_file.write_video(tmp_path / f"v.{fmt}", _ramp(), 8.0,
                                  {"prompt": {"3": {"inputs": {"seed": 7}}}, "note": "hi"})
    meta = video_file.read_metadata(path)
    assert meta["prompt"] == {"3": {"inputs": {"seed": 7}}} and meta["note"] == "hi"
    frames, fps = video_file.read_video(path)
    assert frames.shape == (9, 16, 24, 3) and fps == pytest.approx(8.0, rel=0.05)
    means = frames.mean(dim=(1, 2, 3))
    assert torch.all(means[1:] > means[:-1])  # the ramp survives compression in order


def test_read_range_stride_resize(tmp_path):
    path = video_file.write_video(tmp_path / "v.mp4", _ramp(), 8.0)
    frames, fps = video_file.read_video(path, start=2, count=3, stride=2, size=(12, 8))
    assert frames.shape == (3, 8, 12, 3) and fps == pytest.approx(4.0, rel=0.05)
    full, _ = video_file.read_video(path)
    assert torch.allclose(frames.mean(dim=(1, 2, 3)), full[[2, 4, 6]].mean(dim=(1, 2, 3)), atol=0.02)
    with pytest.raises(ValueError, match="shorter"):
        video_file.read_video(path, start=50)


def test_odd_sizes_are_padded_for_h264(tmp_path):
    path = video_file.write_video(tmp_path / "odd.mp4", _ramp(3, 15, 17), 8.0)
    frames, _ = video_file.read_video(path)
    assert frames.shape == (3, 16, 18, 3)


@pytest.mark.host
def test_save_gif_and_load_back_through_the_host(host):
    graph = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 32, "height": 16, "batch_size": 5, "color": 255}},
        "2": {"class_type": "SpacetimeSaveVideo", "inputs": {"images": ["1", 0], "fps": 8.0, "seed": 3,
              "filename_prefix": "tests/gif", "format": "gif"}},
    }
    del graph["2"]["inputs"]["seed"]
    h = run(host, graph, extra_data={"extra_pnginfo": {"workflow": {"nodes": [], "links": []}}})
    assert error_message(h) is None
    (item,) = saved_files(h)
    path = host.base_dir / "output" / item["subfolder"] / item["filename"]
    meta = video_file.read_metadata(path)
    assert meta["prompt"]["2"]["class_type"] == "SpacetimeSaveVideo" and meta["workflow"] == {"nodes": [], "links": []}

    shutil.copy(path, host.base_dir / "input" / "clip.gif")
    load = {
        "1": {"class_type": "SpacetimeLoadVideo", "inputs": {"video": "clip.gif", "start_frame": 1,
              "frame_count": 0, "stride": 2, "width": 16, "height": 8}},
        "2": {"class_type": "SpacetimeSaveVideo", "inputs": {"video": ["1", 3], "fps": 1.0,
              "filename_prefix": "tests/again", "format": "mp4"}},
    }
    h = run(host, load)
    assert error_message(h) is None
    (item,) = saved_files(h)
    frames, _ = video_file.read_video(host.base_dir / "output" / item["subfolder"] / item["filename"])
    assert frames.shape == (2, 8, 16, 3)  # frames 1 and 3 of 5


@pytest.mark.host
def test_load_video_refuses_paths_outside_the_input_folder(host):
    secret = host.base_dir / "secret.mp4"
    video_file.write_video(secret, _ramp(3), 8.0)
    for name in ("../secret.mp4", str(secret)):
        graph = {"1": {"class_type": "SpacetimeLoadVideo", "inputs": {"video": name, "start_frame": 0,
                       "frame_count": 0, "stride": 1, "width": 0, "height": 0}},
                 "2": {"class_type": "SpacetimeSaveVideo", "inputs": {"video": ["1", 3], "fps": 8.0,
                       "filename_prefix": "tests/x", "format": "mp4"}}}
        status, body = queue(host, graph)
        assert status == 400, body
        text = str(body["node_errors"]["1"])
        assert "video" in text and ("input folder" in text or "not in list" in text.lower()), text


@pytest.mark.host
def test_video_type_interop_with_native_nodes(host):
    """Native CreateVideo -> our Save Video; our Load Video's VIDEO -> native SaveVideo."""
    graph = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 32, "height": 16, "batch_size": 5, "color": 65280}},
        "2": {"class_type": "CreateVideo", "inputs": {"images": ["1", 0], "fps": 10.0}},
        "3": {"class_type": "SpacetimeSaveVideo", "inputs": {"video": ["2", 0], "fps": 1.0,
              "filename_prefix": "tests/native_in", "format": "webm"}},
    }
    h = run(host, graph)
    assert error_message(h) is None, error_message(h)
    (item,) = saved_files(h)
    path = host.base_dir / "output" / item["subfolder"] / item["filename"]
    frames, fps = video_file.read_video(path)
    assert frames.shape == (5, 16, 32, 3) and fps == pytest.approx(10.0, rel=0.05)
    assert frames[..., 1].mean() > 0.9 and frames[..., 0].mean() < 0.1  # green survives

    shutil.copy(path, host.base_dir / "input" / "native.webm")
    graph = {
        "1": {"class_type": "SpacetimeLoadVideo", "inputs": {"video": "native.webm", "start_frame": 0,
              "frame_count": 3, "stride": 1, "width": 0, "height": 0}},
        "2": {"class_type": "SaveVideo", "inputs": {"video": ["1", 3], "filename_prefix": "tests/native_out",
              "format": "auto", "codec": "auto"}},
    }
    h = run(host, graph)
    assert error_message(h) is None, error_message(h)
    (item,) = saved_files(h)
    frames, _ = video_file.read_video(host.base_dir / "output" / item["subfolder"] / item["filename"])
    assert frames.shape == (3, 16, 32, 3)


@pytest.mark.host
def test_bad_requests_are_node_errors_and_the_server_keeps_working(host):
    """A prefix out of the output folder and a file that is not a video: each an execution
    error naming the node and the input; nothing is written; the next prompt runs."""
    frames = {"class_type": "EmptyImage", "inputs": {"width": 16, "height": 16, "batch_size": 2, "color": 0}}
    for prefix in ("../escaped", str(host.base_dir.parent / "escaped")):
        h = run(host, {"1": frames, "2": {"class_type": "SpacetimeSaveVideo", "inputs": {
            "images": ["1", 0], "fps": 8.0, "filename_prefix": prefix, "format": "mp4"}}})
        msg = error_message(h)
        assert msg and msg.startswith("SpacetimeSaveVideo") and "input 'filename_prefix'" in msg, msg
    assert not list(host.base_dir.glob("escaped*")) and not list(host.base_dir.parent.glob("escaped*"))
    (host.base_dir / "input" / "junk.mp4").write_bytes(b"not a video at all" * 64)
    h = run(host, {"1": {"class_type": "SpacetimeLoadVideo", "inputs": {"video": "junk.mp4", "start_frame": 0,
                         "frame_count": 0, "stride": 1, "width": 0, "height": 0}},
                   "2": {"class_type": "SpacetimeSaveVideo", "inputs": {"video": ["1", 3], "fps": 8.0,
                         "filename_prefix": "tests/junk", "format": "mp4"}}})
    msg = error_message(h)
    assert msg and "SpacetimeLoadVideo: input 'video': junk.mp4 is not a video" in msg, msg
    h = run(host, {"1": frames, "2": {"class_type": "SpacetimeSaveVideo", "inputs": {
        "images": ["1", 0], "fps": 8.0, "filename_prefix": "tests/after", "format": "mp4"}}})
    assert error_message(h) is None and saved_files(h)[0]["filename"] == "after_00001_.mp4"
