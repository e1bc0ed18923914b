"""Benchmark (not a test): the embedded model's 4-step distilled LoRA against 20-step sampling.

The 22 held-out prompts of the embedded evaluation set (11 held-out colour/shape/motion
combinations x 2, the seeds and backgrounds of ``training/evaluate.py``), each sampled:

* 20 UniPC steps with guidance 4 (40 DiT evaluations): the reference, what the LoRA was distilled from;
* 4 steps, cfg 1, with the distilled LoRA (4 evaluations): UniPC (the default) and Euler (what it
  was trained for); and the LoRA within the 8 evaluations that 5x fewer allows: 6 UniPC or 8 Euler
  steps without guidance, or 4 steps with guidance 2;
* 4 Euler steps, cfg 1, without it (4 evaluations), and 4 UniPC steps with guidance 4 (8 evaluations):
  the base model at the same few steps.

For each: the prompts whose colour, shape and motion the analyser reads as asked (and each
attribute alone), PSNR of the decoded clip against the 20-step clip of the same seed, and the
wall time of one clip (text, sampling and decode).

``--prompts validation``: the same held-out combinations on 44 other seeds (the
3rd to 6th of each combination), for choosing sampling settings without looking at the 22.

    python bench/bench_distill.py [--threads 2] [--prompts heldout|validation]

Results with date, machine and command: bench/RESULTS.md.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from spacetime_video.model.embedded import config as C
from spacetime_video.model.embedded import load_embedded
from spacetime_video.pipeline import generate_embedded
from spacetime_video.training.analyser import analyse
from spacetime_video.training.evaluate import heldout_prompts, validation_prompts
from spacetime_video.training.train_vae import psnr


SETTINGS = {  # name -> (DiT evaluations, generate_embedded options)
    "20 steps, unipc, guidance 4": (40, dict(steps=20, guidance=C.DEFAULT_GUIDANCE, solver="unipc")),
    "4 steps, distilled LoRA, unipc, cfg 1": (4, dict(distilled=True)),
    "4 steps, distilled LoRA, euler, cfg 1": (4, dict(distilled=True, solver="euler")),
    # a 5x target allows 8 evaluations: the LoRA at more steps, or with some guidance back
    "6 steps, distilled LoRA, unipc, cfg 1": (6, dict(distilled=True, steps=6)),
    "8 steps, distilled LoRA, euler, cfg 1": (8, dict(distilled=True, steps=8, solver="euler")),
    "4 steps, distilled LoRA, unipc, guidance 2": (8, dict(distilled=True, guidance=2.0)),
    "4 steps, no LoRA, euler, cfg 1": (4, dict(steps=4, guidance=1.0, solver="euler")),
    "4 steps, no LoRA, unipc, guidance 4": (8, dict(steps=4, guidance=C.DEFAULT_GUIDANCE, solver="unipc")),
}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--prompts", choices=("heldout", "validation"), default="heldout")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    base, distilled = load_embedded(), load_embedded(distilled=True)
    prompts = heldout_prompts() if a.prompts == "heldout" else validation_prompts()
    generate_embedded("a red ball rolls to the left", model=base, steps=2)          # warm-up
    refs: list[torch.Tensor] = []
    print(f"## embedded model, {len(prompts)} {a.prompts} prompts, {a.threads} threads")
    print("| sampling | DiT evaluations | adherent prompts (colour, shape, motion all right) | colour / shape / "
          "motion right | PSNR vs 20 steps, mean / min (dB) | wall time a clip (s) |")
    print("|---|---|---|---|---|---|")
    for name, (evals, options) in SETTINGS.items():
        model = distilled if options.get("distilled") else base
        ok, right, db, seconds = 0, [0, 0, 0], [], []
        for i, (text, seed, combo) in enumerate(prompts):
            t0 = time.perf_counter()
            v = generate_embedded(text, seed=seed, model=model, **options)
            seconds.append(time.perf_counter() - t0)
            r = analyse(v)
            read = (r.colour, r.shape, r.motion)
            ok += read == combo
            right = [n + (x == y) for n, x, y in zip(right, read, combo)]
            if not refs or len(refs) < len(prompts):
                refs.append(v)
            else:
                db.append(psnr(v, refs[i]))
        quality = f"{statistics.mean(db):.2f} / {min(db):.2f}" if db else "-"
        print(f"| {name} | {evals} | {ok} / {len(prompts)} | {' / '.join(map(str, right))} | {quality} | "
              f"{statistics.median(seconds):.3f} |", flush=True)


if __name__ == "__main__":
    main()
