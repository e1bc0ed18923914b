"""Benchmark (not a test): how many DiT evaluations the step cache saves and what it costs.

* ``embedded``: the embedded model on the 22 held-out prompts of its evaluation set (11 held-out
  colour/shape/motion combinations x 2, the seeds and backgrounds of ``training/evaluate.py``),
  20 steps (``--steps``): for every ``speed`` preset, DiT evaluations (one per sample and pass) against the
  uncached run, PSNR of the video against the uncached video of the same seed, and the prompts
  whose colour, shape and motion the analyser reads correctly. ``--solver`` picks the solver of
  every run (the uncached reference too), ``--set validation`` the 44 validation prompts instead
  (for choosing settings without looking at the 22), ``--speeds`` adds rows of settings of one's own.
* ``trajectory``: how smooth the guided output is along UniPC's and Euler's trajectories (what a
  forecast has to follow), per step, on the first ``--prompts`` held-out prompts.
* ``easycache``: the same MODEL in ComfyUI's own sampler, our cache without guidance truncation
  against ComfyUI's native EasyCache over a range of thresholds each, on the first ``--prompts``
  prompts: evaluations and PSNR (decoded video against the uncached one), so the two curves can be
  read at equal evaluation counts.
* ``steps``: which steps can be forecast at all: for each step of the schedule, a run that
  forecasts that one step only (the cache's own choice of forecast, taken when its predicted
  error is at most 2), against the uncached run: PSNR and adherent prompts.
* ``overhead``: the real Wan 2.1 1.3B DiT config with random bf16 weights on a small latent: time
  of one DiT step, the time of the cache's own bookkeeping per step (a cache call whose evaluation
  returns at once), and the wall time of a short run cached / uncached with the default preset.

Run (from the repository root, in the project's environment, after ``make setup``):

    python bench/bench_step_cache.py [--parts embedded,steps,trajectory,easycache,overhead] [--steps 20]
        [--threads 2] [--solver unipc] [--set heldout] [--speeds 'name:threshold=0.2,...']

Results with date, machine and command: bench/RESULTS.md.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from spacetime_video.model.embedded import load_embedded
from spacetime_video.pipeline import generate_embedded
from spacetime_video.samplers.step_cache import SPEEDS, Speed, StepCache
from spacetime_video.training.analyser import analyse
from spacetime_video.training.evaluate import heldout_prompts, validation_prompts
from spacetime_video.training.train_vae import psnr

ROOT = Path(__file__).resolve().parents[1]
COMFY = Path(os.environ.get("SPACETIME_COMFYUI", ROOT / ".host" / "ComfyUI"))


def adheres(video: torch.Tensor, combo: tuple[str, str, str]) -> bool:
    a = analyse(video)
    return (a.colour, a.shape, a.motion) == combo


def parse_speeds(text: str) -> dict[str, Speed]:
    """``name:field=value,...;name:...`` -> named ``Speed`` settings (fields as in ``Speed``)."""
    out = {}
    for spec in filter(None, (t.strip() for t in text.split(";"))):
        name, _, fields = spec.partition(":")
        values = {k: (int(v) if k == "max_skips" else v == "1" if k == "reuse_text" else float(v))
                  for k, v in (f.split("=") for f in fields.split(",") if f)}
        out[name] = Speed(**values)
    return out


def part_embedded(model, steps: int, solver: str = "unipc", prompts_name: str = "heldout",
                  extra: dict[str, Speed] | None = None) -> None:
    prompts = heldout_prompts() if prompts_name == "heldout" else validation_prompts()
    print(f"\n## embedded model, {len(prompts)} {prompts_name} prompts, {steps} steps ({solver}, guidance on)")
    refs, ok_ref = [], 0
    for text, seed, combo in prompts:
        refs.append(generate_embedded(text, steps=steps, seed=seed, model=model, solver=solver))
        ok_ref += adheres(refs[-1], combo)
    total = 2 * steps
    print(f"| speed | DiT evaluations (of {total}) | fewer | PSNR mean / min (dB) | adherent prompts |")
    print("|---|---|---|---|---|")
    print(f"| uncached | {total} | 1.00x | - | {ok_ref} / {len(prompts)} |")
    settings = {n: s for n, s in SPEEDS.items() if n != "off"} | (extra or {})
    for name, speed in settings.items():
        evals, db, ok = [], [], 0
        for (text, seed, combo), ref in zip(prompts, refs):
            cache = StepCache(speed)
            v = generate_embedded(text, steps=steps, seed=seed, model=model, speed=cache, solver=solver)
            evals.append(cache.evaluated)
            db.append(psnr(v, ref))
            ok += adheres(v, combo)
        mean = statistics.mean(evals)
        print(f"| {name} | {mean:.1f} | {total / mean:.2f}x | {statistics.mean(db):.2f} / {min(db):.2f} | "
              f"{ok} / {len(prompts)} |", flush=True)


class OneStep(StepCache):
    """A cache that may forecast one step of the schedule only."""

    def __init__(self, only: int) -> None:
        super().__init__(Speed(threshold=2.0, warmup=0.0, cooldown=0.0, max_skips=1))
        self.only = only

    def may_skip(self, sigma: float) -> bool:
        return self.step_of(sigma) == self.only


def part_steps(model, steps: int, n_prompts: int) -> None:
    prompts = heldout_prompts()[:n_prompts]
    refs = [generate_embedded(text, steps=steps, seed=seed, model=model) for text, seed, _ in prompts]
    ok_ref = sum(adheres(v, combo) for v, (_, _, combo) in zip(refs, prompts))
    print(f"\n## embedded model, {len(prompts)} held-out prompts, {steps} steps: one step forecast, all others "
          f"evaluated (uncached: {ok_ref} / {len(prompts)} adherent)")
    print("| step | forecast taken | PSNR mean / min (dB) | adherent prompts |")
    print("|---|---|---|---|")
    for i in range(steps):
        taken, db, ok = 0, [], 0
        for (text, seed, combo), ref in zip(prompts, refs):
            cache = OneStep(i)
            v = generate_embedded(text, steps=steps, seed=seed, model=model, speed=cache)
            taken += cache.skipped > 0
            db.append(psnr(v, ref))
            ok += adheres(v, combo)
        if taken:
            print(f"| {i} | {taken} / {len(prompts)} | {statistics.mean(db):.2f} / {min(db):.2f} | {ok} / {len(prompts)} |",
                  flush=True)
        else:
            print(f"| {i} | 0 / {len(prompts)} | - | - |", flush=True)


class Recorder(StepCache):
    """Evaluates every step and keeps (sigma, output of the guided pair) of each call."""

    def __init__(self) -> None:
        super().__init__("off")
        self.calls: list[tuple[float, torch.Tensor]] = []

    def __call__(self, rows, sigma, x, evaluate):
        out = evaluate()
        self.calls.append((sigma, out.detach().clone()))
        return out


def part_trajectory(model, steps: int, n_prompts: int, guidance: float = 4.0) -> None:
    """How smooth the guided output is along each solver's trajectory: the cosine between its
    change into a step and its change into the next (near 1: a steady drift that a straight line
    forecasts; below 0: a zig-zag that reuse and the line both miss), and the relative L1 change
    per step, averaged over the first ``n_prompts`` held-out prompts."""
    prompts = heldout_prompts()[:n_prompts]
    print(f"\n## embedded model, {len(prompts)} held-out prompts, {steps} steps, guidance {guidance:g}: the guided "
          "output along each solver's trajectory")
    print("| solver | measure | " + " | ".join(str(k) for k in range(2, steps)) + " |")
    print("|---|---|" + "---|" * (steps - 2))
    for solver in ("unipc", "euler"):
        cos, change = [[] for _ in range(steps)], [[] for _ in range(steps)]
        for text, seed, _ in prompts:
            rec = Recorder()
            generate_embedded(text, steps=steps, seed=seed, model=model, speed=rec, solver=solver)
            g = [o[1:] + guidance * (o[:1] - o[1:]) for _, o in rec.calls]      # rows: conditional, unconditional
            for k in range(2, steps):
                a, b = (g[k] - g[k - 1]).flatten(), (g[k - 1] - g[k - 2]).flatten()
                cos[k].append(float(torch.nn.functional.cosine_similarity(a, b, dim=0)))
                change[k].append(float((g[k] - g[k - 1]).abs().mean() / g[k].abs().mean()))
        print(f"| {solver} | cosine of successive changes | " +
              " | ".join(f"{statistics.mean(c):+.2f}" for c in cos[2:]) + " |")
        print(f"| {solver} | relative change | " + " | ".join(f"{statistics.mean(c):.2f}" for c in change[2:]) + " |",
              flush=True)


def comfy_setup():
    sys.path.insert(0, str(COMFY))
    import comfy.cli_args

    comfy.cli_args.args.cpu = True
    import comfy.model_management  # noqa: F401


def part_easycache(model, n_prompts: int, steps: int) -> None:
    comfy_setup()
    import comfy.sample
    import comfy.samplers
    from comfy_extras.nodes_easycache import EasyCacheNode

    from spacetime_video import samplers
    from spacetime_video.nodes.embedded_nodes import SpacetimeEmbeddedLoader, SpacetimeTextEncode
    from spacetime_video.nodes.step_cache import patch_model

    from spacetime_video.model.embedded import config as C

    mp, vae, enc = SpacetimeEmbeddedLoader.execute(shift=C.DEFAULT_SHIFT).result
    z, (st, sh, sw) = model.vae.config.z_dim, model.vae.config.stride
    latent = (1, z, (C.FRAMES - 1) // st + 1, C.SIZE // sh, C.SIZE // sw)
    inner = mp.model.diffusion_model
    prompts = heldout_prompts()[:n_prompts]
    neg = SpacetimeTextEncode.execute(enc, "").result[0]

    def run(patched, text, seed) -> tuple[torch.Tensor, int]:
        rows, real = [0], inner._forward

        def counting(x, *args, **kwargs):
            rows[0] += x.shape[0]
            return real(x, *args, **kwargs)
        inner._forward = counting
        try:
            pos = SpacetimeTextEncode.execute(enc, text).result[0]
            noise = torch.randn(latent, generator=torch.Generator().manual_seed(seed))
            out = comfy.sample.sample_custom(patched, noise, C.DEFAULT_GUIDANCE,
                                             comfy.samplers.KSAMPLER(samplers.SOLVERS["unipc"]),
                                             samplers.flow_sigmas(steps, C.DEFAULT_SHIFT), pos, neg,
                                             torch.zeros_like(noise), seed=seed)
        finally:
            del inner._forward
        frames = vae.decode(out)[0]                  # ComfyUI IMAGE frames [T, H, W, 3] in 0..1
        return frames.movedim(-1, 0) * 2 - 1, rows[0]   # as ours: [3, T, H, W] in [-1, 1]

    refs = [run(mp, text, seed)[0] for text, seed, _ in prompts]
    print(f"\n## ComfyUI sampler, embedded MODEL, {len(prompts)} prompts, {steps} steps: our cache "
          "(no guidance truncation) against native EasyCache")
    print(f"| cache | setting | DiT evaluations (of {2 * steps}) | PSNR mean (dB) |")
    print("|---|---|---|---|")
    curves = {"ours": [], "EasyCache": []}
    settings = [("ours", t, lambda t=t: patch_model(mp, Speed(threshold=t, warmup=0.1, cooldown=0.05, max_skips=5,
                                                              reuse_text=True)))
                for t in (0.1, 0.2, 0.3, 0.5, 1.0, 2.0)]
    settings += [("EasyCache", t, lambda t=t: EasyCacheNode.execute(mp, reuse_threshold=t, start_percent=0.1,
                                                                     end_percent=0.95, verbose=False).result[0])
                 for t in (0.05, 0.1, 0.2, 0.3, 0.5, 1.0)]
    for name, t, make in settings:
        evals, db = [], []
        for (text, seed, _), ref in zip(prompts, refs):
            v, n = run(make(), text, seed)
            evals.append(n)
            db.append(psnr(v, ref))
        curves[name].append((statistics.mean(evals), statistics.mean(db)))
        print(f"| {name} | threshold {t} | {statistics.mean(evals):.1f} | {statistics.mean(db):.2f} |", flush=True)
    print("\nat equal evaluation counts (EasyCache's PSNR interpolated to our counts):")
    easy = sorted(curves["EasyCache"])
    for n, db in curves["ours"]:
        below = [p for p in easy if p[0] <= n]
        above = [p for p in easy if p[0] >= n]
        if not below or not above:
            print(f"  {n:.1f} evaluations: ours {db:.2f} dB, EasyCache does not reach this count")
            continue
        (n0, d0), (n1, d1) = below[-1], above[0]
        ref = d0 if n1 == n0 else d0 + (d1 - d0) * (n - n0) / (n1 - n0)
        print(f"  {n:.1f} evaluations: ours {db:.2f} dB, EasyCache {ref:.2f} dB ({db - ref:+.2f})")


def part_overhead(threads: int, rounds: int) -> None:
    sys.path.insert(0, str(ROOT / "tests"))
    from dit_helpers import random_state_dict

    from spacetime_video.model.dit import DIT_PRESETS, TextMemo, load_dit

    cfg = DIT_PRESETS["wan2.1-t2v-1.3b"]
    sd = {k: v.to(torch.bfloat16) for k, v in random_state_dict(cfg, 0).items()}
    dit = load_dit(sd, dtype=torch.bfloat16, compute_dtype=torch.bfloat16, config=cfg)
    del sd
    x = torch.randn(2, cfg.in_dim, 3, 16, 16)
    ctx = torch.randn(2, cfg.text_len, cfg.text_dim)
    with torch.no_grad():
        dit(x, torch.tensor([900.0, 900.0]), ctx)
        t0 = time.perf_counter()
        dit(x, torch.tensor([800.0, 800.0]), ctx)
        step = time.perf_counter() - t0

    def bookkeeping(shape) -> float:
        """Seconds a step of the cache's own work takes (its evaluation returns at once)."""
        sigmas, fake = torch.linspace(1, 0, 21), torch.randn(shape)
        cache = StepCache(Speed(threshold=1e-9, warmup=0.0, cooldown=0.0, max_skips=1), sigmas)
        t0 = time.perf_counter()
        for s in sigmas[:-1].tolist():
            cache(("cond", "uncond"), s, fake, lambda: fake)
        return (time.perf_counter() - t0) / 20
    book, real = bookkeeping(x.shape), (2, 16, 21, 60, 104)
    print(f"\n## Wan 2.1 1.3B config, random bf16 weights, latent {tuple(x.shape)} (cond + uncond), {threads} threads")
    print(f"one DiT step {step:.3f} s; cache bookkeeping {book * 1e3:.2f} ms a step = {100 * book / step:.3f}% of it")
    print(f"cache bookkeeping at the 480x832x81 latent {real}: {bookkeeping(real) * 1e3:.1f} ms a step")

    from spacetime_video.samplers import cfg_denoiser, flow_sigmas, sample, step_range_to_sigma_range
    from spacetime_video.samplers.step_cache import DEFAULT_SPEED, guided_steps

    def run(speed: str, steps: int = 8) -> tuple[float, int]:
        sigmas, noise = flow_sigmas(steps, 5.0), torch.randn(1, *x.shape[1:], generator=torch.Generator().manual_seed(0))
        cache = StepCache(speed, sigmas)
        guided = guided_steps(cache.speed, steps)
        rng = None if guided >= steps else step_range_to_sigma_range(sigmas, 0, max(guided, 1))

        def model(z, sigma, context):
            rows = ("cond", "uncond") if z.shape[0] == 2 else ("cond",)
            v = cache(rows, float(sigma[0]), z, lambda: dit(z, 1000 * sigma, context))
            return z - sigma.view(-1, 1, 1, 1, 1) * v
        den = cfg_denoiser(model, {"context": ctx[:1]}, {"context": ctx[1:]}, 5.0, sigma_range=rng)
        dit.use_text_memo(TextMemo() if cache.speed.reuse_text else None)
        t0 = time.perf_counter()
        with torch.no_grad():
            sample(den, noise, sigmas, solver="unipc", disable=True)
        dit.use_text_memo(None)
        return time.perf_counter() - t0, cache.evaluated
    times: dict[str, list[float]] = {"off": [], DEFAULT_SPEED: []}
    counts: dict[str, int] = {}
    for _ in range(rounds):                       # alternated, best of each: fair under other load
        for speed in times:
            t, counts[speed] = run(speed)
            times[speed].append(t)
    t_off, t_on = min(times["off"]), min(times[DEFAULT_SPEED])
    print(f"8 steps, best of {rounds}: uncached {t_off:.1f} s ({counts['off']} evaluations), {DEFAULT_SPEED} "
          f"{t_on:.1f} s ({counts[DEFAULT_SPEED]}): wall-time ratio cached / uncached {t_on / t_off:.2f}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--parts", default="embedded,easycache,overhead")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=20, help="sampling steps of the embedded, easycache and steps parts")
    p.add_argument("--prompts", type=int, default=8, help="prompts of the easycache, steps and trajectory parts")
    p.add_argument("--rounds", type=int, default=2, help="alternated timing rounds of the overhead part")
    p.add_argument("--solver", default="unipc", help="solver of the embedded part (unipc, euler, dpmpp_2m)")
    p.add_argument("--set", default="heldout", choices=("heldout", "validation"), help="prompts of the embedded part")
    p.add_argument("--speeds", default="", help="more rows for the embedded part: 'name:threshold=0.2,"
                                                "cfg_until=0.6;name2:...' (fields of Speed)")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    parts = a.parts.split(",")
    model = load_embedded() if {"embedded", "easycache", "steps", "trajectory"} & set(parts) else None
    if "embedded" in parts:
        part_embedded(model, a.steps, a.solver, a.set, parse_speeds(a.speeds))
    if "trajectory" in parts:
        part_trajectory(model, a.steps, a.prompts)
    if "steps" in parts:
        part_steps(model, a.steps, a.prompts)
    if "easycache" in parts:
        part_easycache(model, a.prompts, a.steps)
    if "overhead" in parts:
        part_overhead(a.threads, a.rounds)


if __name__ == "__main__":
    main()
