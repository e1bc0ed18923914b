"""A coherent minute on the embedded model: our long-video loop against naive chaining, side by side.

A 60-second storyboard at 8 fps (481 frames) of 15 four-second segments, one red circle on a
black background, directions in a fixed cycle (right, left, still, up, down). Same seeds, same
windows (17 frames) for every method; each row is the mean over the seeds (``--seeds``):

- ``ours``: ``long_video.generate_long_embedded`` with its defaults (continuity "pixels",
  overlap 2, anchor 0.5, guidance 2), and the variants named in the table (overlap 1, no anchor,
  one latent timeline, guidance 4);
- ``naive``: "extend forward" chained by hand, as the shipped workflow is used: each window is
  ``generate_embedded`` with the last 5 frames known and the prompt of the segment it starts in,
  with no drift control, at the workflow's guidance 4 (and, in a row of its own, at 2);
- ComfyUI's own context windows (``WanContextWindowsManual``, 17 frames, overlap 5) on our MODEL of
  the embedded model, the whole latent sampled at once under one prompt (the node takes one), at
  the model's default guidance 4.

Printed: the measures of ``long_metrics.py`` per method (and, per method, how the segments that
start with little room ahead fare: ``long_metrics.room``), then the memory and time of ours for
10 s and for 60 s (each in a fresh process: peak RSS and wall time), as ratios. With 3 seeds
the run takes about 30 minutes with one thread. A row ``reference`` is the storyboard drawn by
the world's renderer: what a clip that does exactly what it asks scores. Two more put that clip
through the embedded VAE: encoded and decoded whole (as ComfyUI's context windows and our one
latent timeline decode a minute) and window by window (as our windows are decoded): what the VAE
alone does to each way of decoding.

``--segment 2`` makes the same minute of 30 two-second segments (a segment as long as the
world's training clips, so its motion fits in the frame).

``--parts walls``: where a window that goes on from frames at the frame's margin leaves the object,
at guidance 1, 2 and 4 (the world's "walls" clips; see ``walls``).

``--weights DIR`` measures an embedded model saved elsewhere (e.g. a fine-tune's folder) instead
of the shipped weights.

    python bench/bench_long_video.py [--parts methods,scaling,walls] [--segment 4] [--threads 1] [--weights DIR]
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


def naive(text: str, seed: int, guidance: float | None = None) -> torch.Tensor:
    """Extend forward chained by hand: the last 5 frames known, the segment's prompt, no drift control;
    the extend workflow's guidance (the model's default) unless ``guidance`` is given."""
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
        v = generate_embedded(prompt, seed=seed + i, known=known, guidance=guidance)
        v = ((v.permute(1, 2, 3, 0) + 1) / 2).clamp(0, 1)
        out = v if out is None else torch.cat([out, v[5:]])
        i += 1
    return out[:total]


METHODS = {
    "ours (defaults: pixels, overlap 2, anchor 0.5, guidance 2)": dict(),
    "ours, overlap 1": dict(overlap=1),
    "ours, no anchor": dict(anchor=0.0),
    "ours, one latent timeline": dict(continuity="latents"),
    "ours, prompt of the segment holding most of a window's new frames": "majority",
    "naive chaining (extend forward, 5 known frames)": "naive",
    "ComfyUI context windows (WanContextWindowsManual, one prompt)": "native",
    "ours, guidance 4": dict(guidance=4.0),
    "naive chaining, guidance 2": "naive, guidance 2",
    "reference: the storyboard drawn by the world's renderer": "reference",
    "reference through the embedded VAE, encoded and decoded whole": "reference, vae whole",
    "reference through the embedded VAE, in windows of 17 frames": "reference, vae windows",
}


def reference(segs: list[tuple[float, str, str, str]], seed: int) -> torch.Tensor:
    """The storyboard as the training world draws motion: the object (a size and a speed of a
    training clip, drawn from ``seed``) starts in the middle, moves each segment's way and rests at
    the margin the world's tracks keep from the edge. What a clip that does exactly what the
    storyboard asks scores; its still frames do not change at all, so where more than half of them
    are still the median change is 0 and the seam ratio has no bound."""
    import random

    from spacetime_video.training import world

    rng = random.Random(seed)
    r = rng.uniform(0.1, 0.15) * world.SIZE
    speed = rng.uniform(0.3, 0.45) * world.SIZE / (world.FRAMES - 1)      # px per frame
    lo, hi = 1.35 * r + 2, world.SIZE - 1.35 * r - 2
    step = {"right": (1, 0), "left": (-1, 0), "down": (0, 1), "up": (0, -1), "still": (0, 0)}
    x = y = world.SIZE / 2
    ends, acc = [], 0.0
    for s in segs:
        acc += s[0] * FPS
        ends.append(acc)
    total = 1 + 4 * -(-(round(acc) - 1) // 4)
    frames = []
    for t in range(total):
        seg = segs[next((j for j, e in enumerate(ends) if t < e), len(segs) - 1)]
        obj = world.ObjectSpec(seg[1], seg[2], "still", (x, y), (x, y), (r, r))
        frames.append(world.render((obj,), "black", frames=1))
        dx, dy = step[seg[3]]
        x, y = min(max(x + dx * speed, lo), hi), min(max(y + dy * speed, lo), hi)
    return ((torch.cat(frames, dim=1).permute(1, 2, 3, 0) + 1) / 2).clamp(0, 1)


def through_vae(frames: torch.Tensor, window: int | None = None) -> torch.Tensor:
    """IMAGE frames encoded and decoded by the embedded VAE: whole (one latent of every frame, as
    ComfyUI's context windows and one latent timeline decode), or window by window (``window``
    frames that share their first frame with the last one's last, as our windows decode)."""
    from spacetime_video.model.embedded import load_embedded

    vae = load_embedded().vae
    video = frames.permute(3, 0, 1, 2)[None] * 2 - 1
    with torch.no_grad():
        if window is None:
            return ((vae.decode(vae.encode(video))[0].permute(1, 2, 3, 0) + 1) / 2).clamp(0, 1)
        pieces = []
        for a in range(0, video.shape[2] - 1, window - 1):
            out = vae.decode(vae.encode(video[:, :, a:a + window]))[0]
            pieces.append(out if a == 0 else out[:, 1:])
    return ((torch.cat(pieces, dim=1).permute(1, 2, 3, 0) + 1) / 2).clamp(0, 1)


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


def joints(options: dict | str, frames: int) -> list[int] | None:
    """Where a method's windows join: the frame before each window's first new frame. Windows of 17
    frames that keep 1 + 4 (overlap - 1) frames (ours; naive chaining keeps 5); none for ComfyUI's
    blended context windows and the reference."""
    if options == "native" or str(options).startswith("reference"):
        return None
    keep = 1 + 4 * ((options.get("overlap", 2) if isinstance(options, dict) else 2) - 1)
    return list(range(16, frames - 1, 17 - keep))


def methods(seeds: list[int], names: list[str], segment: float = 4.0) -> None:
    """Each method on each seed; the table gives the mean of each measure over the seeds."""
    text, segs = storyboard(60, segment)
    print(f"storyboard: {len(segs)} segments of {segs[0][0]:g} s, cycle {', '.join(CYCLE)}; seeds {seeds}")
    print(L.HEADER)
    notes = []
    for name in names:
        options, runs, rooms, t0 = METHODS[name], [], [], time.perf_counter()
        for seed in seeds:
            if options == "reference":
                frames = reference(segs, seed)
            elif isinstance(options, str) and options.startswith("reference, vae"):
                frames = through_vae(reference(segs, seed), None if options.endswith("whole") else 17)
            elif options == "naive, guidance 2":
                frames = naive(text, seed, guidance=2.0)
            elif options in ("naive", "native"):
                frames = (naive if options == "naive" else native)(text, seed)
            elif options == "majority":
                frames = majority(text, seed)
            else:
                frames = generate_long_embedded(text, seed=seed, **options).frames
            runs.append(L.measure(frames, segs, FPS, joints(options, frames.shape[0])))
            rooms += L.room(frames, segs, FPS)
        mean = {k: sum(r[k] for r in runs) / len(runs) for k in runs[0]}
        seams = ", ".join(f"{r['seam_ratio']:.2f}" for r in runs)
        print(L.row(name, mean, f"{(time.perf_counter() - t0) / len(seeds):.0f} s a run; seams per seed {seams}"),
              flush=True)
        notes.append(f"{name}: {L.room_line(rooms)}")
    print("\nWhere the segments that ask for a direction start (travel left before the frame's edge):")
    print("\n".join(f"- {n}" for n in notes))


def walls(guidances: tuple[float, ...] = (1.0, 2.0, 4.0), clips: int = 24) -> None:
    """Where a continued window leaves an object that its first frames bring to the frame's margin:
    clips of the world's "walls" split that training never drew (seeds 10000..), their first frame
    (i2v) or first five frames (extend) known and their caption as the prompt, 20 steps at each
    guidance. Printed per setting: how far past the margin the object's centre ends (median, and how
    many clips end more than 3 px past it) and how many last frames hold other than one object."""
    from spacetime_video.model.embedded import load_embedded
    from spacetime_video.training import world

    m = load_embedded()
    print(f"\n{clips} walls clips (seeds 10000..): the object's centre at the last frame, past the margin "
          "where it should rest")
    print("| known frames | guidance | past the margin, median (px) | ends > 3 px past | last frame not one object |")
    print("|---|---|---|---|---|")
    for known in (1, 5):
        for g in guidances:
            past, far, other = [], 0, 0
            for seed in range(10000, 10000 + clips):
                clip = world.sample_clip(seed, "walls")
                obj = clip.objects[0]
                v = generate_embedded(clip.caption, seed=seed, guidance=g, model=m,
                                      known=[Known(clip.video[:, :known], "start")])
                frames = ((v.permute(1, 2, 3, 0) + 1) / 2).clamp(0, 1)
                found = L.blobs(frames[-1], L.background(frames))
                other += len(found) != 1
                if found:
                    c = max(found, key=lambda b: b[2])
                    axis = 0 if obj.motion in ("left", "right") else 1
                    d = (c[axis] - obj.end[axis]) * (1 if obj.motion in ("right", "down") else -1)
                    past.append(d)
                    far += d > 3
            past.sort()
            print(f"| {known} | {g:g} | {past[len(past) // 2]:.1f} | {far} / {clips} | {other} / {clips} |", flush=True)


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
        from spacetime_video.model.embedded import config as C
        out = subprocess.run([sys.executable, __file__, "--one", str(seconds), "--seed", str(seed),
                              "--threads", str(threads), "--weights", str(C.WEIGHTS_DIR)],
                             capture_output=True, text=True, check=True)
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
                   help="seconds of each segment of the methods part's storyboard (4 by default)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--weights", type=Path, default=None,
                   help="an embedded model folder to measure instead of the shipped weights")
    p.add_argument("--one", type=float, help=argparse.SUPPRESS)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    if a.weights:   # every method (and the scaling runs' fresh processes) loads the model from there
        from spacetime_video.model.embedded import config as C
        C.WEIGHTS_DIR = a.weights.resolve()
    if a.one:
        one_run(a.one, a.seed)
        return
    if "methods" in a.parts:
        names = list(METHODS)
        methods([int(x) for x in a.seeds.split(",")], [names[int(i)] for i in a.methods.split(",")], a.segment)
    if "scaling" in a.parts:
        scaling(a.seed, a.threads)
    if "walls" in a.parts:
        walls()


if __name__ == "__main__":
    main()
