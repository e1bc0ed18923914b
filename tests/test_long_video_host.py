"""The Long Video node on a real ComfyUI host: the shipped embedded long-video workflow (storyboard
shortened, few steps) writes one MP4 with every frame, checkpoints every window, says on the node
which window and step it is on, resumes when queued again, and names the input of a bad storyboard."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from nodes_helpers import error_message, run, run_listening, saved_files

API = Path(__file__).resolve().parents[1] / "workflows" / "api"
STORYBOARD = "2: a red circle moves to the right on a black background\n" \
             "2: a red circle moves to the left on a black background"


def _graph(**inputs) -> dict:
    g = json.loads((API / "embedded_long_video_api.json").read_text())
    (nid,) = [k for k, v in g.items() if v["class_type"] == "SpacetimeLongVideo"]
    g[nid]["inputs"].update({"storyboard": STORYBOARD, "steps": 3, **inputs})
    return g


def _texts(messages: list[tuple], graph: dict) -> list[str]:
    """The Long Video node's progress texts, in order."""
    (nid,) = [k for k, v in graph.items() if v["class_type"] == "SpacetimeLongVideo"]
    return [m[2] for m in messages if m[0] == "text" and m[1] == nid]


@pytest.mark.host
def test_long_video_workflow_streams_checkpoints_and_resumes(host):
    from spacetime_video.headless.progress import connect, progress_text, receive
    from spacetime_video.nodes.video_file import read_metadata, read_video
    graph = _graph()
    other = connect(host.url, "spacetime-another-page")       # a page that did not queue the job
    try:
        messages, h = run_listening(host, graph, timeout=300)
        heard = []
        while (msg := receive(other, 0.5)) is not None:
            heard.append(msg)
    finally:
        other.close()
    assert error_message(h) is None, error_message(h)
    assert not [m for m in heard if isinstance(m, bytes) and progress_text(m) is not None]   # no progress text
    # the node says which window and step it is on, then what it wrote
    texts = _texts(messages, graph)
    steps = [f"window {w} of 3: step {i} of 3" for w in (1, 2, 3) for i in (1, 2, 3)]
    assert [t for t in texts if t.startswith("window ")] == steps, texts
    assert texts.index("1 of 3 windows done") > texts.index(steps[2])
    assert texts[-1].startswith("done: 3 windows (0 read back from checkpoints), 33 frames in "), texts
    (item,) = saved_files(h)
    path = host.base_dir / "output" / item["subfolder"] / item["filename"]
    frames, fps = read_video(path)
    assert frames.shape == (33, 64, 64, 3) and fps == pytest.approx(8.0, rel=0.05)   # 4 s at 8 fps: 1 + 4 * 8
    meta = read_metadata(path)
    assert meta["storyboard"] == STORYBOARD and meta["seed"] == 42
    run_dir = host.base_dir / "output" / meta["run_folder"]
    windows = sorted(p.name for p in run_dir.glob("window_*.safetensors"))
    assert windows == [f"window_{i:05d}.safetensors" for i in range(3)]   # 9 latent frames: 5 + 3 + 3 at overlap 2
    stamps = [(run_dir / w).stat().st_mtime_ns for w in windows]
    again_graph = _graph(filename_prefix="spacetime/long_again")                  # same settings: resumes
    messages, h2 = run_listening(host, again_graph, timeout=300)
    assert error_message(h2) is None, error_message(h2)
    texts = _texts(messages, again_graph)
    assert not [t for t in texts if t.startswith("window ")], texts                  # nothing sampled
    assert "3 of 3 windows done, 3 read back from checkpoints" in texts, texts
    (item2,) = saved_files(h2)
    again, _ = read_video(host.base_dir / "output" / item2["subfolder"] / item2["filename"])
    assert [(run_dir / w).stat().st_mtime_ns for w in windows] == stamps          # read back, not made again
    # the same latents decoded again: equal up to float rounding, which the lossy H.264 encoder
    # may turn into a few levels in some pixels of later frames
    assert again.shape == frames.shape and float((again - frames).abs().mean()) < 1 / 255


@pytest.mark.host
@pytest.mark.parametrize("inputs, words", [
    (dict(storyboard="2: fine\nno seconds on this line"), ["storyboard", "line 2"]),
    (dict(overlap=5), ["overlap", "1 to 4"]),
])
def test_long_video_bad_input_names_the_input(host, inputs, words):
    h = run(host, _graph(**inputs), timeout=120)
    message = error_message(h)
    assert message and all(w in message for w in words), message


@pytest.fixture(scope="module")
def tiny(host):
    from safetensors.torch import save_file

    from nodes_helpers import write_inputs, write_tiny_models
    from spacetime_video.model.dit import WanDiT
    from spacetime_video.model.dit.config import tiny_config
    from spacetime_video.model.dit.loading import config_metadata
    names = write_tiny_models(host.base_dir)
    write_inputs(host.base_dir)
    cfg = tiny_config(text_dim=64, text_len=24, in_dim=36, out_dim=16, model_type="i2v")
    names["dit_i2v"] = "tiny_i2v.safetensors"
    save_file({k: v.contiguous() for k, v in WanDiT(cfg).state_dict().items()},
              str(host.base_dir / "models" / "diffusion_models" / names["dit_i2v"]), metadata=config_metadata(cfg))
    return names


@pytest.mark.host
@pytest.mark.parametrize("name", ["wan21_t2v_1.3b_long_video", "wan22_ti2v_5b_long_video", "wan22_t2v_a14b_long_video",
                                  "wan21_i2v_14b_long_video"])
def test_wan_long_video_workflows_run_on_tiny_files(host, tiny, name):
    """Wan 2.1 T2V (known frames re-noised each step by ComfyUI's noise mask), Wan 2.2 TI2V (clean
    known frames at timestep 0), Wan 2.2 A14B (both experts in every window) and Wan 2.1 I2V (each
    window made from the last frame through the image channels) through the node and ComfyUI's
    sampler: windows of 9 frames at 64x64, every frame in the file."""
    from test_workflows import _with_tiny_files

    from spacetime_video.nodes.video_file import read_video
    g = _with_tiny_files(json.loads((API / f"{name}_api.json").read_text()), tiny, name.startswith("wan22_ti2v"))
    (nid,) = [k for k, v in g.items() if v["class_type"] == "SpacetimeLongVideo"]
    inputs = g[nid]["inputs"]
    inputs["text_encoder"] = inputs.pop("clip")            # the tiny text encoder stands in for umT5
    if "clip_vision" in inputs:    # the tiny I2V DiT has no CLIP-vision branch (test_long_video_clip_vision.py has one)
        g.pop(inputs.pop("clip_vision")[0])
        (loader,) = [v for v in g.values() if v["class_type"] == "SpacetimeDiTLoader"]
        loader["inputs"]["dit_name"] = tiny["dit_i2v"]
        inputs["overlap"] = 1
    inputs.update(storyboard="1: a kite moves right\n1: a kite moves left", fps=8.0, width=64, height=64, window=9,
                  steps=2)
    h = run(host, g, timeout=300)
    assert error_message(h) is None, error_message(h)
    (item,) = saved_files(h)
    frames, _ = read_video(host.base_dir / "output" / item["subfolder"] / item["filename"])
    assert frames.shape == (17, 64, 64, 3)                  # 2 s at 8 fps: 1 + 4 * 4 frames


@pytest.mark.host
def test_interrupt_keeps_finished_windows_and_the_next_run_resumes(host):
    """Interrupted after its second window: the checkpoints stay, no partial video is left, the
    server takes the next job, and queuing the graph again finishes from the third window."""
    import time

    from nodes_helpers import queue, wait

    from spacetime_video.nodes.video_file import TEMP_PREFIX, read_video
    storyboard = "\n".join(f"2: a red circle {m} on a black background" for m in
                           ("moves to the right", "moves to the left", "moves up", "moves down"))
    graph = _graph(storyboard=storyboard, steps=6, seed=7, filename_prefix="spacetime/interrupted")
    runs = host.base_dir / "output" / "spacetime_runs"
    before = set(runs.iterdir()) if runs.is_dir() else set()
    status, body = queue(host, graph)
    assert status == 200, body
    t0 = time.monotonic()
    while time.monotonic() - t0 < 240:
        new = [d for d in (runs.iterdir() if runs.is_dir() else []) if d not in before]
        if new and (new[0] / "window_00001.safetensors").exists():
            break
        time.sleep(0.1)
    host.client.interrupt()
    h = wait(host, body["prompt_id"], timeout=240)
    assert h["status"]["status_str"] == "error" and not saved_files(h)
    (run_dir,) = new
    kept = sorted(p.name for p in run_dir.glob("window_*.safetensors"))
    assert 2 <= len(kept) < 5                                       # 8 s: 5 windows of 17 frames, overlap 2
    stamps = {k: (run_dir / k).stat().st_mtime_ns for k in kept}
    out = host.base_dir / "output" / "spacetime"
    assert not list(out.glob(f"{TEMP_PREFIX}*")) and not list(out.glob("interrupted_*"))
    h2 = run(host, graph, timeout=300)
    assert error_message(h2) is None, error_message(h2)
    assert {k: (run_dir / k).stat().st_mtime_ns for k in kept} == stamps   # finished windows read back
    (item,) = saved_files(h2)
    frames, _ = read_video(host.base_dir / "output" / item["subfolder"] / item["filename"])
    assert frames.shape[0] == 65                                    # 8 s at 8 fps: 1 + 4 * 16
