"""Reading weights: safetensors only (never pickle), with errors a user can act on."""
from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Mapping, Union

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

StateDict = Mapping[str, torch.Tensor]
PathOrStateDict = Union[str, os.PathLike, StateDict]

PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".pkl")


class WeightsError(ValueError):
    """A weights file or state dict that cannot be used; the message says why and what to do."""


def read_safetensors_header(path: str | os.PathLike) -> dict:
    """The JSON header of a safetensors file (names, dtypes, shapes, offsets), checked against
    the file's size so that a truncated download is reported as such."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise WeightsError(f"{path.name}: only {size} bytes, not a safetensors file (truncated?)")
        (n,) = struct.unpack("<Q", raw)
        if n > min(size - 8, 100 * 2**20):
            raise WeightsError(f"{path.name}: not a safetensors file (bad header length {n})")
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise WeightsError(f"{path.name}: corrupt safetensors header ({e})") from None
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + n + end > size:
        raise WeightsError(f"{path.name}: file is truncated ({size:,} bytes, the header needs "
                           f"{8 + n + end:,}); download it again")
    return header


def load_state_dict(source: PathOrStateDict, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """A state dict from a ``.safetensors`` path or an existing mapping (returned as a dict).

    Pickle formats are refused: they can run code when loaded.
    """
    if isinstance(source, Mapping):
        return dict(source)
    path = Path(source)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise WeightsError(f"{path.name}: pickle checkpoints are not loaded (they can run code); "
                           "use the .safetensors release of these weights")
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    read_safetensors_header(path)
    try:
        return load_file(str(path), device=str(device))
    except (SafetensorError, OSError, RuntimeError) as e:
        raise WeightsError(f"{path.name}: could not read safetensors data ({e})") from None


def safetensors_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The free-form ``__metadata__`` of a safetensors file (empty if none)."""
    return dict(read_safetensors_header(path).get("__metadata__") or {})
