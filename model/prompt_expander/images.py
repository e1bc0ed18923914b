"""Images for vision-language expanders: ComfyUI IMAGE tensors, PIL images, files or bytes
-> small PNG/JPEG byte strings and ``data:`` URLs (what OpenAI-style APIs take as ``image_url``).

The PNG writer is the standard library's ``zlib`` + ``struct`` (PNG spec, W3C 2003: signature,
IHDR, one IDAT of filtered scanlines, IEND), so ``model/`` needs no PIL.
"""
from __future__ import annotations

import base64
import os
import struct
import zlib
from typing import Any, Sequence

import torch
import torch.nn.functional as F

# Longest side sent to a model; larger images are shrunk (area filter). Vision LLMs tile
# images into 28-px patches: 768 px keeps the request small and the detail useful.
MAX_SIDE = 768


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def encode_png(rgb: torch.Tensor) -> bytes:
    """An RGB uint8 tensor ``(H, W, 3)`` as PNG bytes (8-bit truecolour, filter 0 per row)."""
    if rgb.dtype != torch.uint8 or rgb.ndim != 3 or rgb.shape[-1] != 3:
        raise ValueError(f"encode_png wants a uint8 tensor (H, W, 3), got {tuple(rgb.shape)} {rgb.dtype}")
    h, w, _ = rgb.shape
    rows = rgb.contiguous().cpu().reshape(h, w * 3)
    raw = torch.cat([torch.zeros(h, 1, dtype=torch.uint8), rows], dim=1)  # (H, 1 + 3W): filter byte 0
    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header)
            + _png_chunk(b"IDAT", zlib.compress(raw.numpy().tobytes(), 6)) + _png_chunk(b"IEND", b""))


def _sniff_mime(data: bytes) -> str:
    if data.startswith(b"\x89PNG"):
        return "image/png"
    if data.startswith(b"\xff\xd8"):
        return "image/jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    raise ValueError("image bytes are not PNG, JPEG or WebP: pass a file of one of these kinds, "
                     "a ComfyUI IMAGE tensor or a PIL image")


def _to_uint8_frames(image: Any) -> torch.Tensor:
    """Any supported in-memory image -> uint8 ``(N, H, W, 3)``."""
    if hasattr(image, "convert") and hasattr(image, "size"):  # PIL.Image, duck-typed
        rgb = image.convert("RGB")
        w, h = rgb.size
        return torch.frombuffer(bytearray(rgb.tobytes()), dtype=torch.uint8).reshape(1, h, w, 3)
    t = torch.as_tensor(image)
    if t.ndim == 3:
        t = t.unsqueeze(0)  # (H, W, C) -> (1, H, W, C)
    if t.ndim != 4 or t.shape[-1] not in (1, 3, 4):
        raise ValueError(f"an image must be (H, W, 3) or a ComfyUI IMAGE batch (N, H, W, 3); "
                         f"got shape {tuple(t.shape)}")
    if t.shape[-1] == 1:
        t = t.expand(*t.shape[:-1], 3)
    t = t[..., :3]
    if t.dtype != torch.uint8:
        t = (t.float().clamp(0, 1) * 255).round().to(torch.uint8)  # ComfyUI IMAGE is float 0..1
    return t


def _shrink(frame: torch.Tensor, max_side: int) -> torch.Tensor:
    h, w, _ = frame.shape
    scale = max_side / max(h, w)
    if scale >= 1:
        return frame
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    x = frame.permute(2, 0, 1).unsqueeze(0).float()  # (1, 3, H, W)
    x = F.interpolate(x, size=size, mode="area")
    return x.squeeze(0).permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8)


def frames_from(images: Any) -> list[Any]:
    """Split ``images`` (one image, a batch, or a list of either) into single images."""
    if images is None:
        return []
    if isinstance(images, (list, tuple)):
        out: list[Any] = []
        for item in images:
            out.extend(frames_from(item))
        return out
    if isinstance(images, torch.Tensor) and images.ndim == 4:
        return list(images.unbind(0))
    return [images]


def to_image_bytes(image: Any, max_side: int = MAX_SIDE) -> tuple[str, bytes]:
    """One image -> ``(mime type, bytes)``. Files and encoded bytes pass through unchanged."""
    if isinstance(image, (str, os.PathLike)):
        with open(image, "rb") as f:
            data = f.read()
        return _sniff_mime(data), data
    if isinstance(image, (bytes, bytearray)):
        return _sniff_mime(bytes(image)), bytes(image)
    frame = _to_uint8_frames(image)[0]
    return "image/png", encode_png(_shrink(frame, max_side))


def data_url(mime: str, data: bytes) -> str:
    """``data:<mime>;base64,<...>`` as OpenAI-style ``image_url`` parts expect."""
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def pick_frames(images: Sequence[Any], task: str) -> list[Any]:
    """The frames a task describes: i2v and extend one (the first image, resp. the last frame
    of the clip), flf2v two (first and last), t2v whatever was given (at most 2)."""
    if not images:
        return []
    if task == "i2v":
        return [images[0]]
    if task == "extend":
        return [images[-1]]
    if task == "flf2v":
        return [images[0], images[-1]] if len(images) > 1 else [images[0]]
    return list(images[:2])
