"""Benchmark (not a test): Wan 2.1 VAE decode, ours vs ComfyUI native vs diffusers.

Real Wan 2.1 VAE dimensions (dim 96, z 16), the same random weights for all three, one random
latent per clip length; each (implementation, frames) in its own subprocess. Reported: decode
wall and CPU time; peak RSS during the decode (the kernel's high-water mark, reset after set-up
and a 1-frame warm-up) and the working memory above the RSS before it; ratios to the references
and how our peak grows with clip length. Results with date, machine and command: bench/RESULTS.md.

References: ComfyUI 0.3.75 ``comfy.ldm.wan.vae.WanVAE.decode`` (the module its VAE Decode
node runs), diffusers ``AutoencoderKLWan.decode`` (tiling off). All under
``torch.inference_mode``.

Run (from the repository root, in the project's environment):

    MALLOC_MMAP_THRESHOLD_=1048576 python bench/bench_vae.py --size 256 --frames 33 --ours-frames 17 81

``MALLOC_MMAP_THRESHOLD_`` makes glibc return freed tensors to the OS, so the peaks are live
memory; without it glibc keeps freed heap memory and every peak is higher.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from checkout import import_checkout

ROOT = Path(__file__).resolve().parents[1]
DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False if not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def worker(impl: str, frames: int, size: int, dtype_name: str, comfy_dir: str) -> dict:
    import torch

    import_checkout()
    from spacetime_video.model import VAE_PRESETS, WanVAE, load_vae

    dtype = getattr(torch, DTYPES[dtype_name])
    torch.manual_seed(0)
    sd = WanVAE(VAE_PRESETS["wan2.1"]).state_dict()       # the same random weights for all
    if impl == "ours":
        model = load_vae(sd, dtype=dtype)
        decode = model.decode
    elif impl == "comfy":
        sys.path.insert(0, comfy_dir)
        import comfy.cli_args

        comfy.cli_args.args.cpu = True
        import comfy.ldm.wan.vae as wan21

        model = wan21.WanVAE(dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                             temperal_downsample=[False, True, True])
        model.load_state_dict(sd)
        model = model.to(dtype).eval()
        decode = model.decode
    elif impl == "diffusers":
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from diffusers import AutoencoderKLWan
        from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

        model = AutoencoderKLWan(base_dim=96, z_dim=16)
        model.load_state_dict(convert_wan_vae_to_diffusers(sd))
        model = model.to(dtype).eval()
        decode = lambda z: model.decode(z).sample  # noqa: E731
    else:
        raise SystemExit(f"unknown implementation {impl!r}")
    del sd
    g = torch.Generator().manual_seed(1)
    z = torch.randn(1, 16, (frames - 1) // 4 + 1, size // 8, size // 8, generator=g).to(dtype)
    with torch.inference_mode():
        decode(z[:, :, :1])                                   # warm-up: kernels, allocator
        gc.collect()
        exact = _reset_peak()
        before = _status_kb("VmRSS")
        t0, c0 = time.perf_counter(), time.process_time()
        out = decode(z)
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
        peak = _status_kb("VmHWM")
    assert out.shape == (1, 3, frames, size, size), out.shape
    return {"impl": impl, "frames": frames, "size": size, "dtype": dtype_name, "seconds": seconds, "cpu_s": cpu,
            "peak_mb": peak / 1024, "before_mb": before / 1024, "work_mb": (peak - before) / 1024,
            "peak_reset": exact, "checksum": out.float().clamp(-1, 1).abs().mean().item(),
            "threads": torch.get_num_threads()}


def run(jobs: list[tuple[str, int]], args: argparse.Namespace) -> list[dict]:
    rows = []
    for impl, frames in jobs:
        cmd = [sys.executable, __file__, "--worker", impl, "--size", str(args.size), "--dtype", args.dtype,
               "--frames", str(frames), "--comfy-dir", args.comfy_dir]
        env = dict(os.environ)
        if args.threads:
            env["OMP_NUM_THREADS"] = str(args.threads)
        done = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if done.returncode:
            print(f"{impl} {frames} frames failed:\n{done.stderr[-3000:]}", file=sys.stderr)
            continue
        row = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"  done: {impl:9s} {frames:3d} frames {row['seconds']:8.1f} s  peak {row['peak_mb']:7.0f} MB",
              file=sys.stderr, flush=True)
        rows.append(row)
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| impl | frames | size | dtype | decode s | CPU s | peak RSS MB | working MB | time / fastest ref "
             "| CPU / least ref | peak / comfy | working / comfy |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        same = [o for o in rows if o["frames"] == r["frames"] and o["impl"] != "ours"]
        fastest = min((o["seconds"] for o in same), default=None)
        least_cpu = min((o["cpu_s"] for o in same), default=None)
        comfy = next((o for o in same if o["impl"] == "comfy"), None)
        ratio = lambda a, b: f"{a / b:.2f}x" if b else "-"  # noqa: E731
        lines.append(f"| {r['impl']} | {r['frames']} | {r['size']} | {r['dtype']} | {r['seconds']:.1f} "
                     f"| {r['cpu_s']:.1f} | {r['peak_mb']:.0f} | {r['work_mb']:.0f} "
                     f"| {ratio(r['seconds'], fastest) if fastest else '-'} "
                     f"| {ratio(r['cpu_s'], least_cpu) if least_cpu else '-'} "
                     f"| {ratio(r['peak_mb'], comfy['peak_mb']) if comfy else '-'} "
                     f"| {ratio(r['work_mb'], comfy['work_mb']) if comfy else '-'} |")
    ours = {r["frames"]: r for r in rows if r["impl"] == "ours"}
    if len(ours) > 1:
        lo, hi = min(ours), max(ours)
        lines.append(f"\nours: peak RSS at {hi} frames / at {lo} frames = "
                     f"{ours[hi]['peak_mb'] / ours[lo]['peak_mb']:.2f}x (working memory "
                     f"{ours[hi]['work_mb'] / ours[lo]['work_mb']:.2f}x)")
    sums = {(r["impl"], r["frames"]): round(r["checksum"], 4) for r in rows}
    lines.append(f"output checksums (mean |clamped output|, should agree): {sums}")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=256, help="square frame size in pixels (multiple of 8)")
    p.add_argument("--frames", type=int, nargs="+", default=[33], help="clip lengths run by all implementations")
    p.add_argument("--ours-frames", type=int, nargs="*", default=[17, 81], help="extra lengths for ours only")
    p.add_argument("--impls", nargs="+", default=["ours", "comfy", "diffusers"])
    p.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    p.add_argument("--threads", type=int, default=0, help="OMP threads per worker (0: torch's default)")
    p.add_argument("--comfy-dir", default=str(ROOT / ".host" / "ComfyUI"))
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.frames[0], args.size, args.dtype, args.comfy_dir)))
        return
    jobs = [(impl, f) for f in args.frames for impl in args.impls]
    jobs += [("ours", f) for f in args.ours_frames if f not in args.frames]
    print(table(run(jobs, args)))


if __name__ == "__main__":
    main()
