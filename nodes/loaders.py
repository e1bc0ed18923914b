"""Loaders: a Wan DiT from models/diffusion_models (as a ComfyUI MODEL) and a Wan VAE from
models/vae (as a ComfyUI VAE). Files are picked from ComfyUI's model folders only."""
from __future__ import annotations

import os

import comfy.model_management as mm
import folder_paths
import torch
from comfy_api.latest import io

from ..model.dit import load_dit
from ..model.dit.attention import BACKENDS
from ..model.vae import load_vae
from .comfy_model import wrap_dit
from .comfy_vae import wrap_vae
from .errors import blamed_on, node_error
from .validation import NONE, SpacetimeNode
from .files import file_inside

DTYPES = {"default": None, "bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32,
          "fp8_e4m3fn": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2}
COMPUTE = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def model_file(folder: str, name: str) -> str | None:
    """The path of ``name`` inside one of ComfyUI's ``folder`` model directories, or None when
    it is missing or points outside them (nothing is opened)."""
    return file_inside(folder_paths.get_folder_paths(folder), name)


def pick_compute_dtype(name: str) -> torch.dtype:
    if name != "auto":
        return COMPUTE[name]
    device = mm.get_torch_device()
    return torch.bfloat16 if mm.should_use_bf16(device) else torch.float16 if mm.should_use_fp16(device) else torch.float32


class SpacetimeDiTLoader(SpacetimeNode):
    FOLDERS = {"dit_name": "diffusion_models", "low_noise_dit_name": "diffusion_models"}

    @classmethod
    def define_schema(cls) -> io.Schema:
        files = folder_paths.get_filename_list("diffusion_models")
        return io.Schema(
            node_id="SpacetimeDiTLoader",
            display_name="Load Wan DiT (Spacetime)",
            category="Spacetime/loaders",
            description="A Wan 2.1 / 2.2 diffusion transformer (any variant, official, ComfyUI or "
                        "diffusers layout) from models/diffusion_models, as a ComfyUI MODEL.",
            inputs=[
                io.Combo.Input("dit_name", options=files, tooltip="a Wan DiT in models/diffusion_models (safetensors, any layout)"),
                io.Combo.Input("weight_dtype", options=list(DTYPES), default="default",
                               tooltip="storage precision; fp8 halves memory (weights widened per layer)"),
                io.Combo.Input("compute_dtype", options=["auto", *COMPUTE], default="auto",
                               tooltip="the precision the DiT computes in; auto = what ComfyUI picks for the device "
                                       "(bf16, fp16 or fp32)"),
                io.Combo.Input("attention", options=list(BACKENDS), default="auto",
                               tooltip="attention kernel; auto = flash-attn or SageAttention on CUDA when installed, else SDPA "
                                       "(chunked math attention on CPU)"),
                io.Float.Input("shift", default=5.0, min=0.1, max=100.0, step=0.1,
                               tooltip="flow shift used by native samplers (Wan: 5; 2.2 A14B T2V: 12)"),
                io.Combo.Input("low_noise_dit_name", options=[NONE, *files], default=NONE, optional=True,
                               tooltip="Wan 2.2 A14B: the low-noise expert (the first file is the high-noise one)"),
            ],
            outputs=[io.Model.Output("model", display_name="model"),
                     io.Model.Output("low_noise_model", display_name="low_noise_model")],
        )

    @classmethod
    def _load(cls, input_name: str, name: str, weight_dtype, cdt, attention, shift):
        path = model_file("diffusion_models", name)
        if path is None:
            raise node_error(cls, input_name, f"{name!r} is not in models/diffusion_models")
        with blamed_on(cls, input_name):
            dit = load_dit(path, dtype=DTYPES[weight_dtype], compute_dtype=cdt, attention=attention)
        return wrap_dit(dit, shift=shift, name=os.path.basename(path))

    @classmethod
    def execute(cls, dit_name, weight_dtype, compute_dtype, attention, shift,
                low_noise_dit_name=NONE) -> io.NodeOutput:
        cdt = pick_compute_dtype(compute_dtype)
        high = cls._load("dit_name", dit_name, weight_dtype, cdt, attention, shift)
        low = None
        if low_noise_dit_name != NONE:
            low = cls._load("low_noise_dit_name", low_noise_dit_name, weight_dtype, cdt, attention, shift)
        return io.NodeOutput(high, low)


class SpacetimeVAELoader(SpacetimeNode):
    FOLDERS = {"vae_name": "vae"}

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SpacetimeVAELoader",
            display_name="Load Wan VAE (Spacetime)",
            category="Spacetime/loaders",
            description="A Wan 2.1 / 2.2 video VAE from models/vae as a ComfyUI VAE (streams "
                        "frames chunk by chunk; native VAE nodes accept it too).",
            inputs=[
                io.Combo.Input("vae_name", options=folder_paths.get_filename_list("vae"),
                               tooltip="a Wan 2.1 or 2.2 VAE in models/vae"),
                io.Combo.Input("dtype", options=["auto", *COMPUTE], default="auto",
                               tooltip="the VAE's precision; auto = what ComfyUI picks for the VAE's device"),
            ],
            outputs=[io.Vae.Output()],
        )

    @classmethod
    def execute(cls, vae_name, dtype) -> io.NodeOutput:
        path = model_file("vae", vae_name)
        if path is None:
            raise node_error(cls, "vae_name", f"{vae_name!r} is not in models/vae")
        if dtype == "auto":
            dt = mm.vae_dtype(mm.vae_device(), [torch.bfloat16, torch.float16, torch.float32])
        else:
            dt = COMPUTE[dtype]
        with blamed_on(cls, "vae_name"):
            vae = load_vae(path, dtype=dt)
        return io.NodeOutput(wrap_vae(vae))


NODES = [SpacetimeDiTLoader, SpacetimeVAELoader]
