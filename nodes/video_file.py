"""Writing frames to video files with PyAV (no ComfyUI imports; used by the video nodes)."""
from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch

CODECS = {"mp4": ("libx264", "yuv420p"), "webm": ("libvpx-vp9", "yuv420p")}


def to_uint8(frames: torch.Tensor) -> np.ndarray:
    """IMAGE ``[N, H, W, 3]`` floats in 0..1 -> ``uint8`` array of the same shape."""
    if frames.ndim != 4 or frames.shape[-1] not in (3, 4):
        raise ValueError(f"expected frames [N, H, W, 3], got {tuple(frames.shape)}")
    return (frames[..., :3].clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()


def write_video(path: str | Path, frames: torch.Tensor, fps: float, metadata: dict | None = None,
                crf: int = 19) -> Path:
    """Encode IMAGE frames to ``path`` (``.mp4`` H.264 or ``.webm`` VP9); ``metadata`` values
    are stored as JSON strings in the container's tags."""
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower()
    if fmt not in CODECS:
        raise ValueError(f"unsupported video format {fmt!r}; choose one of {sorted(CODECS)}")
    codec, pix_fmt = CODECS[fmt]
    data = to_uint8(frames)
    n, h, w, _ = data.shape
    if codec == "libx264" and (h % 2 or w % 2):  # yuv420p needs even sizes
        data = np.pad(data, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
        h, w = data.shape[1:3]
    with av.open(str(path), mode="w") as container:
        for key, value in (metadata or {}).items():
            container.metadata[key] = value if isinstance(value, str) else json.dumps(value)
        stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1000))
        stream.width, stream.height, stream.pix_fmt = w, h, pix_fmt
        stream.options = {"crf": str(crf)}
        for frame in data:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path
