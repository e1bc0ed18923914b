"""Helpers for the node tests: queue a graph on the test host and wait for its outcome."""
from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import torch

IMAGE_IN, CLIP_A, CLIP_B = "spacetime_start.png", "spacetime_clip_a.mp4", "spacetime_clip_b.mp4"


def queue(host, prompt: dict, extra_data: dict | None = None) -> tuple[int, dict]:
    body = {"prompt": prompt, "client_id": "spacetime-tests-" + uuid.uuid4().hex[:6]}
    if extra_data:
        body["extra_data"] = extra_data
    return host.client.post_json("/prompt", body)


def wait(host, prompt_id: str, timeout: float = 120.0) -> dict:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        h = host.client.history(prompt_id)
        if h and h.get("status", {}).get("completed") is not None and (
                h["status"].get("completed") or h["status"].get("status_str") == "error"):
            return h
        time.sleep(0.2)
    raise TimeoutError(f"prompt {prompt_id} did not finish in {timeout}s:\n{host.log_tail()}")


def run(host, prompt: dict, extra_data: dict | None = None, timeout: float = 120.0) -> dict:
    """Queue and wait; assert the server accepted the graph; return its history entry."""
    status, body = queue(host, prompt, extra_data)
    assert status == 200, body
    return wait(host, body["prompt_id"], timeout)


PREVIEW_IMAGE = 1   # ComfyUI's protocol.BinaryEventTypes


def run_listening(host, graph: dict, timeout: float = 240.0) -> tuple[list[tuple], dict]:
    """Queue ``graph`` on a websocket of its own and keep every message until the prompt ends, in
    order: ("json", event), ("preview", PIL image) or ("text", node id, text: a node's progress
    text); with the prompt's history entry."""
    import io
    import struct

    from PIL import Image

    from spacetime_video.headless.progress import connect, progress_text, receive
    client_id = "spacetime-listen-" + uuid.uuid4().hex[:6]
    ws = connect(host.url, client_id)
    try:
        status, body = host.client.post_json("/prompt", {"prompt": graph, "client_id": client_id})
        assert status == 200, body
        prompt_id, messages, t0 = body["prompt_id"], [], time.monotonic()
        while time.monotonic() - t0 < timeout:
            msg = receive(ws, 1.0)
            if isinstance(msg, bytes):
                (event,) = struct.unpack(">I", msg[:4])
                if event == PREVIEW_IMAGE:
                    (image_format,) = struct.unpack(">I", msg[4:8])
                    assert image_format == 1, image_format                     # JPEG
                    messages.append(("preview", Image.open(io.BytesIO(msg[8:])).convert("RGB")))
                elif (text := progress_text(msg)) is not None:
                    messages.append(("text", *text))
            elif msg:
                event = json.loads(msg)
                messages.append(("json", event))
                if event["type"] in ("execution_success", "execution_error") \
                        and event["data"].get("prompt_id") == prompt_id:
                    return messages, wait(host, prompt_id)
        raise TimeoutError(f"prompt {prompt_id} did not finish in {timeout}s:\n{host.log_tail()}")
    finally:
        ws.close()


def error_message(history: dict) -> str | None:
    for kind, data in history.get("status", {}).get("messages", []):
        if kind == "execution_error":
            return f"{data.get('node_type')}: {data.get('exception_message')}"
    return None


def saved_files(history: dict) -> list[dict]:
    files = []
    for out in history.get("outputs", {}).values():
        for key in ("images", "gifs", "videos", "animated"):
            for item in out.get(key, []) or []:
                if isinstance(item, dict) and "filename" in item:
                    files.append(item)
    return files


def write_tiny_models(base: Path) -> dict[str, str]:
    from safetensors.torch import save_file

    from spacetime_video.model.dit import WanDiT
    from spacetime_video.model.dit.config import tiny_config
    from spacetime_video.model.dit.loading import config_metadata
    from spacetime_video.model.embedded.text_encoder import TextEncoderConfig, TinyTextEncoder
    from spacetime_video.model.vae import WanVAE
    from spacetime_video.model.vae.config import VAEConfig

    torch.manual_seed(0)
    for folder in ("diffusion_models", "vae", "text_encoders"):
        (base / "models" / folder).mkdir(parents=True, exist_ok=True)
    names = {"dit": "tiny_t2v.safetensors", "vae": "tiny_vae21.safetensors", "text": "tiny_text.safetensors",
             "dit22": "tiny_ti2v.safetensors", "vae22": "tiny_vae22.safetensors"}
    for key, cfg in (("dit", tiny_config(text_dim=64, text_len=24)),
                     ("dit22", tiny_config(text_dim=64, text_len=24, in_dim=48, out_dim=48, model_type="ti2v"))):
        save_file({k: v.contiguous() for k, v in WanDiT(cfg).state_dict().items()},
                  str(base / "models" / "diffusion_models" / names[key]), metadata=config_metadata(cfg))
    for key, vcfg in (("vae", VAEConfig(dim=4, z_dim=16, num_res_blocks=1)),
                      ("vae22", VAEConfig(version="2.2", dim=4, z_dim=48, num_res_blocks=1))):
        save_file({k: v.contiguous() for k, v in WanVAE(vcfg).state_dict().items()},
                  str(base / "models" / "vae" / names[key]))
    tcfg = TextEncoderConfig(vocab_size=128, max_len=24, dim=32, heads=2, layers=1, text_dim=64)
    save_file({k: v.contiguous() for k, v in TinyTextEncoder(tcfg).state_dict().items()},
              str(base / "models" / "text_encoders" / names["text"]),
              metadata={"spacetime_text_config": json.dumps(tcfg.__dict__)})
    # a rank-2 LoRA (lightx2v / ComfyUI key names) on the tiny T2V DiT's first attention
    (base / "models" / "loras").mkdir(parents=True, exist_ok=True)
    names["lora"] = "tiny_lora.safetensors"
    dim = tiny_config().dim
    save_file({"diffusion_model.blocks.0.self_attn.q.lora_up.weight": 0.1 * torch.randn(dim, 2),
               "diffusion_model.blocks.0.self_attn.q.lora_down.weight": 0.1 * torch.randn(2, dim),
               "diffusion_model.blocks.0.self_attn.q.alpha": torch.tensor(2.0)},
              str(base / "models" / "loras" / names["lora"]))
    return names


def write_inputs(base: Path) -> None:
    from PIL import Image

    from spacetime_video.nodes.video_file import write_video
    ramp = torch.linspace(0, 1, 17).view(17, 1, 1, 1)
    Image.new("RGB", (64, 64), (220, 40, 40)).save(base / "input" / IMAGE_IN)
    write_video(base / "input" / CLIP_A, (ramp * torch.tensor([1.0, 0.2, 0.2])).expand(17, 64, 64, 3), 8.0)
    write_video(base / "input" / CLIP_B, (ramp * torch.tensor([0.2, 0.2, 1.0])).expand(17, 64, 64, 3), 8.0)
