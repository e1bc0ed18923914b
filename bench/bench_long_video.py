"""A coherent minute on the embedded model: our long-video loop against naive chaining, side by side.

A 60-second storyboard at 8 fps (481 frames) of 15 four-second segments, one red circle on a
black background, directions in a fixed cycle (right, left, still, up, down). Same seeds, same
windows (17 frames) for every method; each row is the mean over the seeds (``--seeds``):

- ``ours``: ``long_video.generate_long_embedded`` with its defaults (continuity "pixels",
  overlap 2, anchor 0.5), and the variants named in the table (overlap 1, no anchor, one
  latent timeline);
- ``naive``: "extend forward" chained by hand, as the shipped workflow is used: each window is
  ``generate_embedded`` with the last 5 frames known and the prompt of the segment it starts in,
  with no drift control;
- ComfyUI's own context windows (``WanContextWindowsManual``, 17 frames, overlap 5) on our MODEL of
  the embedded model, the whole latent sampled at once under one prompt (the node takes one).

Printed: the measures of ``long_metrics.py`` per method (and, per method, how the segments that
start with little room ahead fare: ``long_metrics.room``), then the memory and time of ours for
10 s and for 60 s (each in a fresh process: peak RSS and wall time), as ratios. With 3 seeds
the run takes about 40 minutes on 2 CPU cores.

``--segment 2`` makes the same minute of 30 two-second segments (a segment as long as the
world's training clips, so its motion fits in the frame).

    python bench/bench_long_video.py [--parts methods,scaling] [--segment 4] [--threads 1]
"""
from __future__ import annotations

import argparse
import json
import math
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
    """Segments of about ``segment`` seconds (all equal) that last ``seconds`` together."""
    n = max(1, math.ceil(seconds / segment - 1e-9))
    segs = [(seconds / n, "red", "circle", CYCLE[i % len(CYCLE)]) for i in range(n)]
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
    "ours (defaults: pixels, overlap 2, anchor 0.5)": dict(),
    "ours, overlap 1": dict(overlap=1),
    "ours, no anchor": dict(anchor=0.0),
    "ours, one latent timeline": dict(continuity="latents"),
    "ours, prompt of the segment holding most of a window's new frames": "majority",
    "naive chaining (extend forward, 5 known frames)": "naive",
    "ComfyUI context windows (WanContextWindowsManual, one prompt)": "native",
}


def majority(text: str, seed: int) -> torch.Tensor:
    """Ours with the other rule for a window's prompt: the segment that holds most of its new frames
    (a window straddling a change takes the next segment's prompt early)."""
    from spacetime_video.long_video import storyboard as sb
    from spacetime_video.long_video import timeline

    def weights(segments, fps, win, blend, stride_t=4):
        w = sb.window_weights(segments, fps, win, True, stride_t)
        return {max(w, key=lambda j: (w[j], j)): 1.0}
    timeline.window_weights = weights
    try:
        return generate_long_embedded(text, seed=seed).frames
    finally:
        timeline.window_weights = sb.window_weights


def native(text: str, seed: int) -> torch.Tensor:
    """The whole clip sampled at once by ComfyUI's sampler on our MODEL of the embedded model, with
    ComfyUI's own context windows (17 frames, overlap 5 frames, as ours); native context windows
    take one conditioning, so the first segment's prompt stands for the storyboard."""
    import gpu_check
    from gpu_models import import_comfy

    import_comfy(gpu_check.Device("cpu"))
    import comfy.sample
    import comfy.samplers
    from comfy_extras.nodes_context_windows import WanContextWindowsManualNode

    from spacetime_video import samplers
    from spacetime_video.model.embedded import config as C
    from spacetime_video.model.embedded import load_embedded
    from spacetime_video.nodes.comfy_model import latent_format_for, wrap_dit

    m = load_embedded()
    fmt = latent_format_for(m.vae.config.z_dim, m.vae.latent_mean.flatten(), m.vae.latent_std.flatten())
    model = wrap_dit(m.dit, shift=C.DEFAULT_SHIFT, per_token=True, latent_format=fmt, name="embedded")
    model = WanContextWindowsManualNode.execute(model, context_length=C.FRAMES, context_overlap=5,
                                                context_schedule="standard_static", context_stride=1,
                                                closed_loop=False, fuse_method="pyramid").result[0]
    segs = parse_storyboard(text)
    frames = 1 + 4 * -(-(round(FPS * sum(s.seconds for s in segs)) - 1) // 4)
    shape = (1, C.Z_DIM, (frames - 1) // 4 + 1, C.SIZE // 4, C.SIZE // 4)
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    pos = [[m.text_encoder.encode([segs[0].prompt]), {}]]
    neg = [[m.text_encoder.encode([""]), {}]]
    z = comfy.sample.sample_custom(model, noise, C.DEFAULT_GUIDANCE, comfy.samplers.KSAMPLER(samplers.SOLVERS["unipc"]),
                                   samplers.flow_sigmas(C.DEFAULT_STEPS, C.DEFAULT_SHIFT), pos, neg,
                                   torch.zeros(shape), seed=seed)
    return ((m.vae.decode(z)[0].permute(1, 2, 3, 0) + 1) / 2).clamp(0, 1)


def methods(seeds: list[int], names: list[str], segment: float = 4.0) -> None:
    """Each method on each seed; the table gives the mean of each measure over the seeds."""
    text, segs = storyboard(60, segment)
    print(f"storyboard: {len(segs)} segments of {segs[0][0]:g} s, cycle {', '.join(CYCLE)}; seeds {seeds}")
    print(L.HEADER)
    notes = []
    for name in names:
        options, runs, rooms, t0 = METHODS[name], [], [], time.perf_counter()
        for seed in seeds:
            if options in ("naive", "native"):
                frames = (naive if options == "naive" else native)(text, seed)
            elif options == "majority":
                frames = majority(text, seed)
            else:
                frames = generate_long_embedded(text, seed=seed, **options).frames
            runs.append(L.measure(frames, segs, FPS))
            rooms += L.room(frames, segs, FPS)
        mean = {k: sum(r[k] for r in runs) / len(runs) for k in runs[0]}
        print(L.row(name, mean, f"{(time.perf_counter() - t0) / len(seeds):.0f} s a run"), flush=True)
        notes.append(f"{name}: {L.room_line(rooms)}")
    print("\nWhere the segments that ask for a direction start (travel left before the frame's edge):")
    print("\n".join(f"- {n}" for n in notes))


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
    p.add_argument("--seed", type=int, default=0, help="the seed of the scaling runs")
    p.add_argument("--seeds", default="0,1,2", help="seeds of the methods part")
    p.add_argument("--methods", default=",".join(str(i) for i in range(len(METHODS))),
                   help="which rows of the methods part (indices)")
    p.add_argument("--segment", type=float, default=4.0,
                   help="seconds of each segment of the methods part's storyboard (the issue's: 4)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--one", type=float, help=argparse.SUPPRESS)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    if a.one:
        one_run(a.one, a.seed)
        return
    if "methods" in a.parts:
        names = list(METHODS)
        methods([int(x) for x in a.seeds.split(",")], [names[int(i)] for i in a.methods.split(",")], a.segment)
    if "scaling" in a.parts:
        scaling(a.seed, a.threads)


if __name__ == "__main__":
    main()
