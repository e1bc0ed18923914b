"""Measure the embedded tiny model on held-out attribute combinations (never seen in training).

    python scripts/eval_embedded.py [--weights DIR] [--per-combo 2] [--out metrics.json]
    python scripts/eval_expander.py [--per-combo 2] [--steps 20] [--out expander_eval.json]

``evaluate``: VAE reconstruction PSNR on held-out clips; text-to-video colour / shape / motion
accuracy read by the analyser; image-to-video first-frame PSNR and motion adherence; connect
(first and last frame) PSNR; extend-forward seam smoothness; and the time of one 17-frame,
20-step clip.

``evaluate_expander``: does the prompt expander help? For every held-out (colour, shape,
motion) combination a short, sloppy prompt such as "red ball left" is generated twice with the
same seed, as typed and after ``expand_prompt(..., model_family="embedded")`` (the offline
rules, which rewrite it in the model's training vocabulary); the accuracy of both and their
difference. Deterministic: prompts, seeds and clips are fixed.
"""
from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from pathlib import Path

import torch

from ..model import expand_prompt
from ..model.embedded import load_embedded
from ..model.embedded.vocab import BACKGROUNDS, words_for
from ..pipeline import Known, generate_embedded
from . import world
from .analyser import analyse
from .train_vae import psnr

log = logging.getLogger("spacetime.embedded.eval")


def heldout_prompts(per_combo: int = 2) -> list[tuple[str, int, tuple[str, str, str]]]:
    """(caption, seed, (colour, shape, motion)) of the held-out text-to-video prompts that
    :func:`evaluate` generates: every held-out combination ``per_combo`` times, each on its own
    background and seed (22 prompts at 2 per combination)."""
    bgs, out = list(BACKGROUNDS), []
    for ci, combo in enumerate(sorted(world.HELD_OUT)):
        for k in range(per_combo):
            out.append((world.caption_for(*combo, bgs[(ci + k) % len(bgs)]), 1000 * ci + k, combo))
    return out


def validation_prompts() -> list[tuple[str, int, tuple[str, str, str]]]:
    """The held-out combinations on other seeds and backgrounds (the 3rd to 6th of each: 44
    prompts), for choosing sampling settings without looking at :func:`heldout_prompts`."""
    return [p for i, p in enumerate(heldout_prompts(per_combo=6)) if i % 6 >= 2]


def _frac(xs: list[bool]) -> float:
    return sum(xs) / max(len(xs), 1)


def evaluate(weights: Path | None, per_combo: int, steps: int, guidance: float) -> dict:
    m = load_embedded(weights)
    out: dict = {}
    # VAE on held-out clips
    with torch.no_grad():
        vids = world.batch(list(range(16)), split="heldout")[0]
        rec = m.vae.decode(m.vae.encode(vids))
    out["vae_psnr_db"] = statistics.mean(psnr(rec[i], vids[i]) for i in range(len(vids)))

    combos = sorted(world.HELD_OUT)
    bgs = list(BACKGROUNDS)
    t2v, rows = {"colour": [], "shape": [], "motion": []}, []
    i2v_psnr, i2v_motion, conn_first, conn_last, seam = [], [], [], [], []
    for ci, (colour, shape, motion) in enumerate(combos):
        for k in range(per_combo):
            bg = bgs[(ci + k) % len(bgs)]
            prompt = world.caption_for(colour, shape, motion, bg)
            seed = 1000 * ci + k
            v = generate_embedded(prompt, steps=steps, guidance=guidance, seed=seed, model=m)
            a = analyse(v)
            ok = {"colour": a.colour == colour, "shape": a.shape == shape, "motion": a.motion == motion}
            for key in ok:
                t2v[key].append(ok[key])
            o = a.main
            shape_stats = {"fill": o.fill, "profile": o.profile, "skew": o.skew} if o else {}
            rows.append({"prompt": prompt, "read": [a.colour, a.shape, a.motion], **ok, **shape_stats})
            # image-to-video and connect from a ground-truth held-out clip of this combo
            gt = world.sample_clip(seed, split="heldout", combo=(colour, shape, motion), background=bg).video
            v = generate_embedded(prompt, steps=steps, guidance=guidance, seed=seed, model=m, known=[Known(gt[:, :1])])
            i2v_psnr.append(psnr(v[:, 0], gt[:, 0]))
            i2v_motion.append(analyse(v).motion == motion)
            v = generate_embedded(prompt, steps=steps, guidance=guidance, seed=seed, model=m,
                         known=[Known(gt[:, :1]), Known(gt[:, -1:], "end")])
            conn_first.append(psnr(v[:, 0], gt[:, 0]))
            conn_last.append(psnr(v[:, -1], gt[:, -1]))
            if motion in ("left", "right", "up", "down") and k == 0:
                # extend forward: the last 5 frames of the clip start the next one
                nxt = generate_embedded(prompt, steps=steps, guidance=guidance, seed=seed + 7, model=m,
                               known=[Known(gt[:, -5:])])
                joined = torch.cat([gt, nxt[:, 5:]], dim=1)
                o = analyse(joined).main
                if o:
                    c = o.centroids
                    steps_px = [abs(c[i + 1][0] - c[i][0]) + abs(c[i + 1][1] - c[i][1]) for i in range(len(c) - 1)]
                    seam.append({"prompt": prompt, "seam_step_px": steps_px[16] if len(steps_px) > 16 else None,
                                 "median_step_px": statistics.median(steps_px), "motion": o.motion})
    out["t2v"] = {k: _frac(v) for k, v in t2v.items()}
    out["t2v_n"] = len(rows)
    out["i2v_first_frame_psnr_db"] = statistics.mean(i2v_psnr)
    out["i2v_motion"] = _frac(i2v_motion)
    out["connect_first_psnr_db"] = statistics.mean(conn_first)
    out["connect_last_psnr_db"] = statistics.mean(conn_last)
    out["extend_seams"] = seam
    # speed of one clip (model time: text + sampling + decode)
    t0, c0 = time.time(), time.process_time()
    generate_embedded("a red ball rolls to the left across a black background", steps=20, guidance=guidance, seed=0, model=m)
    out["seconds_17f_20steps"] = {"wall": time.time() - t0, "cpu": time.process_time() - c0,
                                  "threads": torch.get_num_threads()}
    out["rows"] = rows
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", type=Path, default=None)
    ap.add_argument("--per-combo", type=int, default=2)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--guidance", type=float, default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(a.threads)
    from ..model.embedded import config as C
    res = evaluate(a.weights, a.per_combo, a.steps, a.guidance if a.guidance is not None else C.DEFAULT_GUIDANCE)
    summary = {k: v for k, v in res.items() if k != "rows"}
    log.info("%s", json.dumps(summary, indent=1))
    if a.out:
        a.out.write_text(json.dumps(res, indent=1))


# How people type motions in a hurry; the expander must map them onto the training words.
SHORT_MOTION = {"left": "left", "right": "right", "up": "up", "down": "down", "still": "still",
                "grow": "growing", "shrink": "shrinking"}


def short_prompt(colour: str, shape: str, motion: str, k: int) -> str:
    """A terse prompt with a shape synonym (e.g. "red ball left")."""
    names = words_for(shape)
    return f"{colour} {names[(k + 1) % len(names)]} {SHORT_MOTION[motion]}"


def evaluate_expander(per_combo: int, steps: int) -> dict:
    model = load_embedded()
    scores = {"raw": {"colour": 0, "shape": 0, "motion": 0}, "expanded": {"colour": 0, "shape": 0, "motion": 0}}
    rows, n = [], 0
    for ci, (colour, shape, motion) in enumerate(sorted(world.HELD_OUT)):
        for k in range(per_combo):
            raw = short_prompt(colour, shape, motion, k)
            expanded = expand_prompt(raw, model_family="embedded", seed=k, cache=False)
            seed = 1000 * ci + k
            n += 1
            row = {"raw": raw, "expanded": expanded, "truth": [colour, shape, motion]}
            for kind, text in (("raw", raw), ("expanded", expanded)):
                a = analyse(generate_embedded(text, steps=steps, seed=seed, model=model))
                read = {"colour": a.colour, "shape": a.shape, "motion": a.motion}
                truth = {"colour": colour, "shape": shape, "motion": motion}
                for key in read:
                    scores[kind][key] += read[key] == truth[key]
                row[kind + "_read"] = [read["colour"], read["shape"], read["motion"]]
            rows.append(row)
    acc = {kind: {k: v / n for k, v in s.items()} for kind, s in scores.items()}
    gain = {k: acc["expanded"][k] - acc["raw"][k] for k in acc["raw"]}
    return {"n": n, "steps": steps, "accuracy": acc, "gain": gain, "rows": rows}


def expander_main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Does the prompt expander help the embedded model?")
    ap.add_argument("--per-combo", type=int, default=2)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(a.threads)
    res = evaluate_expander(a.per_combo, a.steps)
    log.info("%d prompts, %d steps", res["n"], res["steps"])
    log.info("%-9s %7s %7s %7s", "", "colour", "shape", "motion")
    for kind in ("raw", "expanded"):
        acc = res["accuracy"][kind]
        log.info("%-9s %6.0f%% %6.0f%% %6.0f%%", kind, 100 * acc["colour"], 100 * acc["shape"], 100 * acc["motion"])
    if a.out:
        with open(a.out, "w") as f:
            json.dump(res, f, indent=1)
