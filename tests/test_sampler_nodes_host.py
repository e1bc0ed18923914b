"""Host integration: SpacetimeScheduler + SpacetimeSolver drive ComfyUI's SamplerCustomAdvanced on a
real (tiny, random) Wan model loaded by the native UNETLoader, in a real ComfyUI server.

The server is this file's own (not the session ``host``): its base directory must hold, before
start-up, the tiny checkpoint and a test-only node that makes a random CONDITIONING (ComfyUI has
no native node that yields one without a text encoder).
"""
from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save_file

from conftest import COMFY_DIR
from spacetime_video.samplers import SOLVERS, SPACINGS

pytestmark = pytest.mark.host

CKPT = "spacetime_test_tiny_wan.safetensors"
COND_NODE = '''
import torch


class TestOnlyRandomConditioning:
    """Test-only: a random umT5-sized CONDITIONING [1, tokens, 4096], no text encoder needed."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"seed": ("INT", {"default": 0}), "tokens": ("INT", {"default": 8})}}

    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "make"
    CATEGORY = "testing"

    def make(self, seed, tokens):
        g = torch.Generator().manual_seed(seed)
        return ([[torch.randn(1, tokens, 4096, generator=g), {}]],)


NODE_CLASS_MAPPINGS = {"TestOnlyRandomConditioning": TestOnlyRandomConditioning}
'''


def write_tiny_wan(comfy, path: Path) -> None:
    """A 2-block Wan 2.1 T2V DiT (dim 128 = 1 head of 128, text_dim 4096) in the official key
    layout, with random weights; ComfyUI's detector reads the config from the shapes."""
    import comfy.ldm.wan.model
    import comfy.ops

    shapes = comfy.ldm.wan.model.WanModel(dim=128, ffn_dim=256, num_heads=1, num_layers=2,
                                          operations=comfy.ops.disable_weight_init).state_dict()
    g = torch.Generator().manual_seed(0)
    sd = {}
    for k, v in shapes.items():
        w = torch.randn(v.shape, generator=g) * 0.05
        sd[k] = w + 1.0 if k.endswith(("norm_q.weight", "norm_k.weight", "norm3.weight")) else w
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(path))


@pytest.fixture(scope="module")
def sampler_host(tmp_path_factory, comfy):
    from spacetime_video.headless.host import ComfyHost

    base = tmp_path_factory.mktemp("sampler-host")
    write_tiny_wan(comfy, base / "models" / "diffusion_models" / CKPT)
    node_dir = base / "custom_nodes" / "test_only_conditioning"
    node_dir.mkdir(parents=True)
    (node_dir / "__init__.py").write_text(COND_NODE)
    with ComfyHost(base, comfy_dir=COMFY_DIR) as server:
        yield server


def _graph() -> tuple[dict, dict[str, str]]:
    """One prompt: a tiny Wan, CFG guider, our schedule, and one SamplerCustomAdvanced per solver
    (ours, plus ComfyUI's native Euler on our SIGMAS), each saved with SaveLatent."""
    g = {
        "unet": {"class_type": "UNETLoader", "inputs": {"unet_name": CKPT, "weight_dtype": "default"}},
        "pos": {"class_type": "TestOnlyRandomConditioning", "inputs": {"seed": 1, "tokens": 8}},
        "neg": {"class_type": "TestOnlyRandomConditioning", "inputs": {"seed": 2, "tokens": 8}},
        "guider": {"class_type": "CFGGuider", "inputs": {"model": ["unet", 0], "positive": ["pos", 0],
                                                         "negative": ["neg", 0], "cfg": 3.0}},
        "noise": {"class_type": "RandomNoise", "inputs": {"noise_seed": 42}},
        "latent": {"class_type": "EmptyHunyuanLatentVideo",
                   "inputs": {"width": 32, "height": 32, "length": 5, "batch_size": 1}},
        "sigmas": {"class_type": "SpacetimeScheduler",
                   "inputs": {"steps": 4, "shift": 5.0, "spacing": "wan", "denoise": 1.0}},
        "native_euler": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}},
    }
    saves = {}
    for name in [*SOLVERS, "native_euler"]:
        if name != "native_euler":
            g[f"solver_{name}"] = {"class_type": "SpacetimeSolver", "inputs": {"solver": name, "order": 2}}
        sampler = [name if name == "native_euler" else f"solver_{name}", 0]
        g[f"run_{name}"] = {"class_type": "SamplerCustomAdvanced",
                            "inputs": {"noise": ["noise", 0], "guider": ["guider", 0], "sampler": sampler,
                                       "sigmas": ["sigmas", 0], "latent_image": ["latent", 0]}}
        g[f"save_{name}"] = {"class_type": "SaveLatent",
                             "inputs": {"samples": [f"run_{name}", 0], "filename_prefix": f"spacetime_test/{name}"}}
        saves[name] = f"save_{name}"
    return g, saves


def _wait(client, prompt_id: str, timeout: float = 90.0) -> dict:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        entry = client.history(prompt_id)
        if entry and entry.get("status", {}).get("completed") is not None:
            return entry
        if entry and entry.get("status", {}).get("status_str") == "error":
            return entry
        time.sleep(0.25)
    raise TimeoutError(f"prompt {prompt_id} did not finish in {timeout:.0f}s")


def test_nodes_are_listed(sampler_host):
    info = sampler_host.client.object_info()
    for node_id in ("SpacetimeScheduler", "SpacetimeSolver"):
        assert node_id in info, sampler_host.log_tail()
    sched = info["SpacetimeScheduler"]
    assert sched["output"] == ["SIGMAS"]
    spacing = sched["input"]["required"]["spacing"][1]
    assert spacing["options"] == list(SPACINGS) and spacing["default"] == "wan"
    assert info["SpacetimeSolver"]["output"] == ["SAMPLER"]


def test_sampler_custom_advanced_runs_our_sigmas_and_solvers_on_a_real_wan(sampler_host):
    client = sampler_host.client
    graph, saves = _graph()
    status, body = client.queue(graph)
    assert status == 200, body
    entry = _wait(client, body["prompt_id"])
    assert entry["status"]["status_str"] == "success", (entry["status"], sampler_host.log_tail())
    log = sampler_host.log_text()
    assert "model_type FLOW" in log and "WAN21" in log  # loaded as ComfyUI's native Wan 2.1
    latents = {}
    for name, node in saves.items():
        files = entry["outputs"][node]["latents"]
        assert len(files) == 1
        raw = client.download(files[0]["filename"], files[0]["subfolder"], files[0]["type"])
        latents[name] = load_safetensors(raw)["latent_tensor"].float()
        assert latents[name].shape == (1, 16, 2, 4, 4) and torch.isfinite(latents[name]).all(), name
        assert float(latents[name].abs().max()) > 0, name
    # our Euler and ComfyUI's native Euler, same model/noise/sigmas: the same ODE integrator
    torch.testing.assert_close(latents["euler"], latents["native_euler"], rtol=1e-4, atol=1e-4)
    # the solvers are really different functions
    assert not torch.allclose(latents["unipc"], latents["euler"], atol=1e-6)
    assert not torch.allclose(latents["lcm"], latents["euler"], atol=1e-6)
