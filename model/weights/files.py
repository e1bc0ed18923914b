"""Reading weights: safetensors only (never pickle), with errors a user can act on.

``load_state_dict`` reads a whole file; ``TensorReader`` reads shapes and dtypes from the
header and each tensor on demand straight into its final buffer (plain reads, no mmap), so a
loader can build a model on the meta device and never hold two copies of the weights.
"""
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


def refuse_pickle(path: Path) -> None:
    """Pickle formats can run code when loaded: refuse them, naming the fix."""
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise WeightsError(f"{path.name}: pickle checkpoints are not loaded (they can run code); "
                           "use the .safetensors release of these weights")


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
    refuse_pickle(path)
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


def json_metadata(path: str | os.PathLike) -> dict:
    """The ``__metadata__`` with each value decoded from JSON where it is JSON (else kept as text)."""
    def decode(value: str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return {k: decode(v) for k, v in safetensors_metadata(path).items()}


ST_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
             "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2, "I64": torch.int64,
             "I32": torch.int32, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool}


class TensorReader:
    """Shapes, dtypes, metadata and lazy tensor reads of a safetensors file, a folder of
    shards (diffusers) or an in-memory state dict."""

    def __init__(self, source: PathOrStateDict, what: str = "weights") -> None:
        self.sd: Mapping[str, torch.Tensor] | None = None
        self.metadata: dict[str, str] = {}
        if isinstance(source, Mapping):
            self.sd = source
            self.shapes = {k: tuple(v.shape) for k, v in source.items()}
            self.dtypes = {k: v.dtype for k, v in source.items()}
            return
        path = Path(source)
        refuse_pickle(path)
        files = sorted(path.glob("*.safetensors")) if path.is_dir() else [path]
        if not files or not all(f.is_file() for f in files):
            raise WeightsError(f"{what} not found: {path} (a .safetensors file, or a folder of them)")
        self.entries: dict[str, tuple[Path, int, dict]] = {}
        for f in files:
            header = read_safetensors_header(f)
            self.metadata.update(header.pop("__metadata__", None) or {})
            with open(f, "rb") as fh:
                start = 8 + int.from_bytes(fh.read(8), "little")
            self.entries.update({k: (f, start, v) for k, v in header.items()})
        self.shapes = {k: tuple(v["shape"]) for k, (_, _, v) in self.entries.items()}
        self.dtypes = {k: ST_DTYPES.get(v["dtype"]) for k, (_, _, v) in self.entries.items()}

    def read(self, key: str) -> torch.Tensor:
        if self.sd is not None:
            return self.sd[key]
        path, start, e = self.entries[key]
        dtype = self.dtypes[key]
        if dtype is None:
            raise WeightsError(f"{path.name}: tensor {key} has unsupported dtype {e['dtype']}")
        t = torch.empty(self.shapes[key], dtype=dtype)
        begin, end = e["data_offsets"]
        with open(path, "rb") as f:  # plain read into the final buffer: no mmap, no copy
            f.seek(start + begin)
            if end > begin and f.readinto(memoryview(t.view(-1).view(torch.uint8).numpy())) != end - begin:
                raise WeightsError(f"{path.name}: short read for {key}; the file is truncated")
        return t
