"""Reading and writing video files with PyAV (GIF with Pillow); no ComfyUI imports.

MP4 (H.264) and WebM (VP9) keep the metadata as container tags (MP4 with
``movflags=use_metadata_tags`` so that any key survives); GIF keeps it as one JSON comment
block. ``read_metadata`` reads all three back as a dict of decoded JSON values.
"""
from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch
import torch.nn.functional as F

CODECS = {"mp4": ("libx264", "yuv420p"), "webm": ("libvpx-vp9", "yuv420p")}
FORMATS = (*CODECS, "gif")
READABLE = (".mp4", ".webm", ".gif", ".mkv", ".mov", ".avi", ".m4v")


def to_uint8(frames: torch.Tensor) -> np.ndarray:
    """IMAGE ``[N, H, W, 3]`` floats in 0..1 -> ``uint8`` array of the same shape."""
    if frames.ndim != 4 or frames.shape[-1] not in (3, 4):
        raise ValueError(f"expected frames [N, H, W, 3], got {tuple(frames.shape)}")
    return (frames[..., :3].clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()


def _as_text(value) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _write_gif(path: Path, data: np.ndarray, fps: float, metadata: dict) -> None:
    from PIL import Image

    images = [Image.fromarray(f) for f in data]
    # the frame rate rides along: identical neighbouring frames are merged by Pillow
    comment = json.dumps({**{k: _as_text(v) for k, v in metadata.items()}, "fps": str(fps)})
    images[0].save(path, save_all=True, append_images=images[1:], loop=0,
                   duration=max(1, round(1000 / fps)), comment=comment.encode())


def write_video(path: str | Path, frames: torch.Tensor, fps: float, metadata: dict | None = None,
                crf: int = 19) -> Path:
    """Encode IMAGE frames to ``path`` (``.mp4`` H.264, ``.webm`` VP9 or ``.gif``); ``metadata``
    values are stored as JSON strings (strings as they are)."""
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower()
    if fmt not in FORMATS:
        raise ValueError(f"unsupported video format {fmt!r}; choose one of {list(FORMATS)}")
    data = to_uint8(frames)
    if fmt == "gif":
        _write_gif(path, data, fps, metadata or {})
        return path
    codec, pix_fmt = CODECS[fmt]
    n, h, w, _ = data.shape
    if h % 2 or w % 2:  # yuv420p needs even sizes
        data = np.pad(data, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
        h, w = data.shape[1:3]
    options = {"movflags": "use_metadata_tags"} if fmt == "mp4" else {}
    with av.open(str(path), mode="w", options=options) as container:
        for key, value in (metadata or {}).items():
            container.metadata[key] = _as_text(value)
        stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1000))
        stream.width, stream.height, stream.pix_fmt = w, h, pix_fmt
        stream.options = {"crf": str(crf)} if codec == "libx264" else {"crf": str(crf + 12), "b": "0"}
        for frame in data:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def _decode_json(value: str):
    try:
        return json.loads(value)
    except (json.JSONDecodeError, TypeError):
        return value


def read_metadata(path: str | Path) -> dict:
    """The metadata ``write_video`` stored, keys lower-cased, JSON values decoded."""
    path = Path(path)
    if path.suffix.lower() == ".gif":
        from PIL import Image

        with Image.open(path) as im:
            raw = im.info.get("comment", b"")
        tags = json.loads(raw) if raw else {}
    else:
        with av.open(str(path)) as container:
            tags = dict(container.metadata)
    return {k.lower(): _decode_json(v) for k, v in tags.items()}


def _decode_gif(path: Path) -> tuple[list[torch.Tensor], float]:
    """GIF frames on a constant frame grid: Pillow merges identical neighbouring frames into
    one longer frame when writing, so each frame is repeated by its duration."""
    from PIL import Image, ImageSequence

    with Image.open(path) as im:
        comment = im.info.get("comment", b"")
        shown = [(np.asarray(f.convert("RGB")), int(f.info.get("duration", 100)) or 100)
                 for f in ImageSequence.Iterator(im)]
    try:
        base = 1000.0 / float(json.loads(comment)["fps"])
    except (ValueError, KeyError, TypeError):
        base = min(d for _, d in shown)
    frames = []
    for data, d in shown:
        frames += [torch.from_numpy(data.copy())] * max(1, round(d / base))
    return frames, 1000.0 / base


def _decode(path: Path) -> tuple[list[torch.Tensor], float]:
    if path.suffix.lower() == ".gif":
        return _decode_gif(path)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate or stream.guessed_rate or 24)
        return [torch.from_numpy(f.to_ndarray(format="rgb24")) for f in container.decode(stream)], fps


def read_video(path: str | Path, start: int = 0, count: int = 0, stride: int = 1,
               size: tuple[int, int] | None = None) -> tuple[torch.Tensor, float]:
    """Frames ``start, start+stride, ...`` (``count`` of them, 0 = all) of a video as IMAGE
    ``[N, H, W, 3]`` in 0..1, resized to ``size = (width, height)`` if given, and the fps of
    the result (the file's fps divided by ``stride``)."""
    if start < 0 or stride < 1 or count < 0:
        raise ValueError(f"start {start} must be >= 0, stride {stride} >= 1, count {count} >= 0")
    decoded, fps = _decode(Path(path))
    frames = decoded[start::stride][:count or None]
    if not frames:
        raise ValueError(f"{Path(path).name}: no frames at start frame {start} (the video is shorter)")
    video = torch.stack(frames).float() / 255.0  # (N, H, W, 3)
    if size is not None and (video.shape[2], video.shape[1]) != tuple(size):
        video = F.interpolate(video.movedim(-1, 1), size=(size[1], size[0]), mode="bilinear",
                              align_corners=False, antialias=True).movedim(1, -1).clamp(0, 1)
    return video, fps / stride
