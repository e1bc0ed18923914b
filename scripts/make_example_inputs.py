"""Write the example inputs the shipped workflows name (workflows/inputs/): a start image and two
short clips drawn from the embedded model's synthetic world. Deterministic; a few KB each.

    python scripts/make_example_inputs.py [--out workflows/inputs]
"""
import argparse
import sys
from pathlib import Path

from PIL import Image

from spacetime_video.headless.templates import CLIP_A, CLIP_B, IMAGE_IN
from spacetime_video.nodes.video_file import write_video
from spacetime_video.training.world import ObjectSpec, render

FPS = 8.0


def frames(obj: ObjectSpec, background: str = "navy"):
    """IMAGE frames [T, H, W, 3] in 0..1 of one object's track."""
    return ((render((obj,), background) + 1) / 2).permute(1, 2, 3, 0).contiguous()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "workflows" / "inputs")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    # clip A: a red ball crossing to the right; clip B: the same ball rising. The start image is A's first frame.
    a = frames(ObjectSpec("red", "circle", "right", start=(12, 32), end=(52, 32), size=(7, 7)))
    b = frames(ObjectSpec("red", "circle", "up", start=(32, 52), end=(32, 12), size=(7, 7)))
    write_video(args.out / CLIP_A, a, FPS)
    write_video(args.out / CLIP_B, b, FPS)
    Image.fromarray((a[0] * 255).round().byte().numpy()).save(args.out / IMAGE_IN, optimize=True)
    print(f"wrote {IMAGE_IN}, {CLIP_A}, {CLIP_B} to {args.out}")  # noqa: T201 (a script's one line of output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
