"""Parallel DiT (Spacetime): a MODEL patch that runs the pack's Wan DiT sequence parallel over
several local devices, with any sampler.

The maths and the workers are the library's (``model/parallel``): ComfyUI's process is rank 0
and ``device_count - 1`` worker processes hold copies of the DiT. They start on the first call,
stay alive across queue runs, and receive the host's weights again when a LoRA changes them. A
``DIFFUSION_MODEL`` wrapper hands each DiT call to the pool, so native KSampler and our
samplers drive it alike. A worker that dies makes the run fail with a node error naming its
rank; the next run starts the workers afresh.
"""
from __future__ import annotations

import atexit
import logging
import os

import comfy.model_management as mm
import comfy.patcher_extension as pe
import torch
from comfy_api.latest import io

from ..model.parallel import DEFAULT_TIMEOUT_S, ParallelError
from ..model.parallel.pool import WorkerPool
from .comfy_model import spacetime_dit
from .errors import node_error
from .validation import SpacetimeNode

log = logging.getLogger("spacetime.nodes")
KEY = "spacetime_parallel"          # transformer_options entry: (device_count, cfg_parallel, timeout)
MAX_DEVICES = 64
_pools: dict[tuple, WorkerPool] = {}   # the live pool (torch.distributed allows one group per process)


def devices_for(count: int) -> list[str]:
    """One device per rank: the GPUs from cuda:0 when ComfyUI runs on CUDA, else the CPU."""
    if mm.get_torch_device().type == "cuda":
        have = torch.cuda.device_count()
        if count > have:
            raise ValueError(f"{count} devices asked for, but this machine has {have} CUDA device(s): "
                             f"use at most {have}")
        return [f"cuda:{i}" for i in range(count)]
    cores = os.cpu_count() or 1
    if count > cores:
        raise ValueError(f"{count} CPU processes asked for, but this machine has {cores} core(s): use at most {cores}")
    return ["cpu"] * count


def pool_for(dit, count: int, cfg: int, timeout: float) -> WorkerPool:
    key = (id(dit), count, cfg, timeout)
    if key not in _pools:
        close_pools()
        _pools[key] = WorkerPool(dit, count, cfg, timeout, devices_for(count))
    return _pools[key]


@atexit.register
def close_pools() -> None:
    for pool in _pools.values():
        pool.close()
    _pools.clear()


def _diffusion_model(executor, *args, **kwargs):
    options = args[-1] if isinstance(args[-1], dict) else kwargs.get("transformer_options", {})
    count, cfg, timeout = options[KEY]
    dit = executor.class_obj
    if options.get("patches_replace", {}).get("dit") or "optimized_attention_override" in options:
        raise ParallelError("SpacetimeParallelDiT: input 'model': block replacements and attention overrides run on "
                            "the host only, not on the workers; apply them without the Parallel DiT")
    if any(getattr(m, "weight_function", None) or getattr(m, "comfy_cast_weights", False) for m in dit.modules()):
        raise ParallelError("SpacetimeParallelDiT: input 'model': the model is loaded partially (low VRAM); the "
                            "workers need whole weights: free memory or use fewer devices")
    dit.sequence_parallel = pool_for(dit, count, cfg, timeout).running()
    try:
        return executor(*args, **kwargs)
    finally:
        dit.sequence_parallel = None


def patch_model(model, device_count: int, cfg_parallel: bool, timeout: float):
    """A clone of ``model`` whose DiT calls run on ``device_count`` ranks (1: unchanged)."""
    m = model.clone()
    m.remove_wrappers_with_key(pe.WrappersMP.DIFFUSION_MODEL, KEY)
    m.model_options.setdefault("transformer_options", {}).pop(KEY, None)
    if device_count > 1:
        m.model_options["transformer_options"][KEY] = (device_count, 2 if cfg_parallel else 1, float(timeout))
        m.add_wrapper_with_key(pe.WrappersMP.DIFFUSION_MODEL, KEY, _diffusion_model)
    return m


class SpacetimeParallelDiT(SpacetimeNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SpacetimeParallelDiT",
            display_name="Parallel DiT (Spacetime)",
            category="Spacetime/model",
            description="Runs the Spacetime Wan DiT on several local GPUs (or CPU processes) at once: each "
                        "takes a share of the video's tokens (sequence parallel). Workers start on the first "
                        "run and stay alive; any sampler drives them. Same result as one device.",
            inputs=[
                io.Model.Input("model", tooltip="a Spacetime DiT MODEL (Load Model (Spacetime))"),
                io.Int.Input("device_count", default=2, min=1, max=MAX_DEVICES,
                             tooltip="ranks: GPUs cuda:0.. when ComfyUI runs on CUDA, else CPU processes; 1 = off"),
                io.Boolean.Input("cfg_parallel", default=False,
                                 tooltip="the positive and negative passes of CFG on two halves of the devices "
                                         "(device_count must be even)"),
                io.Float.Input("timeout", default=DEFAULT_TIMEOUT_S, min=5.0, max=3600.0, step=1.0,
                               tooltip="seconds any exchange between devices may take before the run fails"),
            ],
            outputs=[io.Model.Output()],
        )

    @classmethod
    def execute(cls, model, device_count: int, cfg_parallel: bool = False,
                timeout: float = DEFAULT_TIMEOUT_S) -> io.NodeOutput:
        dit = spacetime_dit(model)
        if dit is None:
            raise node_error(cls, "model", "the Parallel DiT runs the Spacetime DiT; this MODEL is another "
                                           "implementation: load it with Load Model (Spacetime)")
        if cfg_parallel and device_count % 2:
            raise node_error(cls, "cfg_parallel", f"needs an even device_count, got {device_count}")
        if device_count > 1:
            try:
                devices_for(device_count)
            except ValueError as e:
                raise node_error(cls, "device_count", str(e))
        return io.NodeOutput(patch_model(model, device_count, cfg_parallel, timeout))


NODES = [SpacetimeParallelDiT]
