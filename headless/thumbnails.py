"""Card pictures for ComfyUI's templates browser: ``workflows/NAME.jpg`` beside each UI workflow.

ComfyUI lists a pack's ``workflows/*.json`` as template cards titled with the file name and asks
for ``NAME.jpg`` as the picture. A card says in words what the workflow does ("Text to video",
"Extend forward", "Connect two clips") and which model it needs, the two halves of its title
(``templates.title``); an embedded-model card shows a frame of that workflow's video (the frame of
the example input it starts from, or the embedded model's own output), a Wan card a plain panel
with the model's name.
"""
from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Callable

import torch

log = logging.getLogger("spacetime.thumbnails")

SIZE = (320, 240)
_PANEL = {"Embedded": (28, 34, 64), "Wan 2.1": (58, 30, 72), "Wan 2.2": (24, 60, 64)}   # by model label


def card(what: str, model: str, frame: torch.Tensor | None = None) -> bytes:
    """A JPEG card saying what a workflow does and which model it needs; ``frame`` [H, W, 3] in
    0..1 is shown enlarged when given, else a panel with the model's name."""
    from PIL import Image, ImageDraw, ImageFont

    panel = next((c for k, c in _PANEL.items() if model.startswith(k)), (40, 40, 40))
    img = Image.new("RGB", SIZE, panel)
    draw = ImageDraw.Draw(img)
    w, h = SIZE
    top = h - 78                                          # the picture area above the two text lines
    if frame is not None:
        pic = Image.fromarray((frame.clamp(0, 1) * 255).round().byte().numpy())
        side = top - 16
        img.paste(pic.resize((side, side), Image.NEAREST), ((w - side) // 2, 8))
    else:
        big = ImageFont.load_default(size=30)
        label = model.split(" ", 2)
        text = " ".join(label[:2]) if label and label[0] == "Wan" else model
        draw.text((w // 2, top // 2), text, fill=(235, 235, 245), font=big, anchor="mm")
    draw.rectangle((0, top, w, h), fill=(18, 18, 22))
    draw.text((12, top + 10), what, fill=(255, 255, 255), font=ImageFont.load_default(size=24))
    draw.text((12, top + 44), model, fill=(170, 180, 200), font=ImageFont.load_default(size=16))
    out = io.BytesIO()
    img.save(out, "JPEG", quality=85, optimize=True)
    return out.getvalue()


def video_frame(path: str | Path, index: int) -> torch.Tensor:
    """Frame ``index`` (negative counts from the end) of a video file, [H, W, 3] in 0..1."""
    import av

    with av.open(str(path)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    return torch.from_numpy(frames[index]).float() / 255


def image_frame(path: str | Path) -> torch.Tensor:
    from PIL import Image

    import numpy as np
    return torch.from_numpy(np.array(Image.open(path).convert("RGB"))).float() / 255


def write_thumbnails(out_dir: Path, frames: dict[str, Callable[[], torch.Tensor]],
                     describe: Callable[[str], tuple[str, str]]) -> list[Path]:
    """``TITLE.jpg`` for every UI workflow ``TITLE.json`` at the top of ``out_dir``; ``describe`` maps a
    title to (what it does, which model), ``frames`` a title to a function giving its picture's frame
    (others get a panel)."""
    written = []
    for wf in sorted(Path(out_dir).glob("*.json")):
        name = wf.name.removesuffix(".json")
        frame = frames[name]() if name in frames else None
        path = wf.parent / f"{name}.jpg"
        path.write_bytes(card(*describe(name), frame))
        written.append(path)
    return written
