"""LoRA loader: a LoRA from models/loras onto any Wan MODEL (ours or ComfyUI's own), patched the
way ComfyUI's LoraLoaderModelOnly patches it, but never silently doing nothing.

ComfyUI (``comfy/sd.py`` ``load_lora_for_models``) maps LoRA keys to model weights by
``comfy.lora.model_lora_keys_unet`` and drops what matches nothing with a log line; a patch whose
shape does not fit is skipped at sampling time. Here both are errors naming the file: a LoRA for
another model family, or for another size of Wan (a 14B LoRA on the 1.3B model), is refused.
Diffusers' module names (``transformer.blocks.N.attn1.to_q``), which ComfyUI's Wan key map does
not know, are translated to the official ones first (``model.weights.layouts``).
"""
from __future__ import annotations

import logging
import math
from pathlib import Path

import comfy.lora
import comfy.lora_convert
import comfy.utils
import comfy.weight_adapter
import folder_paths
import torch
from comfy_api.latest import io

from ..model.weights.files import WeightsError, read_safetensors_header, refuse_pickle
from ..model.weights.layouts import dit_lora_official_names
from .errors import blamed_on, node_error
from .files import file_inside
from .validation import SpacetimeNode

log = logging.getLogger("spacetime.nodes")

SAFETENSORS = (".safetensors", ".sft")
SAMPLE_KEYS = 4  # keys quoted in a message


def _module_prefixes(key: str) -> list[str]:
    """Every name a LoRA tensor's module may have: the key cut at each dot (and ComfyUI's
    ``<module>_lora.up.weight`` form)."""
    cuts = [key[:i] for i, c in enumerate(key) if c == "."]
    if "_lora." in key:
        cuts.append(key[: key.index("_lora.")])
    return cuts


def _quote(keys: list[str]) -> str:
    shown = ", ".join(repr(k) for k in keys[:SAMPLE_KEYS])
    return shown + (f" (and {len(keys) - SAMPLE_KEYS} more)" if len(keys) > SAMPLE_KEYS else "")


def _format_problem(name: str) -> str | None:
    """Why the file ``name`` is not read (None for safetensors)."""
    try:
        refuse_pickle(Path(name))
    except WeightsError as e:
        return str(e)
    if not name.lower().endswith(SAFETENSORS):
        return f"{name!r}: only .safetensors LoRAs are read (the pack never unpickles); use the .safetensors release"
    return None


def _shape_problem(module: str, patch, target: str, weight: torch.Tensor) -> str | None:
    """Why the patch of LoRA module ``module`` cannot apply to ``weight`` (None when it fits)."""
    shape = tuple(weight.shape)
    if isinstance(patch, comfy.weight_adapter.LoRAAdapter):
        up, down, _alpha, mid, _dora, reshape = patch.weights
        if reshape is not None or mid is not None:  # reshaped or LoCon mid: ComfyUI's own rules
            return None
        rank_up, rank_down = math.prod(up.shape[1:]), down.shape[0]
        if rank_up != rank_down:
            return (f"LoRA module {module!r}: up {tuple(up.shape)} and down {tuple(down.shape)} have different "
                    f"ranks ({rank_up} and {rank_down}); the file is damaged")
        out, inp = up.shape[0], math.prod(down.shape[1:])
        if out != shape[0] or out * inp != weight.numel():
            return (f"LoRA module {module!r} (up {tuple(up.shape)}, down {tuple(down.shape)}, rank {rank_up}) "
                    f"makes a {out}x{inp} update, but this model's {target} is {shape}: the LoRA is for "
                    "another size of the model")
    elif isinstance(patch, tuple) and patch[0] in ("diff", "set"):
        tensor = patch[1][0]
        if tuple(tensor.shape) != shape:
            return (f"LoRA tensor {module!r} ({patch[0]}) has shape {tuple(tensor.shape)}, but this model's "
                    f"{target} is {shape}: the LoRA is for another size of the model")
    return None


class SpacetimeLoraLoader(SpacetimeNode):
    FOLDERS = {"lora_name": "loras"}

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SpacetimeLoraLoader",
            display_name="LoRA Loader (Spacetime)",
            category="Spacetime/loaders",
            description="A LoRA from models/loras (safetensors; ComfyUI, lightx2v, kohya, PEFT or diffusers "
                        "key names) onto a Wan MODEL, as ComfyUI's LoraLoaderModelOnly applies it; a LoRA "
                        "that matches nothing of the model or does not fit its shapes is refused by name. "
                        "Step-distill LoRAs (lightx2v 4-step) go with the scheduler's few-step preset.",
            inputs=[
                io.Model.Input("model", tooltip="a Wan MODEL (ours or ComfyUI's)"),
                io.Combo.Input("lora_name", options=folder_paths.get_filename_list("loras"),
                               tooltip="a .safetensors file in models/loras"),
                io.Float.Input("strength_model", default=1.0, min=-100.0, max=100.0, step=0.01,
                               tooltip="how strongly the LoRA changes the model (negative: the opposite way)"),
            ],
            outputs=[io.Model.Output()],
        )

    @classmethod
    def check_inputs(cls, lora_name=None, **_) -> str | None:
        problem = _format_problem(lora_name) if isinstance(lora_name, str) else None
        return str(node_error(cls, "lora_name", problem)) if problem else None

    @classmethod
    def _read(cls, lora_name: str) -> dict[str, torch.Tensor]:
        problem = _format_problem(lora_name)
        if problem:
            raise node_error(cls, "lora_name", problem)
        path = file_inside(folder_paths.get_folder_paths("loras"), lora_name)
        if path is None:
            raise node_error(cls, "lora_name", f"{lora_name!r} is not a file in ComfyUI's models/loras folder")
        with blamed_on(cls, "lora_name"):
            read_safetensors_header(path)  # a truncated or foreign file is named as such
        return comfy.utils.load_torch_file(path, safe_load=True)

    @classmethod
    def execute(cls, model, lora_name, strength_model) -> io.NodeOutput:
        lora = cls._read(lora_name)
        if strength_model == 0:  # as LoraLoaderModelOnly: nothing to apply
            return io.NodeOutput(model)
        names = dit_lora_official_names(lora)          # diffusers' module names -> official
        lora = comfy.lora_convert.convert_lora({new: lora[old] for new, old in names.items()})
        key_map = comfy.lora.model_lora_keys_unet(model.model, {})
        weights = {k: v for k, v in model.model.state_dict().items() if k.startswith("diffusion_model.")}
        prefixes = {key: [p for p in _module_prefixes(key) if p in key_map] for key in lora}
        modules = {p: key_map[p] for found in prefixes.values() for p in found}  # LoRA module -> weight
        patches = comfy.lora.load_lora(lora, modules, log_missing=False)
        if not patches:
            raise node_error(cls, "lora_name", f"{lora_name!r} matches none of this model's {len(weights)} weights; "
                             f"it is probably for another model family: its keys are {_quote(sorted(names.values()))}")
        module_of = {}  # patched weight -> the LoRA module that patches it (a .diff_b patches the bias)
        for module, target in modules.items():
            module_of[target] = module
            if isinstance(target, str) and target.endswith(".weight"):
                module_of[target[: -len(".weight")] + ".bias"] = module
        for target, patch in sorted(patches.items(), key=lambda kv: str(kv[0])):
            if isinstance(target, str) and target in weights:  # (a key with an offset: ComfyUI's own rules)
                problem = _shape_problem(module_of.get(target, target), patch, target, weights[target])
                if problem:
                    raise node_error(cls, "lora_name", f"{lora_name!r}: {problem}")
        used = {module_of[t] for t in patches if t in module_of}
        left_out = sorted(names.get(k, k) for k, found in prefixes.items() if not used.intersection(found))
        if left_out:
            log.warning("SpacetimeLoraLoader: %d of %d keys of %s match no weight of this model and are left "
                        "out: %s", len(left_out), len(lora), lora_name, _quote(left_out))
        patched = model.clone()
        applied = patched.add_patches(patches, strength_model)
        log.info("SpacetimeLoraLoader: %s patches %d weights (strength %g)", lora_name, len(applied), strength_model)
        return io.NodeOutput(patched)


NODES = [SpacetimeLoraLoader]
