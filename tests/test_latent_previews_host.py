"""Latent previews during sampling, through ComfyUI's own mechanism: a server started with
``--preview-method auto`` sends a ``b_preview`` image over its websocket after each sampling step
of the Spacetime Sampler (``latent_preview.prepare_callback`` with the MODEL's latent format:
Latent2RGB, from the embedded model's ``LATENT_RGB_FACTORS`` or Wan's own factors).

The server is this file's own: the preview method is a start-up flag of ComfyUI 0.3.75 (there
is no per-prompt switch), and the session ``host`` runs with ComfyUI's default, no previews.
"""
from __future__ import annotations

import io
import json
import struct
import time
import uuid

import pytest
import torch

from conftest import COMFY_DIR, ROOT
from nodes_helpers import error_message, saved_files, wait

pytestmark = pytest.mark.host

PREVIEW_IMAGE = 1    # ComfyUI's protocol.BinaryEventTypes: 4-byte event, 4-byte image format, the image
PREVIEW_SIZE = 256   # --preview-size: the server scales each preview to fit this square


@pytest.fixture(scope="module")
def preview_host(tmp_path_factory):
    from spacetime_video.headless.host import ComfyHost
    with ComfyHost(tmp_path_factory.mktemp("comfy-previews"), comfy_dir=COMFY_DIR,
                   extra_args=("--preview-method", "auto", "--preview-size", str(PREVIEW_SIZE))) as server:
        yield server


def _run_collecting_previews(host, graph: dict, timeout: float = 240.0) -> tuple[list[tuple[str, object]], dict]:
    """Queue ``graph`` on its own websocket; every message in order (("json", event) or
    ("preview", PIL image)) until the prompt ends, and its history entry."""
    from PIL import Image

    from spacetime_video.headless.progress import connect, receive
    client_id = "spacetime-previews-" + uuid.uuid4().hex[:6]
    ws = connect(host.url, client_id)
    try:
        status, body = host.client.post_json("/prompt", {"prompt": graph, "client_id": client_id})
        assert status == 200, body
        prompt_id, messages, t0 = body["prompt_id"], [], time.monotonic()
        while time.monotonic() - t0 < timeout:
            msg = receive(ws, 1.0)
            if isinstance(msg, bytes):
                event, image_format = struct.unpack(">II", msg[:8])
                if event == PREVIEW_IMAGE:
                    assert image_format == 1, image_format                     # JPEG
                    messages.append(("preview", Image.open(io.BytesIO(msg[8:])).convert("RGB")))
            elif msg:
                event = json.loads(msg)
                messages.append(("json", event))
                if event["type"] in ("execution_success", "execution_error") \
                        and event["data"].get("prompt_id") == prompt_id:
                    return messages, wait(host, prompt_id)
        raise TimeoutError(f"prompt {prompt_id} did not finish in {timeout}s:\n{host.log_tail()}")
    finally:
        ws.close()


def test_embedded_t2v_sends_a_latent_preview_each_step(preview_host):
    import numpy as np
    from PIL import Image

    from spacetime_video.nodes.video_file import read_video
    graph = json.loads((ROOT / "workflows" / "api" / "embedded_t2v_api.json").read_text())
    (sampler,) = [k for k, v in graph.items() if v["class_type"] == "SpacetimeSampler"]
    (canvas,) = [v["inputs"] for v in graph.values() if v["class_type"] == "SpacetimeCanvas"]
    steps = graph[sampler]["inputs"]["steps"] = 4
    messages, history = _run_collecting_previews(preview_host, graph)
    assert error_message(history) is None, error_message(history)

    # one preview per step, all while the sampler runs (after its first progress, before it is done)
    kinds = [(kind, m["type"], m["data"].get("node")) if kind == "json" else (kind,) for kind, m in messages]
    started = kinds.index(("json", "progress", sampler))
    done = kinds.index(("json", "executed", next(k for k, v in graph.items()
                                                    if v["class_type"] == "SpacetimeSaveVideo")))
    previews = [m for kind, m in messages[started:done] if kind == "preview"]
    assert len(previews) == steps == len([m for kind, m in messages if kind == "preview"])
    # Latent2RGB: a pixel per latent pixel of the first latent frame (pixels / the VAE's spatial
    # stride), scaled by the server to fit --preview-size
    from spacetime_video.model.embedded import config as emb
    stride = emb.VAE_CONFIG.stride[1]
    latent_w, latent_h = canvas["width"] // stride, canvas["height"] // stride
    scale = PREVIEW_SIZE / max(latent_w, latent_h)
    assert all(p.size == (round(latent_w * scale), round(latent_h * scale)) for p in previews), previews

    # the last preview (the sampler's final estimate) shows the colours of the clip's first frame
    (item,) = saved_files(history)
    frames, _ = read_video(preview_host.base_dir / "output" / item["subfolder"] / item["filename"])
    first = torch.nn.functional.avg_pool2d(frames[0].permute(2, 0, 1)[None].float(), stride)[0]   # (3, h, w) in 0..1
    shown = torch.from_numpy(np.array(previews[-1].resize((latent_w, latent_h), Image.BOX))).permute(2, 0, 1) / 255
    assert (shown - first).abs().mean().item() < 0.08, (shown - first).abs().mean().item()
