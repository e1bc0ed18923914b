"""Sequence-parallel scaling on paper: bytes each rank sends per DiT evaluation and the predicted
efficiency of Ulysses, ring and the hybrid layout (model/parallel) for Wan 14B.

    python bench/scaling.py            # the tables of bench/SCALING.md

The model: per layer each rank computes 1/N of the FLOPs; Ulysses' four all-to-alls (q, k, v in,
the output back) block; ring attention sends K and V one hop per step while the next block's
attention runs, so a step costs max(attention block, transfer); the hybrid runs Ulysses inside a
group of U ranks (the largest divisor of the heads and of N, as ``choose_layout``) and a ring of
N/U such groups. Efficiency = single-GPU time / (N · N-GPU time). Assumptions are the constants
below; change them and rerun.
"""
from __future__ import annotations

import argparse

# Wan 2.1 / 2.2 14B (model/dit/config.py DIT_PRESETS)
DIM, FFN, HEADS, LAYERS, TEXT = 5120, 13824, 40, 40, 512
BYTES = 2                        # bf16 activations on the wire
ACHIEVED_FLOPS = 400e12          # an H100-class GPU at ~40% of its 989 TFLOP/s bf16 peak
LATENCY_S = 10e-6                # per collective / per ring hop
NODE_GPUS = 8                    # GPUs per NVLink island in the mixed fabric

CLIPS = {   # (latent frames, token rows, tokens per row) after the VAE (4x8x8) and patches (1x2x2)
    "720p x 81 frames (5 s)": (21, 45, 80),
    "720p x 961 frames (60 s)": (241, 45, 80),
}
FABRICS = {  # bytes/s one GPU can send; "mixed": NVLink inside 8-GPU nodes, IB between them
    "NVLink 900 GB/s": (900e9, 900e9),
    "IB 400 Gb/s": (50e9, 50e9),
    "8-GPU NVLink nodes on IB": (900e9, 50e9),
}


def flops(tokens: int) -> tuple[float, float]:
    """(attention, everything else) FLOPs of one forward of batch 1."""
    attn = LAYERS * 4 * tokens * tokens * DIM
    rest = LAYERS * (2 * tokens * (6 * DIM * DIM + 2 * DIM * FFN) + 4 * tokens * TEXT * DIM)
    return attn, rest


def layouts(n: int) -> dict[str, tuple[int, int] | None]:
    """Ulysses x ring degrees of each scheme at n ranks (None: not possible)."""
    hybrid = max(u for u in range(1, n + 1) if n % u == 0 and HEADS % u == 0)
    return {"Ulysses": (n, 1) if HEADS % n == 0 else None, "ring": (1, n), "hybrid": (hybrid, n // hybrid)}


def link(n_group: int, stride: int, fabric: tuple[float, float]) -> float:
    """The bandwidth a group of ``n_group`` ranks spaced ``stride`` apart talks over."""
    inner, outer = fabric
    return inner if n_group * stride <= NODE_GPUS else outer


def step(tokens: int, u: int, r: int, fabric: tuple[float, float]) -> tuple[float, float]:
    """(bytes sent per rank, seconds) of one forward on u x r ranks."""
    n = u * r
    attn, rest = flops(tokens)
    shard = tokens / n * DIM * BYTES                      # one activation tensor of my tokens
    a2a = LAYERS * 4 * shard * (u - 1) / u if u > 1 else 0.0
    ring = LAYERS * 2 * shard * (r - 1)                   # K and V, r - 1 hops
    gather = tokens * 64 * 4 * (n - 1) / n                # the output, once per call (fp32)
    t_a2a = (a2a / link(u, 1, fabric) + LAYERS * 4 * LATENCY_S) if u > 1 else 0.0
    t_attn = attn / n / ACHIEVED_FLOPS
    if r > 1:
        hop = 2 * shard / link(r, u, fabric) + LATENCY_S  # one K/V block, while a block is computed
        t_attn = LAYERS * (t_attn / LAYERS / r + (r - 1) * max(t_attn / LAYERS / r, hop))
    seconds = rest / n / ACHIEVED_FLOPS + t_attn + t_a2a + gather / link(n, 1, fabric)
    return a2a + ring + gather, seconds


def table(clip: str, ranks: list[int]) -> list[str]:
    t, h, w = CLIPS[clip]
    tokens = t * h * w
    single = sum(flops(tokens)) / ACHIEVED_FLOPS
    lines = [f"### {clip}: {tokens:,} tokens, {single:.0f} s per forward on one GPU (model)", "",
             "| GPUs | scheme (U x R) | GB sent / rank / forward | " + " | ".join(f"eff. {f}" for f in FABRICS) + " |",
             "|---|---|---|" + "---|" * len(FABRICS)]
    for n in ranks:
        if n > t * h:
            continue
        for name, lay in layouts(n).items():
            if lay is None:
                lines.append(f"| {n} | {name}: {n} does not divide {HEADS} heads | — |" + " — |" * len(FABRICS))
                continue
            if name == "hybrid" and lay in (layouts(n)["Ulysses"], (1, n)):
                continue                                  # the same as a pure scheme
            sent = step(tokens, *lay, next(iter(FABRICS.values())))[0]
            effs = [single / (n * step(tokens, *lay, f)[1]) for f in FABRICS.values()]
            lines.append(f"| {n} | {name} ({lay[0]} x {lay[1]}) | {sent / 1e9:.2f} | "
                         + " | ".join(f"{e:.2f}" for e in effs) + " |")
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ranks", default="2,4,8,16,32,64")
    args = p.parse_args()
    ranks = [int(x) for x in args.ranks.split(",")]
    for clip in CLIPS:
        print("\n".join(table(clip, ranks)), end="\n\n")
    ring_limit = {f: ACHIEVED_FLOPS / (bw[1]) for f, bw in FABRICS.items()}
    print("Ring overlap holds while a rank's tokens per ring position exceed FLOP rate / bandwidth: "
          + ", ".join(f"{f}: {v:,.0f} tokens" for f, v in ring_limit.items()))
    print(f"Ulysses alone is capped at {HEADS} ranks (a divisor of the heads: "
          f"{[d for d in range(1, HEADS + 1) if HEADS % d == 0]}).")


if __name__ == "__main__":
    main()
