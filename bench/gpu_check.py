"""GPU check (not a test): our DiT and VAE against ComfyUI native and diffusers, in one run.

On a CUDA machine (one GPU, bf16, random weights at real sizes, nothing downloaded):

- DiT forward: Wan 2.1 T2V 1.3B on the latent of 480x832x81 ([1, 16, 21, 60, 104]) and
  Wan 2.2 TI2V 5B on that of 704x1280x121 ([1, 48, 31, 44, 80]), each where the free GPU memory
  allows (otherwise the reason is printed); ours once per attention kernel installed (SDPA,
  flash-attn, SageAttention), ComfyUI's ``comfy.ldm.wan.model.WanModel`` with the attention it
  picks for itself, diffusers' ``WanTransformer3DModel``; 512 text tokens.
- VAE decode: Wan 2.1 VAE at 480x832x81, Wan 2.2 VAE at 704x1280x41 (its full 121 frames do
  not fit the time budget three times over); ComfyUI's ``WanVAE.decode`` and diffusers'
  ``AutoencoderKLWan.decode``.

Every implementation gets the same weights and inputs, is loaded alone, warmed up, timed (the
median of a few runs, synchronised) and freed before the next. Printed per implementation:
time, peak memory (``torch.cuda.max_memory_allocated`` over the timed runs), relative error
||out - ref|| / ||ref|| against ComfyUI native, the ratios of time and memory to ComfyUI's, and
the FLOP rate as a fraction of the GPU's matmul peak measured in the same run (a bf16
8192^3 matmul). The whole run is time-boxed (``--budget``, 7 minutes by default): what would
start after it is skipped, saying so.

``--tiny`` (the default without CUDA) runs the same code on CPU with tiny configs (2 layers,
a few frames) in fp32 in seconds; CI runs it (tests/test_gpu_check.py). There the peak memory
is the process's peak RSS during the timed runs (Linux), so its ratios say little.

The exit status is 1 when an implementation disagrees with the reference beyond the
tolerance of the dtype (or fails), 0 otherwise. ``--perturb EPS`` adds noise of relative size
EPS to our outputs, to see the check fail.

Run (from the repository root; bench/gpu_check.sh adds a header and the environment):

    python bench/gpu_check.py [--tiny] [--parts dit,vae] [--rounds 3] [--budget 420]
"""
from __future__ import annotations

import argparse
import gc
import math
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_dit  # noqa: E402  (helpers shared with the CPU benchmarks)
import bench_vae  # noqa: E402
from gpu_models import build_dit, build_vae, import_comfy, our_attention, vae_weights  # noqa: E402

# Largest relative error against the reference that still counts as agreement. In fp32 the
# implementations agree to ~1e-6. bf16 rounds each value to 2^-8, and each implementation keeps
# different parts in fp32: at real widths (30 blocks, real VAE) ComfyUI, diffusers and ours
# differ by 1e-2 to 2e-2, the references from each other as much as from ours. A wiring or
# kernel fault (wrong layout, missing norm, wrong RoPE) gives 0.3 and more. SageAttention
# also quantises q and k to int8.
TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 0.1}
SAGE_TOLERANCE = 0.15
REFERENCE = "comfy"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class Case:
    """One comparison: a model, its weights and one input."""

    kind: str                          # "dit" or "vae"
    family: str                        # "1.3b" (Wan 2.1 and its VAE) or "5b" (Wan 2.2 TI2V, its VAE)
    label: str
    config: object                     # DiTConfig, or the VAE's (version, dim, dec_dim, z_dim)
    latent: tuple[int, ...]            # [B, C, T, H, W]


def cases(st, tiny: bool) -> list[Case]:
    """The DiT forwards, then the VAE decodes: real sizes, or their tiny stand-ins."""
    if tiny:
        small = st.model.dit.tiny_config
        return [
            Case("dit", "1.3b", "DiT tiny 2.1-shaped", small(), (1, 16, 3, 8, 8)),
            Case("dit", "5b", "DiT tiny 2.2-shaped", small(in_dim=48, out_dim=48, model_type="ti2v"), (1, 48, 3, 8, 8)),
            Case("vae", "1.3b", "VAE tiny 2.1-shaped 32x32x9", ("2.1", 8, None, 4), (1, 4, 3, 4, 4)),
            Case("vae", "5b", "VAE tiny 2.2-shaped 64x64x9", ("2.2", 8, 12, 4), (1, 4, 3, 4, 4))]
    presets = st.model.DIT_PRESETS
    return [
        Case("dit", "1.3b", "DiT Wan 2.1 T2V 1.3B 480x832x81", presets["wan2.1-t2v-1.3b"], (1, 16, 21, 60, 104)),
        Case("dit", "5b", "DiT Wan 2.2 TI2V 5B 704x1280x121", presets["wan2.2-ti2v-5b"], (1, 48, 31, 44, 80)),
        Case("vae", "1.3b", "VAE Wan 2.1 decode 480x832x81", ("2.1", 96, None, 16), (1, 16, 21, 60, 104)),
        Case("vae", "5b", "VAE Wan 2.2 decode 704x1280x41", ("2.2", 160, 256, 48), (1, 48, 11, 44, 80))]


# -- the machine -------------------------------------------------------------------------------
class Device:
    """Synchronisation and peak memory on CUDA, or on the CPU (peak RSS, Linux)."""

    def __init__(self, name: str) -> None:
        self.torch = torch.device(name)
        self.cuda = self.torch.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def reset_peak(self) -> None:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
        else:
            bench_vae._reset_peak()

    def peak_bytes(self) -> int:
        return torch.cuda.max_memory_allocated() if self.cuda else bench_vae._status_kb("VmHWM") * 1024

    def free_bytes(self) -> int | None:
        return torch.cuda.mem_get_info()[0] if self.cuda else None

    def release(self) -> None:
        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()


# -- measuring ---------------------------------------------------------------------------------
def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b||, in float64."""
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm())


def perturbed(out: torch.Tensor, eps: float) -> torch.Tensor:
    """`out` plus Gaussian noise of relative size `eps` (to see the check fail)."""
    g = torch.Generator(out.device).manual_seed(2)
    noise = torch.randn(out.shape, generator=g, device=out.device, dtype=torch.float32)
    return out + (eps * out.float().norm() / noise.norm() * noise).to(out.dtype)


def measure(call, dev: Device, rounds: int, deadline: float) -> dict:
    """Time `call()` (already warmed up): up to `rounds` runs, fewer when the next one would end
    after `deadline`; the median, the peak memory over the runs and the last output (on CPU)."""
    dev.release()
    dev.sync()
    dev.reset_peak()
    runs, out = [], None
    with torch.inference_mode():
        while len(runs) < rounds and (not runs or time.perf_counter() + runs[-1] < deadline):
            out = None                                        # (not held through the next run)
            t0 = time.perf_counter()
            out = call()
            dev.sync()
            runs.append(time.perf_counter() - t0)
    peak = dev.peak_bytes()
    return {"seconds": statistics.median(runs), "runs": runs, "peak": peak, "out": out.float().cpu()}


def dit_setup(st, case: Case, dev: Device, dtype: torch.dtype):
    """(FLOPs of one forward, load(impl) -> (run, warm-up)) with the case's weights and inputs."""
    cfg = case.config
    drawn_on = "cuda" if dev.cuda else "cpu"                 # on the GPU: seconds, not minutes
    sd = {k: v.to("cpu", dtype) for k, v in bench_dit.random_weights(st, cfg, drawn_on).items()}
    g = torch.Generator().manual_seed(1)
    x = torch.randn(case.latent, generator=g).to(dev.torch)                       # (B, C, T, H, W)
    ctx = torch.randn(1, cfg.text_len, cfg.text_dim, generator=g).to(dev.torch)   # (B, L, text_dim)
    t = torch.tensor([750.0], device=dev.torch)
    tokens = case.latent[2] * case.latent[3] * case.latent[4] // math.prod(cfg.patch_size)

    def load(impl: str):
        forward = build_dit(st, impl, cfg, sd, dev, dtype)
        run = lambda: forward(x, t, ctx)  # noqa: E731
        return run, run
    return bench_dit.flops(cfg, tokens, cfg.text_len), load


def vae_setup(st, case: Case, dev: Device, dtype: torch.dtype):
    """(FLOPs of one decode, load(impl) -> (run, warm-up on the first latent frame))."""
    weights = vae_weights(case, dev.torch)
    z = torch.randn(case.latent, generator=torch.Generator().manual_seed(1)).to(dev.torch, dtype)

    def load(impl: str):
        decode = build_vae(st, impl, case, weights, dev, dtype)
        return (lambda: decode(z)), (lambda: decode(z[:, :, :1]))
    return vae_flops(st, weights[0], case.latent), load


def run_case(st, case: Case, impls: list[str], dev: Device, dtype: torch.dtype, a: argparse.Namespace,
             deadline: float) -> list[dict]:
    """Every implementation of one case, one at a time, each freed before the next loads."""
    flops, load = (dit_setup if case.kind == "dit" else vae_setup)(st, case, dev, dtype)
    rows = []
    for impl in impls:
        row = {"case": case.label, "impl": impl, "flops": flops}
        rows.append(row)
        if time.perf_counter() > deadline:
            row["skip"] = "time budget spent"
            continue
        try:
            run, warm = load(impl)
            with torch.inference_mode():
                warm()                                        # kernel choice, lazy set-up, allocator
            row.update(measure(run, dev, a.rounds, deadline))
        except torch.cuda.OutOfMemoryError as e:
            row["skip"] = f"out of memory: {str(e).splitlines()[0][:120]}".replace("|", "/")
        except Exception as e:  # a failing implementation is reported, and fails the check
            row["error"] = f"{type(e).__name__}: {' '.join(str(e).split())}".replace("|", "/")[:300]
        finally:
            run = warm = None
            dev.release()
        if "out" in row and impl.startswith("ours") and a.perturb:
            row["out"] = perturbed(row["out"], a.perturb)
    compare(rows, dtype)
    return rows


def vae_flops(st, official: dict, latent: tuple[int, ...]) -> float:
    """FLOPs of our decode of `latent`, counted on the meta device (nothing is computed)."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        model = st.model.WanVAE(st.model.vae.vae_config_from_state_dict(official))
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.decode(torch.empty(latent, device="meta"))
    return float(counter.get_total_flops())


def compare(rows: list[dict], dtype: torch.dtype) -> None:
    """Relative error and ratios against the reference (ComfyUI; diffusers if it has none)."""
    done = {r["impl"]: r for r in rows if "out" in r}
    ref_name = REFERENCE if REFERENCE in done else "diffusers" if "diffusers" in done else None
    for r in rows:
        if "out" not in r:
            continue
        r["ref"] = ref_name
        if ref_name is None:                                  # (reported; only a run with no comparison fails)
            r["unchecked"] = "no reference ran"
            continue
        ref = done[ref_name]
        r["err"] = rel_err(r["out"], ref["out"])
        r["time_ratio"] = r["seconds"] / ref["seconds"]
        r["peak_ratio"] = r["peak"] / ref["peak"]
        tol = SAGE_TOLERANCE if r["impl"].endswith("sageattention") else TOLERANCE[dtype]
        r["tol"] = tol
        if not (r["err"] <= tol):                            # (NaN fails too)
            r["fail"] = f"relative error {r['err']:.2e} > {tol:g}"
    for r in rows:
        r.pop("out", None)


def dit_memory_need(st, cfg, latent: tuple[int, ...], dtype: torch.dtype) -> int:
    """Rough bytes one DiT forward needs on the GPU: the weights, the FFN hidden layer and a
    dozen token-sized fp32 temporaries, with half again for the allocator and the kernels."""
    tokens = latent[2] * latent[3] * latent[4] // math.prod(cfg.patch_size)
    size = torch.finfo(dtype).bits // 8
    params = st.model.dit.config.param_count(cfg)
    return int(1.5 * (params * size + 4 * tokens * cfg.ffn_dim * size + 12 * tokens * cfg.dim * 4))


# -- report ------------------------------------------------------------------------------------
def table(rows: list[dict], peak_tflops: float, cuda: bool) -> str:
    """The markdown table: one row per implementation and case."""
    mem = "peak MiB" if cuda else "peak RSS MiB"
    lines = [f"| case | impl | time ms | {mem} | rel err vs ref | time / ref | memory / ref | % of matmul peak "
             "| check |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        head = f"| {r['case']} | {r['impl']} |"
        if "skip" in r or "error" in r:
            why = f"skipped: {r['skip']}" if "skip" in r else f"FAIL: {r['error']}"
            lines.append(f"{head} - | - | - | - | - | - | {why} |")
            continue
        pct = 100 * r["flops"] / r["seconds"] / (peak_tflops * 1e12)
        if "err" in r:
            err = "reference" if r["impl"] == r["ref"] else f"{r['err']:.2e}"
            ratios = f"{r['time_ratio']:.2f} | {r['peak_ratio']:.2f}"
        else:
            err, ratios = "-", "- | -"
        check = (f"FAIL: {r['fail']}" if "fail" in r else f"not compared: {r['unchecked']}" if "unchecked" in r
                 else f"ok (<= {r['tol']:g})")
        lines.append(f"{head} {1e3 * r['seconds']:.1f} | {r['peak'] / 2**20:.0f} | {err} | {ratios} | {pct:.1f}% "
                     f"| {check} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="tiny configs on CPU (the default without CUDA)")
    ap.add_argument("--parts", default="dit,vae", help="which of dit,vae to run")
    ap.add_argument("--models", default="1.3b,5b", help="which DiT sizes (and their VAEs) to run: 1.3b,5b")
    ap.add_argument("--dtype", choices=sorted(DTYPES), help="bf16 on CUDA, fp32 in the tiny mode")
    ap.add_argument("--rounds", type=int, default=3, help="timed runs per implementation (median)")
    ap.add_argument("--budget", type=float, default=420.0,
                    help="seconds for the whole run; what would start later is skipped")
    ap.add_argument("--threads", type=int, default=0, help="CPU threads (0: 1 in the tiny mode, else torch's)")
    ap.add_argument("--perturb", type=float, default=0.0,
                    help="add noise of this relative size to our outputs (to see the check fail)")
    a = ap.parse_args()
    start = time.perf_counter()
    deadline = start + a.budget
    tiny = a.tiny or not torch.cuda.is_available()
    dev = Device("cpu" if tiny else "cuda")
    dtype = DTYPES[a.dtype or ("fp32" if tiny else "bf16")]
    dtype_name = str(dtype).removeprefix("torch.")
    if a.threads or tiny:
        torch.set_num_threads(a.threads or 1)   # tiny models: thread start-up costs more than it gains

    st = bench_dit._package()
    comfy = import_comfy(dev)
    backends = our_attention(st, dev)
    attn = comfy.ldm.modules.attention.optimized_attention.__name__
    where = torch.cuda.get_device_name() if dev.cuda else f"CPU, {torch.get_num_threads()} threads"
    matmul_n = 8192 if dev.cuda else 2048
    peak = bench_dit.run_matmul(matmul_n, str(dev.torch), dtype_name, repeats=10 if dev.cuda else 3)
    print(f"mode {'tiny' if tiny else 'real sizes'}; {where}; {dtype_name}; "
          f"ours: attention {', '.join(backends)}; ComfyUI attention: {attn}; reference: ComfyUI native")
    print(f"matmul peak ({matmul_n}^3, best of the run): {peak['tflops']:.3f} TFLOP/s")

    parts, families = a.parts.split(","), a.models.split(",")
    rows: list[dict] = []
    for case in [c for c in cases(st, tiny) if c.kind in parts and c.family in families]:
        if time.perf_counter() > deadline:
            print(f"{case.label}: skipped, the time budget ({a.budget:.0f} s) is spent")
            continue
        free = dev.free_bytes()
        if case.kind == "dit" and free is not None:
            need = dit_memory_need(st, case.config, case.latent, dtype)
            if need > free:
                print(f"{case.label}: skipped, needs about {need / 2**30:.1f} GiB of GPU memory, "
                      f"{free / 2**30:.1f} GiB free")
                continue
        t0 = time.perf_counter()
        ours = [f"ours:{b}" for b in backends] if case.kind == "dit" else ["ours"]
        # the reference first, so that a time budget running out leaves something to compare with
        rows += run_case(st, case, ["comfy", *ours, "diffusers"], dev, dtype, a, deadline)
        print(f"{case.label}: done in {time.perf_counter() - t0:.1f} s", flush=True)

    print()
    print(table(rows, peak["tflops"], dev.cuda))
    bad = [r for r in rows if "fail" in r or "error" in r]
    print(f"\nwall time {time.perf_counter() - start:.1f} s (after the imports)")
    if bad:
        print(f"gpu_check FAILED: {len(bad)} of {len(rows)} implementations disagree or failed")
        return 1
    if not any("err" in r for r in rows):
        print("gpu_check FAILED: nothing was compared")
        return 1
    unchecked = sum("unchecked" in r or "skip" in r for r in rows)
    print(f"gpu_check passed: every implementation compared agrees with the reference ({unchecked} not compared)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
