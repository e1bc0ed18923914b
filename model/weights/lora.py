"""LoRA files for a plain ``WanDiT``: read the ComfyUI / lightx2v layout (also PEFT's ``lora_A`` /
``lora_B`` and diffusers' module names) and merge it into the weights, ``W += strength · (alpha /
rank) · up @ down`` — the update ComfyUI's LoraLoaderModelOnly patches in (``comfy/weight_adapter/
lora.py``), done once instead of at every load.

Refusals follow the pack's LoRA loader node (``nodes/lora_nodes.py``): a LoRA whose keys match no
weight of the model, or whose shapes do not fit it, is an error that names the file; keys that
match nothing while others apply are logged and left out.
"""
from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from .files import WeightsError, load_state_dict
from .layouts import dit_lora_official_names

log = logging.getLogger("spacetime.weights")

LORA_PREFIX = "diffusion_model."          # ComfyUI / lightx2v: diffusion_model.<module>.lora_up.weight
PREFIXES = ("model.diffusion_model.", "diffusion_model.")
# (up, down) suffixes of one module's pair of tensors
PAIRS = ((".lora_up.weight", ".lora_down.weight"), (".lora_B.weight", ".lora_A.weight"))
SAMPLE_KEYS = 4  # keys quoted in a message


def lora_state_dict(modules: Mapping[str, tuple[torch.Tensor, torch.Tensor, float]]) -> dict[str, torch.Tensor]:
    """{official module name: (up (out, r), down (r, in), alpha)} -> tensors in the ComfyUI /
    lightx2v layout: ``diffusion_model.<module>.lora_up.weight``, ``.lora_down.weight``, ``.alpha``."""
    out = {}
    for module, (up, down, alpha) in modules.items():
        key = LORA_PREFIX + module
        out[key + ".lora_up.weight"] = up.detach().float().contiguous()
        out[key + ".lora_down.weight"] = down.detach().float().contiguous()
        out[key + ".alpha"] = torch.tensor(float(alpha))
    return out


def _quote(keys: list[str]) -> str:
    shown = ", ".join(repr(k) for k in keys[:SAMPLE_KEYS])
    return shown + (f" (and {len(keys) - SAMPLE_KEYS} more)" if len(keys) > SAMPLE_KEYS else "")


def _module_name(key: str) -> str:
    for p in PREFIXES:
        if key.startswith(p):
            return key[len(p):]
    return key


def lora_modules(lora: Mapping[str, torch.Tensor]) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor, float]],
                                                            list[str]]:
    """({official module name: (up, down, alpha)}, keys that are no up/down/alpha of a pair).
    ``alpha`` defaults to the rank (scale 1) as in ComfyUI."""
    names = dit_lora_official_names(lora)      # diffusers' module names -> official
    tensors = {new: lora[old] for new, old in names.items()}
    pairs, used = {}, set()
    for key in tensors:
        for up_suffix, down_suffix in PAIRS:
            if key.endswith(up_suffix) and key[: -len(up_suffix)] + down_suffix in tensors:
                base = key[: -len(up_suffix)]
                up, down = tensors[key], tensors[base + down_suffix]
                alpha_key = base + ".alpha"
                alpha = float(tensors[alpha_key]) if alpha_key in tensors else float(down.shape[0])
                pairs[_module_name(base)] = (up, down, alpha)
                used.update({key, base + down_suffix, alpha_key})
    return pairs, sorted(names[k] for k in tensors if k not in used)


def _update(module: str, up: torch.Tensor, down: torch.Tensor, alpha: float, weight: torch.Tensor,
            target: str) -> torch.Tensor:
    """(alpha / rank) · up @ down shaped as ``weight``, or a WeightsError naming the misfit."""
    shape = tuple(weight.shape)
    rank_up, rank_down = math.prod(up.shape[1:]), down.shape[0]
    if rank_up != rank_down:
        raise WeightsError(f"LoRA module {module!r}: up {tuple(up.shape)} and down {tuple(down.shape)} have different "
                           f"ranks ({rank_up} and {rank_down}); the file is damaged")
    out, inp = up.shape[0], math.prod(down.shape[1:])
    if out != shape[0] or out * inp != weight.numel():
        raise WeightsError(f"LoRA module {module!r} (up {tuple(up.shape)}, down {tuple(down.shape)}, rank {rank_up}) "
                           f"makes a {out}x{inp} update, but this model's {target} is {shape}: the LoRA is for "
                           "another size of the model")
    delta = up.float().reshape(out, rank_up) @ down.float().reshape(rank_down, inp)   # (out, in)
    return (alpha / rank_down) * delta.reshape(shape)


@torch.no_grad()
def apply_lora(dit: nn.Module, lora: str | os.PathLike | Mapping[str, torch.Tensor], strength: float = 1.0,
               name: str | None = None) -> nn.Module:
    """Merge a LoRA (a .safetensors path or a state dict) into ``dit``'s weights in place and
    return ``dit``: ``W += strength · (alpha / rank) · up @ down`` for every module it names.

    Refused with a ``WeightsError`` that names the file: a LoRA matching none of the model's
    weights (another model family), a module whose update does not fit the weight (another size
    of the model), up and down of different ranks, weights stored as scaled fp8."""
    name = name or (Path(lora).name if isinstance(lora, (str, os.PathLike)) else "the LoRA")
    pairs, stray = lora_modules(load_state_dict(lora))
    params = dict(dit.named_parameters())
    found = {m: p for m, p in pairs.items() if m + ".weight" in params}
    if not found:
        keys = sorted(dit_lora_official_names(load_state_dict(lora)).values())
        raise WeightsError(f"{name!r} matches none of this model's {len(params)} weights; it is probably for another "
                           f"model family: its keys are {_quote(keys)}")
    updates = {}
    for module, (up, down, alpha) in sorted(found.items()):
        target = module + ".weight"
        if getattr(dit.get_submodule(module), "scale_weight", None) is not None:
            raise WeightsError(f"{name!r}: {target} is stored as scaled fp8; merge the LoRA into a model loaded "
                               "in bf16 or fp32, or apply it with the LoRA loader node")
        try:
            updates[target] = _update(module, up, down, alpha, params[target], target)
        except WeightsError as e:
            raise WeightsError(f"{name!r}: {e}") from None
    left_out = stray + sorted(m for m in pairs if m not in found)
    if left_out:
        log.warning("%d keys of %s match no weight of this model and are left out: %s", len(left_out), name,
                    _quote(left_out))
    if strength != 0:
        for target, delta in updates.items():
            w = params[target]
            w.copy_((w.float() + strength * delta).to(w.dtype))
    log.info("%s merges into %d weights (strength %g)", name, len(updates), strength)
    return dit


__all__ = ["LORA_PREFIX", "apply_lora", "lora_modules", "lora_state_dict"]
