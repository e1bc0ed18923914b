"""Card pictures for ComfyUI's templates browser: ``workflows/NAME.jpg`` beside each UI workflow.

ComfyUI lists a pack's ``workflows/*.json`` as template cards titled with the file name and asks
for ``NAME.jpg`` as the picture. A card says in words what the workflow does ("Text to video",
"Extend forward", "Connect two clips") and which model it needs; an embedded-model card shows a
frame of that workflow's video (the frame of the example input it starts from, or the embedded
model's own output), a Wan card a plain panel with the model's name.
"""
from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Callable

import torch

log = logging.getLogger("spacetime.thumbnails")

SIZE = (320, 240)
CAPABILITIES = {  # capability suffix of a workflow name -> what a user looks for
    "t2v": "Text to video", "t2v_4step": "Text to video, 4 steps", "i2v": "Image to video",
    "extend_forward": "Extend forward", "extend_backward": "Extend backward", "connect": "Connect two clips",
    "loop": "Seamless loop", "edit": "Edit a video", "image": "Text to image", "test_pattern": "Test pattern",
    "long_video": "Long video from a storyboard",
}
FAMILY_LABELS = {
    "embedded": "Embedded tiny model, runs on CPU", "wan21_t2v_1.3b": "Wan 2.1 T2V 1.3B",
    "wan21_t2v_14b": "Wan 2.1 T2V 14B", "wan22_ti2v_5b": "Wan 2.2 TI2V 5B", "wan21_i2v_14b": "Wan 2.1 I2V 14B",
    "wan21_flf2v_14b": "Wan 2.1 FLF2V 14B", "wan22_t2v_a14b": "Wan 2.2 T2V A14B", "foundation": "No model",
}
_PANEL = {"embedded": (28, 34, 64), "wan21": (58, 30, 72), "wan22": (24, 60, 64)}


def describe(name: str) -> tuple[str, str]:
    """(what it does, which model) for a workflow name ``<family>_<capability>``."""
    family = next((f for f in sorted(FAMILY_LABELS, key=len, reverse=True) if name.startswith(f + "_")), "")
    cap = name[len(family) + 1:] if family else name
    title = CAPABILITIES.get(cap, cap.replace("_", " ").capitalize())
    return title, FAMILY_LABELS.get(family, "")


def card(name: str, frame: torch.Tensor | None = None) -> bytes:
    """A JPEG card; ``frame`` [H, W, 3] in 0..1 is shown enlarged when given."""
    from PIL import Image, ImageDraw, ImageFont

    title, model = describe(name)
    panel = next((c for k, c in _PANEL.items() if name.startswith(k)), (40, 40, 40))
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
    draw.text((12, top + 10), title, fill=(255, 255, 255), font=ImageFont.load_default(size=24))
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


def write_thumbnails(out_dir: Path, frames: dict[str, Callable[[], torch.Tensor]]) -> list[Path]:
    """``NAME.jpg`` for every UI workflow ``NAME.json`` at the top of ``out_dir``; ``frames`` maps a
    name to a function giving its picture's frame (others get a panel)."""
    written = []
    for wf in sorted(Path(out_dir).glob("*.json")):
        name = wf.stem
        frame = frames[name]() if name in frames else None
        path = wf.with_suffix(".jpg")
        path.write_bytes(card(name, frame))
        written.append(path)
    return written
