"""A coherent minute on the embedded model: our long-video loop against naive chaining, side by side.

A 60-second storyboard at 8 fps (481 frames) of 15 four-second segments, one red circle on a
black background, directions in a fixed cycle (right, left, still, up, down). Same seed, same
windows (17 frames) for every method:

- ``ours``: ``long_video.generate_long_embedded`` with its defaults (continuity "pixels",
  overlap 1, anchor 0.5), and the variants named in the table (no anchor, more overlap, one
  latent timeline);
- ``naive``: "extend forward" chained by hand, as the shipped workflow is used: each window is
  ``generate_embedded`` with the last 5 frames known and the prompt of the segment it starts in,
  with no drift control.

Printed: the measures of ``long_metrics.py`` per method, then the memory and time of ours for
10 s and for 60 s (each in a fresh process: peak RSS and wall time), as ratios. The run
takes about 10 minutes on 2 CPU cores.

    python bench/bench_long_video.py [--parts methods,scaling] [--threads 1]
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from checkout import import_checkout  # noqa: E402

import_checkout()
import long_metrics as L  # noqa: E402

from spacetime_video.long_video import generate_long_embedded  # noqa: E402
from spacetime_video.long_video.storyboard import parse_storyboard  # noqa: E402
from spacetime_video.pipeline import Known, generate_embedded  # noqa: E402

CYCLE = ("right", "left", "still", "up", "down")
PHRASE = {"right": "moves to the right", "left": "moves to the left", "up": "moves up", "down": "moves down",
          "still": "stays still"}
FPS = 8.0


def storyboard(seconds: float, segment: float = 4.0) -> tuple[str, list[tuple[float, str, str, str]]]:
    n = max(1, round(seconds / segment))
    segs = [(segment, "red", "circle", CYCLE[i % len(CYCLE)]) for i in range(n)]
    text = "\n".join(f"{s:g}: a {c} {sh} {PHRASE[d]} on a black background" for s, c, sh, d in segs)
    return text, segs


def naive(text: str, seed: int) -> torch.Tensor:
    """Extend forward chained by hand: the last 5 frames known, the segment's prompt, no drift control."""
    segs = parse_storyboard(text)
    total = 1 + 4 * -(-(round(FPS * sum(s.seconds for s in segs)) - 1) // 4)
    ends, acc = [], 0.0
    for s in segs:
        acc += s.seconds * FPS
        ends.append(acc)
    out, i = None, 0
    while out is None or out.shape[0] < total:
        pos = 0 if out is None else out.shape[0] - 5
        prompt = segs[next((j for j, e in enumerate(ends) if pos < e), len(segs) - 1)].prompt
        known = None if out is None else [Known(out[-5:], "start")]
        v = ((generate_embedded(prompt, seed=seed + i, known=known).permute(1, 2, 3, 0) + 1) / 2).clamp(0, 1)
        out = v if out is None else torch.cat([out, v[5:]])
        i += 1
    return out[:total]


METHODS = {
    "ours (pixels, overlap 1, anchor 0.5)": dict(),
    "ours, no anchor": dict(anchor=0.0),
    "ours, overlap 2": dict(overlap=2),
    "ours, one latent timeline (overlap 2)": dict(continuity="latents", overlap=2),
}


def methods(seed: int) -> None:
    text, segs = storyboard(60)
    print(L.HEADER)
    for name, options in METHODS.items():
        t0 = time.perf_counter()
        clip = generate_long_embedded(text, seed=seed, **options)
        m = L.measure(clip.frames, segs, FPS)
        print(L.row(name, m, f"{clip.windows} windows, {time.perf_counter() - t0:.0f} s"), flush=True)
    t0 = time.perf_counter()
    frames = naive(text, seed)
    print(L.row("naive chaining (extend forward, 5 known frames)", L.measure(frames, segs, FPS),
                f"{time.perf_counter() - t0:.0f} s"), flush=True)


def one_run(seconds: float, seed: int) -> None:
    """A run whose frames are streamed away (as the node writes them): prints its peak RSS and time."""
    text, _ = storyboard(seconds)
    t0 = time.perf_counter()
    clip = generate_long_embedded(text, seed=seed, on_frames=lambda f: None)
    print(json.dumps({"seconds": time.perf_counter() - t0, "frames": clip.frame_count,
                      "peak_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))


def scaling(seed: int, threads: int) -> None:
    runs = {}
    for seconds in (10, 60):
        out = subprocess.run([sys.executable, __file__, "--one", str(seconds), "--seed", str(seed),
                              "--threads", str(threads)], capture_output=True, text=True, check=True)
        runs[seconds] = json.loads(out.stdout.strip().splitlines()[-1])
    a, b = runs[10], runs[60]
    print(f"10 s: {a['frames']} frames, {a['seconds']:.1f} s, peak RSS {a['peak_rss_kb'] / 1024:.0f} MiB; "
          f"60 s: {b['frames']} frames, {b['seconds']:.1f} s, peak RSS {b['peak_rss_kb'] / 1024:.0f} MiB")
    print(f"peak RSS 60 s / 10 s: {b['peak_rss_kb'] / a['peak_rss_kb']:.3f} (target <= 1.2); "
          f"time 60 s / 10 s: {b['seconds'] / a['seconds']:.2f} (target <= 6.6)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--parts", default="methods,scaling")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--one", type=float, help=argparse.SUPPRESS)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    if a.one:
        one_run(a.one, a.seed)
        return
    if "methods" in a.parts:
        methods(a.seed)
    if "scaling" in a.parts:
        scaling(a.seed, a.threads)


if __name__ == "__main__":
    main()
