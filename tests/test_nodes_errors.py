"""Bad inputs on a real host: a validation error (400) or an execution error that names the node
and the input, and the server keeps working; interrupt stops sampling within a step."""
from __future__ import annotations

import json
import time

import pytest

from nodes_helpers import CLIP_A, IMAGE_IN, error_message, queue, run, saved_files, wait, write_inputs, write_tiny_models

pytestmark = pytest.mark.host


@pytest.fixture(scope="module")
def tiny(host):
    names = write_tiny_models(host.base_dir)
    write_inputs(host.base_dir)
    return names


def graph(t, width=32, height=32, length=5, mode="snap", steps=2, dit=None):
    return {
        "1": {"class_type": "SpacetimeDiTLoader", "inputs": {"dit_name": dit or t["dit"], "weight_dtype": "default",
              "compute_dtype": "fp32", "attention": "auto", "shift": 2.0, "low_noise_dit_name": "none"}},
        "2": {"class_type": "SpacetimeVAELoader", "inputs": {"vae_name": t["vae"], "dtype": "fp32"}},
        "3": {"class_type": "SpacetimeTextEncoderLoader", "inputs": {"text_encoder_name": t["text"]}},
        "4": {"class_type": "SpacetimeTextEncode", "inputs": {"text_encoder": ["3", 0], "text": "a red circle"}},
        "5": {"class_type": "SpacetimeTextEncode", "inputs": {"text_encoder": ["3", 0], "text": ""}},
        "6": {"class_type": "SpacetimeCanvas", "inputs": {"vae": ["2", 0], "model": ["1", 0], "width": width,
              "height": height, "length": length, "invalid_size": mode}},
        "7": {"class_type": "SpacetimeSampler", "inputs": {"model": ["1", 0], "positive": ["4", 0], "negative": ["5", 0],
              "latent": ["6", 0], "seed": 1, "steps": steps, "cfg": 2.0, "solver": "euler", "shift": 2.0, "denoise": 1.0}},
        "8": {"class_type": "SpacetimeVAEDecode", "inputs": {"samples": ["7", 0], "vae": ["2", 0], "tile": 0}},
        "9": {"class_type": "SpacetimeSaveVideo", "inputs": {"images": ["8", 0], "fps": 8.0,
              "filename_prefix": "tests/err", "format": "mp4"}},
    }


def refused(host, g, node: str, *words: str) -> None:
    status, body = queue(host, g)
    assert status == 400, body
    text = json.dumps(body["node_errors"][node])
    for w in words:
        assert w in text, (w, text)


def failed(host, g, node_type: str, *words: str) -> None:
    h = run(host, g)
    msg = error_message(h)
    assert msg and msg.startswith(node_type), msg
    for w in words:
        assert w in msg, (w, msg)


def place(g, images, **kw):
    g["20"] = {"class_type": "SpacetimePlaceFrames", "inputs": {"latent": ["6", 0], "vae": ["2", 0], "images": images,
               "position": "start", "frame": 0, "use": "all", "count": 1, **kw}}
    g["7"]["inputs"]["latent"] = ["20", 0]
    return g


def clip(g, frames=17):
    g["21"] = {"class_type": "SpacetimeLoadVideo", "inputs": {"video": CLIP_A, "start_frame": 0, "frame_count": frames,
               "stride": 1, "width": 32, "height": 32}}
    return ["21", 0]


def test_validation_errors_name_node_and_input(host, tiny):
    refused(host, graph(tiny, dit="missing.safetensors"), "1", "SpacetimeDiTLoader", "dit_name", "missing.safetensors")
    secret = host.base_dir / "secret.safetensors"
    secret.write_bytes((host.base_dir / "models" / "diffusion_models" / tiny["dit"]).read_bytes())
    refused(host, graph(tiny, dit="../../secret.safetensors"), "1", "dit_name", "not a file in")
    refused(host, graph(tiny, dit=str(secret)), "1", "dit_name")


def test_execution_errors_name_node_and_input(host, tiny):
    # valid sizes depend on the VAE and the model, which only the running node knows
    failed(host, graph(tiny, length=6, mode="error"), "SpacetimeCanvas", "length 6", "5 or 9")
    failed(host, graph(tiny, width=40, mode="error"), "SpacetimeCanvas", "width 40", "32 or 48")
    failed(host, graph(tiny, dit=tiny["dit22"]), "SpacetimeCanvas", "input 'vae'", "48")
    g = graph(tiny, dit=tiny["dit22"])
    g["6"] = {"class_type": "SpacetimeVAEEncode", "inputs": {"images": clip(g), "vae": ["2", 0], "tile": 0}}
    failed(host, g, "SpacetimeSampler", "input 'latent'", "48")               # a 2.1 latent into a 2.2 model
    g = graph(tiny)
    g["22"] = {"class_type": "LoadImage", "inputs": {"image": IMAGE_IN}}    # 64x64 onto a 32x32 canvas
    failed(host, place(g, ["22", 0]), "SpacetimePlaceFrames", "input 'images'", "64x64", "32x32")
    g = graph(tiny, length=17)
    failed(host, place(g, clip(g), use="first", count=30), "SpacetimePlaceFrames", "input 'images'", "1..17")
    g = graph(tiny, length=17)
    failed(host, place(g, clip(g, 1), position="frame", frame=40), "SpacetimePlaceFrames", "input 'frame'", "0..16")
    h = run(host, graph(tiny))                                                 # and the server still works
    assert error_message(h) is None and len(saved_files(h)) == 1


def test_interrupt_stops_sampling_within_a_step(host, tiny):
    g = graph(tiny, width=64, height=64, length=17, steps=400)
    g["7"]["inputs"]["seed"] = 1234  # not cached
    status, body = queue(host, g)
    assert status == 200, body
    t0 = time.monotonic()
    while "SpacetimeSampler: 400 steps" not in host.log_text() and time.monotonic() - t0 < 60:
        time.sleep(0.1)
    time.sleep(1.0)  # inside the step loop
    t_int = time.monotonic()
    host.client.interrupt()
    h = wait(host, body["prompt_id"], timeout=120)
    stopped = time.monotonic() - t_int
    kinds = [m[0] for m in h["status"]["messages"]]
    assert "execution_interrupted" in kinds, kinds
    assert stopped < 10.0, stopped
    h = run(host, graph(tiny))
    assert error_message(h) is None
