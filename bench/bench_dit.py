"""Benchmark (not a test): Wan 2.1 T2V 1.3B, random bf16 weights, one forward on a
[1, 16, 9, 32, 32] latent (2,304 tokens) with 512 text tokens: ours vs ComfyUI native vs
diffusers, each in its own subprocess on the same safetensors file, plus the bf16 matmul peak
of this machine and the peak RSS of loading the file.

Run:  flock /tmp/spacetime-heavy.lock .venv/bin/python bench/bench_dit.py [--threads N]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMFY = Path(os.environ.get("SPACETIME_COMFYUI", ROOT / ".host" / "ComfyUI"))
WEIGHTS = Path("/tmp/spacetime_bench/wan2.1_t2v_1.3b_random_bf16.safetensors")
LATENT = (1, 16, 9, 32, 32)
TEXT_LEN = 512


def _package():
    import importlib.util
    spec = importlib.util.spec_from_file_location("spacetime_video", ROOT / "__init__.py",
                                                  submodule_search_locations=[str(ROOT)])
    mod = importlib.util.module_from_spec(spec)
    sys.modules["spacetime_video"] = mod
    spec.loader.exec_module(mod)
    return mod


def write_weights() -> None:
    import torch
    from safetensors.torch import save_file
    st = _package()
    cfg = st.model.DIT_PRESETS["wan2.1-t2v-1.3b"]
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in st.model.WanDiT(cfg).state_dict().items()}
    g = torch.Generator().manual_seed(0)
    sd = {k: (torch.randn(s, generator=g) / (s[1] if len(s) > 1 else 1) ** 0.5 * (0.02 if "modulation" in k else 1))
          .to(torch.bfloat16) for k, s in shapes.items()}
    WEIGHTS.parent.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(WEIGHTS))


def flops(cfg, n: int, nt: int) -> float:
    """Matmul + attention FLOPs of one forward (2 per multiply-add)."""
    d, f = cfg.dim, cfg.ffn_dim
    block = 2 * (4 * n * d * d + 2 * n * d * d + 2 * nt * d * d + 2 * n * d * f) + 4 * n * n * d + 4 * n * nt * d
    return cfg.num_layers * block + 2 * (nt * cfg.text_dim * d + nt * d * d + n * d * 64)


def inputs(torch):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(LATENT, generator=g)
    ctx = torch.randn(1, TEXT_LEN, 4096, generator=g)
    return x, torch.tensor([750.0]), ctx


def run_impl(name: str) -> dict:
    import torch
    if os.environ.get("BENCH_MALLOC") == "1":  # give the references the same allocator setting
        sys.path.insert(0, str(ROOT.parent))
        _package().model.attention.tune_cpu_allocator()
    torch.set_grad_enabled(False)
    x, t, ctx = inputs(torch)
    bf = torch.bfloat16
    t0 = time.perf_counter()
    if name == "ours":
        st = _package()
        model = st.model.load_dit(WEIGHTS, compute_dtype=bf)
        call = lambda xx: model(xx, t, ctx)  # noqa: E731
    elif name == "comfy":
        sys.path.insert(0, str(COMFY))
        import comfy.cli_args
        comfy.cli_args.args.cpu = True
        import comfy.ops
        from comfy.ldm.wan.model import WanModel
        from safetensors.torch import load_file
        model = WanModel(dim=1536, ffn_dim=8960, num_heads=12, num_layers=30, in_dim=16, out_dim=16,
                         operations=comfy.ops.disable_weight_init, dtype=bf, device="cpu")
        model.load_state_dict(load_file(str(WEIGHTS)), strict=True)
        call = lambda xx: model(xx.to(bf), t, ctx.to(bf))  # noqa: E731
    elif name == "diffusers":
        from diffusers import WanTransformer3DModel
        from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers
        from safetensors.torch import load_file
        model = WanTransformer3DModel(num_attention_heads=12, attention_head_dim=128, ffn_dim=8960,
                                      num_layers=30, in_channels=16, out_channels=16).to(bf)
        model.load_state_dict(convert_wan_transformer_to_diffusers(load_file(str(WEIGHTS))))
        call = lambda xx: model(xx.to(bf), t, ctx.to(bf), return_dict=False)[0]  # noqa: E731
    load_s = time.perf_counter() - t0
    call(x[:, :, :1, :8, :8])  # warm-up on a tiny latent (kernel selection, lazy inits)
    t0 = time.perf_counter()
    out = call(x)
    sec = time.perf_counter() - t0
    assert out.shape == LATENT and torch.isfinite(out.float()).all()
    return {"impl": name, "load_s": load_s, "forward_s": sec, "threads": torch.get_num_threads()}


def run_matmul() -> dict:
    import torch
    a = torch.randn(4096, 4096).to(torch.bfloat16)
    b = torch.randn(4096, 4096).to(torch.bfloat16)
    a @ b
    best = 1e9
    for _ in range(3):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return {"impl": "matmul", "tflops": 2 * 4096**3 / best / 1e12}


def _hwm() -> int:
    """Peak RSS of this process (VmHWM; ru_maxrss would carry the parent's peak over exec)."""
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run_load_rss() -> dict:
    import torch
    st = _package()
    base = _hwm()
    model = st.model.load_dit(WEIGHTS, compute_dtype=torch.bfloat16)
    peak = _hwm()
    size = WEIGHTS.stat().st_size
    return {"impl": "load", "file_gb": size / 1e9, "peak_rss_gb": peak / 1e9, "rss_before_gb": base / 1e9,
            "ratio": peak / size, "params": sum(p.numel() for p in model.parameters())}


def child(name: str, threads: int) -> dict:
    """Run one measurement in a fresh process. Suffix "+malloc": references get the allocator
    setting ours applies by default; "-malloc": ours without it."""
    impl, flag = (name[:-7], name[-7:]) if name.endswith(("+malloc", "-malloc")) else (name, "")
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), HF_HUB_OFFLINE="1")
    if flag == "+malloc":
        env["BENCH_MALLOC"] = "1"
    if flag == "-malloc":
        env["SPACETIME_MALLOC_TUNING"] = "0"
    r = subprocess.run([sys.executable, __file__, "--child", impl], env=env, capture_output=True, text=True)
    if r.returncode:
        return {"impl": name, "error": r.stderr[-2000:]}
    out = json.loads(r.stdout.strip().splitlines()[-1])
    out["impl"] = name
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--child")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--only", default="matmul,load,ours,comfy,diffusers,comfy+malloc,diffusers+malloc,ours-malloc")
    a = ap.parse_args()
    if a.child:
        fn = {"matmul": run_matmul, "load": run_load_rss}.get(a.child, lambda: run_impl(a.child))
        print(json.dumps(fn()))
        return
    if not WEIGHTS.exists():
        write_weights()
    res = {n: child(n, a.threads) for n in a.only.split(",")}
    st = _package()
    cfg = st.model.DIT_PRESETS["wan2.1-t2v-1.3b"]
    fl = flops(cfg, LATENT[2] * LATENT[3] * LATENT[4] // 4, TEXT_LEN)
    peak = res.get("matmul", {}).get("tflops")
    print(json.dumps(res, indent=1))
    print(f"\n| impl | load s | forward s | TFLOP/s | % of bf16 matmul peak ({peak and round(peak, 3)} TFLOP/s) |")
    print("|---|---|---|---|---|")
    for n in res:
        r = res.get(n)
        if r and "forward_s" in r:
            tf = fl / r["forward_s"] / 1e12
            print(f"| {n} | {r['load_s']:.1f} | {r['forward_s']:.2f} | {tf:.3f} | {100 * tf / peak:.0f}% |" if peak
                  else f"| {n} | {r['load_s']:.1f} | {r['forward_s']:.2f} | {tf:.3f} | - |")
    refs = {n: r["forward_s"] for n, r in res.items() if n.startswith(("comfy", "diffusers")) and "forward_s" in r}
    if refs and "forward_s" in res.get("ours", {}):
        best = min(refs, key=refs.get)
        print(f"\nours / fastest reference ({best}): {res['ours']['forward_s'] / refs[best]:.3f} (target <= 0.85)")
    if "load" in res and "ratio" in res["load"]:
        L = res["load"]
        print(f"load peak RSS {L['peak_rss_gb']:.2f} GB for a {L['file_gb']:.2f} GB file: {L['ratio']:.2f}x (target <= 1.3x)")


if __name__ == "__main__":
    main()
