"""Latent previews during sampling, through ComfyUI's own mechanism: a server started with
``--preview-method auto`` sends a ``b_preview`` image over its websocket after each sampling step
of the Spacetime Sampler (``latent_preview.prepare_callback`` with the MODEL's latent format:
Latent2RGB, from the embedded model's ``LATENT_RGB_FACTORS`` or Wan's own factors).

The server is this file's own: the preview method is a start-up flag of ComfyUI 0.3.75 (there
is no per-prompt switch), and the session ``host`` runs with ComfyUI's default, no previews.
"""
from __future__ import annotations

import json

import pytest
import torch

from conftest import COMFY_DIR, ROOT
from nodes_helpers import error_message, run_listening, saved_files

pytestmark = pytest.mark.host

PREVIEW_SIZE = 256   # --preview-size: the server scales each preview to fit this square


@pytest.fixture(scope="module")
def preview_host(tmp_path_factory):
    from spacetime_video.headless.host import ComfyHost
    with ComfyHost(tmp_path_factory.mktemp("comfy-previews"), comfy_dir=COMFY_DIR,
                   extra_args=("--preview-method", "auto", "--preview-size", str(PREVIEW_SIZE))) as server:
        yield server


def test_embedded_t2v_sends_a_latent_preview_each_step(preview_host):
    import numpy as np
    from PIL import Image

    from spacetime_video.nodes.video_file import read_video
    graph = json.loads((ROOT / "workflows" / "api" / "embedded_t2v_api.json").read_text())
    (sampler,) = [k for k, v in graph.items() if v["class_type"] == "SpacetimeSampler"]
    (canvas,) = [v["inputs"] for v in graph.values() if v["class_type"] == "SpacetimeCanvas"]
    steps = graph[sampler]["inputs"]["steps"] = 4
    messages, history = run_listening(preview_host, graph)
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
