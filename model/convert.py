"""Checkpoint layouts: the one place where key names are translated.

Our modules are named after the official Wan checkpoint keys, so the official layout loads
as-is. Other layouts (ComfyUI's ``model.diffusion_model.`` prefix, diffusers' names) are
mapped onto it here, by ordered regex rules, one table per model kind.
"""
from __future__ import annotations

import re
from typing import Iterable, Mapping

import torch

Rule = tuple[str, str]  # (regex on the foreign key, replacement giving the official key)

# Prefixes that wrap the official names in the files users have (ComfyUI saves, merges).
KNOWN_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "first_stage_model.", "vae.", "model.")


def strip_prefix(sd: Mapping[str, torch.Tensor], markers: Iterable[str]) -> dict[str, torch.Tensor]:
    """Remove a common wrapper prefix if every key carrying one of ``markers`` has it.

    ``markers`` are official key stems (e.g. ``"blocks.0."``) used to tell which prefix, if
    any, the file uses.
    """
    markers = tuple(markers)
    for prefix in KNOWN_PREFIXES:
        if any(k.startswith(prefix) and k[len(prefix):].startswith(markers) for k in sd):
            return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    return dict(sd)


def rename(sd: Mapping[str, torch.Tensor], rules: Iterable[Rule]) -> dict[str, torch.Tensor]:
    """Apply the first matching rule to each key (``re.fullmatch``); unmatched keys are kept."""
    compiled = [(re.compile(p), r) for p, r in rules]
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        for pattern, repl in compiled:
            m = pattern.fullmatch(key)
            if m:
                key = m.expand(repl)
                break
        out[key] = value
    return out
