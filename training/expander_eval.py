"""Does the prompt expander help? Adherence of the embedded model to short prompts, raw vs expanded.

    python scripts/eval_expander.py [--per-combo 2] [--steps 20] [--out expander_eval.json]

For every held-out (colour, shape, motion) combination of the embedded world, a short, sloppy
prompt such as "red ball left" is generated twice with the same seed: once as typed, once after
``expand_prompt(..., model_family="embedded")`` (the offline rules, which rewrite it in the
model's training vocabulary). The analyser reads colour, shape and motion from each clip; the
script prints the accuracy of both and their difference. Deterministic: prompts and seeds fixed.
"""
from __future__ import annotations

import argparse
import json
import logging

import torch

from ..model import expand_prompt
from ..model.embedded import load_embedded
from ..model.embedded.vocab import words_for
from ..pipeline import generate_embedded
from . import world
from .analyser import analyse

log = logging.getLogger("spacetime.eval_expander")

# How people type motions in a hurry; the expander must map them onto the training words.
SHORT_MOTION = {"left": "left", "right": "right", "up": "up", "down": "down", "still": "still",
                "grow": "growing", "shrink": "shrinking"}


def short_prompt(colour: str, shape: str, motion: str, k: int) -> str:
    """A terse prompt with a shape synonym (e.g. "red ball left")."""
    names = words_for(shape)
    return f"{colour} {names[(k + 1) % len(names)]} {SHORT_MOTION[motion]}"


def evaluate(per_combo: int, steps: int) -> dict:
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


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--per-combo", type=int, default=2)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(a.threads)
    res = evaluate(a.per_combo, a.steps)
    log.info("%d prompts, %d steps", res["n"], res["steps"])
    log.info("%-9s %7s %7s %7s", "", "colour", "shape", "motion")
    for kind in ("raw", "expanded"):
        acc = res["accuracy"][kind]
        log.info("%-9s %6.0f%% %6.0f%% %6.0f%%", kind, 100 * acc["colour"], 100 * acc["shape"], 100 * acc["motion"])
    if a.out:
        with open(a.out, "w") as f:
            json.dump(res, f, indent=1)
