"""Where the time of one DiT forward goes on a GPU: ours and ComfyUI's native Wan, kernel by kernel.

A diagnostic beside bench/gpu_check.py (same weights, inputs and builders): the Wan 2.1 T2V 1.3B
DiT on the latent of 480x832x81 in bf16, random weights. For each implementation it prints the
median of four forwards, the peak memory, the relative error against ComfyUI, and the
``torch.profiler`` table of one forward (CUDA kernel time). ``--tiny`` runs the tiny CPU stand-in
in fp32 (CPU time), to try the script without a GPU.

    python bench/gpu_profile.py [--tiny] [--rows 18]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_dit  # noqa: E402
from gpu_check import Device, cases  # noqa: E402
from gpu_models import build_dit, import_comfy  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="the tiny CPU stand-in (the default without CUDA)")
    ap.add_argument("--rows", type=int, default=18, help="kernels listed per implementation")
    a = ap.parse_args()
    tiny = a.tiny or not torch.cuda.is_available()
    dev = Device("cpu" if tiny else "cuda")
    dtype = torch.float32 if tiny else torch.bfloat16
    st = bench_dit._package()
    import_comfy(dev)
    case = cases(st, tiny)[0]
    cfg = case.config
    sd = {k: v.to("cpu", dtype) for k, v in bench_dit.random_weights(st, cfg, dev.torch.type).items()}
    g = torch.Generator().manual_seed(1)
    x = torch.randn(case.latent, generator=g).to(dev.torch)
    ctx = torch.randn(1, cfg.text_len, cfg.text_dim, generator=g).to(dev.torch)
    t = torch.tensor([750.0], device=dev.torch)
    activity = torch.profiler.ProfilerActivity.CPU if tiny else torch.profiler.ProfilerActivity.CUDA
    ref = None
    for impl in ("comfy", "ours:sdpa"):
        forward = build_dit(st, impl, cfg, sd, dev, dtype)
        with torch.inference_mode():
            forward(x, t, ctx)                                # warm-up
            dev.sync()
            dev.reset_peak()
            times = []
            for _ in range(4):
                t0 = time.perf_counter()
                out = forward(x, t, ctx).float()
                dev.sync()
                times.append(time.perf_counter() - t0)
            ref = out if ref is None else ref
            err = float((out - ref).norm() / ref.norm())
            print(f"== {impl}: median {1e3 * statistics.median(times):.1f} ms, peak "
                  f"{dev.peak_bytes() / 2**20:.0f} MiB, relative error vs comfy {err:.2e}", flush=True)
            with torch.profiler.profile(activities=[activity]) as prof:
                forward(x, t, ctx)
                dev.sync()
        sort = "cpu_time_total" if tiny else "cuda_time_total"
        print(prof.key_averages().table(sort_by=sort, row_limit=a.rows, max_name_column_width=70), flush=True)
        forward = out = None
        dev.release()


if __name__ == "__main__":
    main()
