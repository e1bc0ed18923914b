"""Reading and writing video files with PyAV (GIF with Pillow); no ComfyUI imports.

MP4 (H.264) and WebM (VP9) keep the metadata as container tags (MP4 with
``movflags=use_metadata_tags`` so that any key survives); GIF keeps it as one JSON comment
block. ``read_metadata`` reads all three back as a dict of decoded JSON values.

Files are untrusted both ways. A video is encoded into a hidden temporary file in the target
folder and gets its final name only when complete, so no partial file is ever visible; on any
failure (a full disk, a file-size limit) the temporary file is removed and ``VideoWriteError``
says that nothing was written. Reading decodes one frame at a time and keeps only the frames
asked for, resized as they come, so memory is the output's, not the file's; the caller's
``check`` sees the estimated memory before anything is decoded.
"""
from __future__ import annotations

import errno
import itertools
import json
import logging
import math
import os
import secrets
import struct
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Callable, Iterable, Iterator

import av
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

log = logging.getLogger("spacetime.video")

CODECS = {"mp4": ("libx264", "yuv420p"), "webm": ("libvpx-vp9", "yuv420p")}
FORMATS = (*CODECS, "gif")
READABLE = (".mp4", ".webm", ".gif", ".mkv", ".mov", ".avi", ".m4v")
TEMP_PREFIX = ".spacetime-partial-"  # hidden; never matches ComfyUI's "<prefix>_<counter>_" names

_WHY = {errno.ENOSPC: "the disk is full", errno.EFBIG: "the file-size limit was reached",
        errno.EDQUOT: "the disk quota is used up", errno.EROFS: "the disk is read-only",
        errno.EACCES: "permission denied", errno.EPERM: "permission denied"}
# what a broken or hostile file makes PyAV or Pillow raise
_BAD_FILE = (av.FFmpegError, OSError, ValueError, EOFError, IndexError, KeyError, struct.error,
             Image.DecompressionBombError)


class VideoWriteError(RuntimeError):
    """A video could not be written; nothing was left behind (no partial or temporary file)."""


class UnreadableVideo(ValueError):
    """The file is not a video that can be decoded (as opposed to a range that holds no frames)."""


def _check_frames(frames: torch.Tensor) -> None:
    if frames.ndim != 4 or frames.shape[-1] not in (3, 4):
        raise ValueError(f"expected frames [N, H, W, 3], got {tuple(frames.shape)}")
    if 0 in frames.shape:
        raise ValueError(f"no pixels to write: frames of shape {tuple(frames.shape)}")


def to_uint8(frames: torch.Tensor) -> np.ndarray:
    """IMAGE ``[N, H, W, 3]`` floats in 0..1 -> ``uint8`` array of the same shape."""
    if frames.ndim != 4 or frames.shape[-1] not in (3, 4):
        raise ValueError(f"expected frames [N, H, W, 3], got {tuple(frames.shape)}")
    return (frames[..., :3].clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()


def _as_text(value) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _format_of(name: str) -> str:
    fmt = Path(name).suffix.lstrip(".").lower()
    if fmt not in FORMATS:
        raise ValueError(f"unsupported video format {fmt!r}; choose one of {list(FORMATS)}")
    return fmt


def _write_gif(path: Path, data: np.ndarray, fps: float, metadata: dict) -> None:
    images = [Image.fromarray(f) for f in data]
    # the frame rate rides along: identical neighbouring frames are merged by Pillow
    comment = json.dumps({**{k: _as_text(v) for k, v in metadata.items()}, "fps": str(fps)})
    images[0].save(path, format="GIF", save_all=True, append_images=images[1:], loop=0,
                   duration=max(1, round(1000 / fps)), comment=comment.encode())


def _pieces(frames: torch.Tensor | Iterable[torch.Tensor]) -> Iterator[torch.Tensor]:
    """The frames as pieces ``[n, H, W, 3]`` of one size, each checked as it comes."""
    size = None
    for piece in [frames] if isinstance(frames, torch.Tensor) else frames:
        _check_frames(piece)
        if size is not None and tuple(piece.shape[1:3]) != size:
            raise ValueError(f"frames of size {tuple(piece.shape[1:3])} after frames of size {size}")
        size = tuple(piece.shape[1:3])
        yield piece


def _encode(path: Path, fmt: str, frames: torch.Tensor | Iterable[torch.Tensor], fps: float, metadata: dict,
            crf: int) -> None:
    """Encode ``frames`` (one tensor, or pieces of the clip in order, taken one at a time) to
    ``path`` in ``fmt`` (whatever the file's name)."""
    pieces = _pieces(frames)
    if fmt == "gif":
        _write_gif(path, to_uint8(torch.cat(list(pieces))), fps, metadata)
        return
    first = next(pieces, None)
    if first is None:
        raise ValueError("no frames to write")
    codec, pix_fmt = CODECS[fmt]
    h, w = first.shape[1:3]
    pad_h, pad_w = h % 2, w % 2  # yuv420p needs even sizes
    options = {"movflags": "use_metadata_tags"} if fmt == "mp4" else {}
    with av.open(str(path), mode="w", format=fmt, options=options) as container:
        for key, value in metadata.items():
            container.metadata[key] = _as_text(value)
        stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1000))
        stream.width, stream.height, stream.pix_fmt = w + pad_w, h + pad_h, pix_fmt
        stream.options = {"crf": str(crf)} if codec == "libx264" else {"crf": str(crf + 12), "b": "0"}
        for piece in itertools.chain([first], pieces):
            for i in range(piece.shape[0]):  # one frame at a time: no uint8 copy of the whole clip
                frame = to_uint8(piece[i:i + 1])[0]
                if pad_h or pad_w:
                    frame = np.pad(frame, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")
                for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                    container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _why(e: BaseException) -> str:
    reason = _WHY.get(getattr(e, "errno", None))
    detail = getattr(e, "strerror", None) or str(e)
    return f"{reason} ({detail})" if reason else f"{type(e).__name__}: {detail}"


def _new_temp(folder: Path) -> Path:
    """A new empty hidden file in ``folder``, with the mode of any new file (not ``mkstemp``'s 0600)."""
    while True:
        path = folder / f"{TEMP_PREFIX}{secrets.token_hex(6)}"
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return path
        except FileExistsError:
            continue


def _take_name(tmp: Path, dest: Path) -> bool:
    """Give the finished ``tmp`` the name ``dest``, unless a file of that name exists (False)."""
    try:
        os.link(tmp, dest)  # atomic, and fails when dest exists: a file is never replaced
        return True
    except FileExistsError:
        return False
    except OSError:  # a file system without hard links
        if os.path.lexists(dest):
            return False
        os.replace(tmp, dest)
        return True


def _write(folder: Path, first: str, more: Iterable[str], frames: torch.Tensor | Iterable[torch.Tensor], fps: float,
           metadata: dict | None, crf: int, replace: bool) -> Path:
    fmt = _format_of(first)
    if isinstance(frames, torch.Tensor):
        _check_frames(frames)
    if not (math.isfinite(fps) and fps > 0):
        raise ValueError(f"fps {fps} must be a positive number")
    tmp = None
    try:
        tmp = _new_temp(folder)
        _encode(tmp, fmt, frames, fps, metadata or {}, crf)
        for name in itertools.chain([first], more):
            dest = folder / name
            if replace:
                os.replace(tmp, dest)
                return dest
            if _take_name(tmp, dest):
                return dest
        raise VideoWriteError(f"could not write {first} in {folder}: every name is taken; nothing was written")
    except (OSError, av.FFmpegError) as e:
        raise VideoWriteError(f"could not write {first} in {folder}: {_why(e)}; nothing was written "
                              "(no partial file is left)") from e
    finally:
        if tmp is not None:
            try:
                tmp.unlink(missing_ok=True)  # gone after a rename; the only copy after a failure
            except OSError as e:
                log.warning("could not remove the temporary file %s: %s", tmp, e)


def write_video(path: str | Path, frames: torch.Tensor, fps: float, metadata: dict | None = None,
                crf: int = 19) -> Path:
    """Encode IMAGE frames to ``path`` (``.mp4`` H.264, ``.webm`` VP9 or ``.gif``), replacing a
    file of that name only once the new one is complete; ``metadata`` values are stored as JSON
    strings (strings as they are). ``VideoWriteError`` when it cannot be written."""
    path = Path(path)
    return _write(path.parent, path.name, (), frames, fps, metadata, crf, replace=True)


def write_new_video(folder: str | Path, names: Iterable[str], frames: torch.Tensor | Iterable[torch.Tensor],
                    fps: float, metadata: dict | None = None, crf: int = 19) -> Path:
    """Encode once, then name the file after the first of ``names`` (one format, may be endless)
    that no file has yet: an existing file is never replaced. Returns the path written.
    ``frames`` may be an iterable of pieces ``[n, H, W, 3]`` (MP4 and WebM encode each piece as
    it comes, so a long clip is never held whole; GIF collects them)."""
    names = iter(names)
    return _write(Path(folder), next(names), names, frames, fps, metadata, crf, replace=False)


def _decode_json(value: str):
    try:
        return json.loads(value)
    except (json.JSONDecodeError, TypeError):
        return value


def read_metadata(path: str | Path) -> dict:
    """The metadata ``write_video`` stored, keys lower-cased, JSON values decoded."""
    path = Path(path)
    if path.suffix.lower() == ".gif":
        with Image.open(path) as im:
            raw = im.info.get("comment", b"")
        tags = json.loads(raw) if raw else {}
    else:
        with av.open(str(path)) as container:
            tags = dict(container.metadata)
    return {k.lower(): _decode_json(v) for k, v in tags.items()}


# ------------------------------------------------------------------------------------ reading

@dataclass(frozen=True)
class VideoInfo:
    width: int
    height: int
    fps: float
    frames: int | None  # from the file's index or duration; None when it does not say


def _unreadable(path: Path, e: BaseException) -> UnreadableVideo:
    kinds = ", ".join(x.lstrip(".").upper() for x in READABLE)
    return UnreadableVideo(f"{path.name} is not a video that can be read ({type(e).__name__}: {e}); "
                           f"choose a video file ({kinds})")


def _gif_grid(im: Image.Image) -> tuple[list[int], float]:
    """How many frames of a constant frame grid each GIF frame fills, and the grid's fps: Pillow
    merges identical neighbouring frames into one longer frame when writing."""
    durations = []
    for i in range(im.n_frames):
        im.seek(i)
        durations.append(int(im.info.get("duration", 100)) or 100)
    try:
        base = 1000.0 / float(json.loads(im.info.get("comment", b""))["fps"])
    except (ValueError, KeyError, TypeError, ZeroDivisionError):
        base = 0.0
    if not (math.isfinite(base) and base > 0):
        base = float(min(durations))
    return [max(1, round(d / base)) for d in durations], 1000.0 / base


def probe_video(path: str | Path) -> VideoInfo:
    """Frame size, frame rate and (where the file says) frame count, without converting or
    holding frames (a GIF's frames are walked once, one at a time)."""
    path = Path(path)
    try:
        if path.suffix.lower() == ".gif":
            with Image.open(path) as im:
                repeats, fps = _gif_grid(im)
                return VideoInfo(im.width, im.height, fps, sum(repeats))
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise ValueError("it has no video stream")
            stream = container.streams.video[0]
            fps = float(stream.average_rate or stream.guessed_rate or 24)
            width, height = stream.width, stream.height
            if not (width and height):
                first = next(container.decode(stream), None)
                if first is None:
                    raise ValueError("it has no frames")
                width, height = first.width, first.height
            frames = stream.frames or None
            if frames is None:
                seconds = (float(stream.duration * stream.time_base) if stream.duration
                           else container.duration / av.time_base if container.duration else None)
                frames = max(1, math.ceil(seconds * fps - 1e-6)) if seconds else None
            return VideoInfo(width, height, fps, frames)
    except _BAD_FILE as e:
        raise _unreadable(path, e) from None


def kept_count(total: int | None, start: int, count: int, stride: int) -> int | None:
    """How many of the frames ``start, start+stride, ...`` (at most ``count``, 0 = all) a video
    of ``total`` frames has; None when neither says."""
    if total is None:
        return count or None
    n = max(0, -(-(total - start) // stride))
    return min(n, count) if count else n


def _frames(path: Path, keep: Callable[[int], bool]) -> Iterator[tuple[int, np.ndarray | None]]:
    """Each frame index of the file in order, with its RGB pixels (``uint8 [H, W, 3]``) when
    ``keep(index)``, else None: frames not kept are decoded (later ones depend on them) but never
    converted or held."""
    try:
        if path.suffix.lower() == ".gif":
            with Image.open(path) as im:
                repeats, _ = _gif_grid(im)
                index = 0
                for i, n in enumerate(repeats):
                    im.seek(i)
                    rgb = None
                    for j in range(index, index + n):
                        if keep(j):
                            rgb = np.array(im.convert("RGB")) if rgb is None else rgb
                            yield j, rgb
                        else:
                            yield j, None
                    index += n
            return
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for index, frame in enumerate(container.decode(stream)):
                yield index, (frame.to_ndarray(format="rgb24") if keep(index) else None)
    except _BAD_FILE as e:
        raise _unreadable(path, e) from None


def _resized(rgb: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """``uint8 [H, W, 3]`` at ``size = (width, height)`` (antialiased bilinear), as uint8."""
    x = torch.from_numpy(np.ascontiguousarray(rgb))
    if (x.shape[1], x.shape[0]) == tuple(size):
        return x
    y = F.interpolate(x.movedim(-1, 0)[None].float() / 255.0, size=(size[1], size[0]), mode="bilinear",
                      align_corners=False, antialias=True)
    return (y[0].movedim(0, -1).clamp(0, 1) * 255).round().to(torch.uint8)


def read_video(path: str | Path, start: int = 0, count: int = 0, stride: int = 1,
               size: tuple[int, int] | None = None,
               check: Callable[[int], None] | None = None) -> tuple[torch.Tensor, float]:
    """Frames ``start, start+stride, ...`` (``count`` of them, 0 = all) of a video as IMAGE
    ``[N, H, W, 3]`` in 0..1, resized to ``size = (width, height)`` if given, and the fps of
    the result (the file's fps divided by ``stride``).

    ``check(nbytes)`` sees the estimated memory of the result before anything is decoded (and
    again should the file hold more frames than it says) and raises to refuse. Errors:
    ``UnreadableVideo`` when the file is not a readable video, a plain ``ValueError`` when the
    range holds no frames."""
    if start < 0 or stride < 1 or count < 0:
        raise ValueError(f"start {start} must be >= 0, stride {stride} >= 1, count {count} >= 0")
    path = Path(path)
    info = probe_video(path)
    width, height = size if size is not None else (info.width, info.height)
    if width < 1 or height < 1:
        raise ValueError(f"size {width}x{height} must be at least 1x1")
    frame_bytes = width * height * 3 * 4
    # while resizing, one source frame is also held as floats (input and output of the filter)
    work = 2 * info.width * info.height * 3 * 4 if (width, height) != (info.width, info.height) else 0
    expected = kept_count(info.frames, start, count, stride)
    if check is not None and expected is not None:
        check(expected * frame_bytes + work)
    checked = expected or 0

    def keep(i: int) -> bool:
        return i >= start and (i - start) % stride == 0

    kept: list[torch.Tensor | None] = []  # uint8 [H, W, 3]: a quarter of the output's memory
    total = 0
    for index, rgb in _frames(path, keep):
        total = index + 1
        if rgb is None:
            continue
        if check is not None and len(kept) >= checked:  # more frames than the file said
            checked = max(2 * checked, 16)
            check(checked * frame_bytes + work)
        kept.append(_resized(rgb, (width, height)))
        if count and len(kept) == count:
            break
    if not kept:
        raise ValueError(f"{path.name}: no frames at start frame {start}: the video is shorter (it has "
                         f"{total} frames; start at 0 to {max(total - 1, 0)})")
    video = torch.empty((len(kept), height, width, 3), dtype=torch.float32)
    for i, frame in enumerate(kept):
        video[i].copy_(frame)
        kept[i] = None  # each uint8 frame goes as soon as it is copied
    return video.div_(255.0), info.fps / stride
