"""Benchmark (not a test): one DiT forward, ours vs ComfyUI native vs diffusers.

Wan 2.1 T2V 1.3B with random bf16 weights, one forward on a [1, 16, 9, 32, 32] latent
(2,304 tokens) with 512 text tokens. Each implementation loads the same safetensors file in
its own worker subprocess. Also measured: this machine's bf16 matmul peak (a 4096^3 matmul),
against which each forward's FLOP rate is reported, and the peak RSS of loading the file
with ours. Measured results with their date, machine and command: bench/RESULTS.md.

Run (from the repository root, in the project's environment):

    python bench/bench_dit.py [--rounds 2] [--threads N] [--impls ours,comfy,diffusers]
    python bench/bench_dit.py --model 5b --sequential --rounds 1

``--model 5b`` is the Wan 2.2 TI2V 5B config ([1, 48, 9, 32, 32] latent, the same 2,304 tokens;
a 10 GB bf16 file). Three 10 GB workers do not fit a 24 GB machine, so ``--sequential`` runs
one implementation at a time (no interleaving); the references are then built on the meta
device and take the loaded tensors as their parameters (``assign=True``), so none holds two
copies while loading. Without ``--sequential`` all workers stay alive and their forwards are
interleaved round-robin, so drift in the machine's load hits all alike.

The random weights go into a temporary folder the run creates and removes (``--scratch DIR``
uses and keeps DIR instead, so a later run reuses the file).

Allocator modes. Each worker runs its whole life in one mode:
- "default": glibc malloc as a host process runs it (no mallopt call; its mmap threshold
  adapts up to 32 MB, so only temporaries above that are mapped and page-faulted afresh).
- "tuned": freed big blocks stay in the heap (mallopt, as ``SPACETIME_MALLOC_TUNING=1``).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMFY = Path(os.environ.get("SPACETIME_COMFYUI", ROOT / ".host" / "ComfyUI"))
TEXT_LEN = 512
# name -> (our preset, latent shape, shared reference arguments)
MODELS = {
    "1.3b": ("wan2.1-t2v-1.3b", (1, 16, 9, 32, 32), dict(dim=1536, ffn=8960, heads=12, layers=30, ch=16)),
    "5b": ("wan2.2-ti2v-5b", (1, 48, 9, 32, 32), dict(dim=3072, ffn=14336, heads=24, layers=30, ch=48)),
}
# glibc malloc as a host runs it, and with freed big blocks kept (SPACETIME_MALLOC_TUNING=1)
MODES = ("default", "tuned")
MODEL = os.environ.get("SPACETIME_BENCH_MODEL", "1.3b")   # set by --model, inherited by workers
PRESET, LATENT, REF = MODELS[MODEL]
SCRATCH_ENV = "SPACETIME_BENCH_SCRATCH"   # the scratch folder, set by main() for itself and its workers


def weights_file() -> Path:
    """The random-weights file in the scratch folder that the parent process chose."""
    folder = os.environ.get(SCRATCH_ENV)
    if not folder:
        raise SystemExit(f"${SCRATCH_ENV} is not set: run bench/bench_dit.py without --worker / --child")
    return Path(folder) / f"{PRESET.replace('-', '_')}_random_bf16.safetensors"


def _package():
    import importlib.util
    spec = importlib.util.spec_from_file_location("spacetime_video", ROOT / "__init__.py",
                                                  submodule_search_locations=[str(ROOT)])
    mod = importlib.util.module_from_spec(spec)
    sys.modules["spacetime_video"] = mod
    spec.loader.exec_module(mod)
    return mod


def random_weights(st, cfg, device: str = "cpu") -> dict:
    """Random bf16 official-layout weights of a ``WanDiT(cfg)`` (``st``: the package), drawn
    on `device` one tensor at a time in fp32: the same numbers for the same device."""
    import torch
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in st.model.WanDiT(cfg).state_dict().items()}
    g = torch.Generator(device).manual_seed(0)
    return {k: (torch.randn(s, generator=g, device=device) / (s[1] if len(s) > 1 else 1) ** 0.5
                * (0.02 if "modulation" in k else 1)).to(torch.bfloat16) for k, s in shapes.items()}


def write_weights() -> None:
    from safetensors.torch import save_file
    st = _package()
    sd = random_weights(st, st.model.DIT_PRESETS[PRESET])
    path = weights_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(path))


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


def set_allocator(tuned: bool) -> None:
    """Tuned: glibc malloc keeps freed big blocks for reuse (what SPACETIME_MALLOC_TUNING=1
    does). Default: nothing is called, because any mallopt() call also switches off glibc's
    dynamic mmap threshold (up to 32 MB), which is what a host process really runs with."""
    if tuned:
        import ctypes
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 1 << 30)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 1 << 31)  # M_TRIM_THRESHOLD


def _load_assign(model, sd: dict, keep_dtypes: bool) -> None:
    """load_state_dict(assign=True) into a meta-device model. `keep_dtypes`: cast parameters
    back to the dtype the model built them in (ComfyUI builds its patch embedding in fp32);
    otherwise they keep the file's bf16 (what ``.to(bfloat16)`` gave diffusers before)."""
    want = {n: p.dtype for n, p in model.named_parameters()}
    model.load_state_dict(sd, strict=True, assign=True)
    for name, p in model.named_parameters():
        if keep_dtypes and p.dtype != want[name]:
            p.data = p.data.to(want[name])


def _no_meta(model) -> None:
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise RuntimeError(f"not loaded from the file: {left[:5]}")


def build(name: str):
    """Load one implementation from the shared file; returns (call(x), load seconds)."""
    import torch
    x, t, ctx = inputs(torch)
    bf = torch.bfloat16
    weights = weights_file()
    t0 = time.perf_counter()
    if name == "ours":
        st = _package()
        model = st.model.load_dit(weights, compute_dtype=bf)
        call = lambda xx: model(xx, t, ctx)  # noqa: E731
    elif name == "comfy":
        sys.path.insert(0, str(COMFY))
        import comfy.cli_args
        comfy.cli_args.args.cpu = True
        import comfy.ops
        from comfy.ldm.wan.model import WanModel
        from safetensors.torch import load_file
        # Built on the meta device; the loaded tensors become the parameters (assign=True).
        model = WanModel(dim=REF["dim"], ffn_dim=REF["ffn"], num_heads=REF["heads"], num_layers=REF["layers"],
                         in_dim=REF["ch"], out_dim=REF["ch"], operations=comfy.ops.disable_weight_init, dtype=bf,
                         device="meta")
        _load_assign(model, load_file(str(weights)), keep_dtypes=True)
        _no_meta(model)
        call = lambda xx: model(xx.to(bf), t, ctx.to(bf))  # noqa: E731
    elif name == "diffusers":
        from diffusers import WanTransformer3DModel
        from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers
        from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed
        from safetensors.torch import load_file
        with torch.device("meta"):
            model = WanTransformer3DModel(num_attention_heads=REF["heads"], attention_head_dim=128,
                                          ffn_dim=REF["ffn"], num_layers=REF["layers"], in_channels=REF["ch"],
                                          out_channels=REF["ch"])
        _load_assign(model, convert_wan_transformer_to_diffusers(load_file(str(weights))), keep_dtypes=False)
        model.rope = WanRotaryPosEmbed(128, (1, 2, 2), 1024).to(bf)   # not in the file; bf16 as .to(bf) gave
        _no_meta(model)
    elif name == "matmul":
        return (lambda: None), 0.0
    else:
        raise ValueError(name)
    if name == "diffusers":
        call = lambda xx: model(xx.to(bf), t, ctx.to(bf), return_dict=False)[0]  # noqa: E731
    load_s = time.perf_counter() - t0
    call(x[:, :, :1, :8, :8])  # warm-up on a tiny latent (kernel selection, lazy inits)
    return (lambda: call(x)), load_s


def worker(name: str, mode: str) -> None:
    """Serve timed forwards, one per "run" line on stdin, one JSON line per answer. The
    allocator mode is fixed for the worker's life (see set_allocator)."""
    import torch
    torch.set_grad_enabled(False)
    set_allocator(mode == "tuned")
    run, load_s = build(name)
    print(json.dumps({"ready": name, "load_s": load_s}), flush=True)
    for _ in sys.stdin:
        if name == "matmul":
            print(json.dumps(run_matmul()), flush=True)
            continue
        t0 = time.perf_counter()
        out = run()
        sec = time.perf_counter() - t0
        assert out.shape == LATENT and torch.isfinite(out.float()).all()
        print(json.dumps({"impl": name, "mode": mode, "forward_s": sec}), flush=True)


def run_matmul(n: int = 4096, device: str = "cpu", dtype: str = "bfloat16", repeats: int = 3) -> dict:
    """The matmul peak: the best of `repeats` n^3 matmuls in `dtype` on `device`."""
    import torch
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    a = torch.randn(n, n, device=device).to(getattr(torch, dtype))
    b = torch.randn(n, n, device=device).to(getattr(torch, dtype))
    a @ b
    sync()
    best = 1e9
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        sync()
        best = min(best, time.perf_counter() - t0)
    return {"impl": "matmul", "tflops": 2 * n**3 / best / 1e12}


def _hwm() -> int:
    """Peak RSS of this process (VmHWM; ru_maxrss would carry the parent's peak over exec)."""
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run_load_rss() -> dict:
    import torch
    st = _package()
    weights = weights_file()
    base = _hwm()
    model = st.model.load_dit(weights, compute_dtype=torch.bfloat16)
    peak = _hwm()
    size = weights.stat().st_size
    return {"impl": "load", "file_gb": size / 1e9, "peak_rss_gb": peak / 1e9, "rss_before_gb": base / 1e9,
            "ratio": peak / size, "params": sum(p.numel() for p in model.parameters())}


def child(name: str, threads: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), HF_HUB_OFFLINE="1")
    r = subprocess.run([sys.executable, __file__, "--child", name], env=env, capture_output=True, text=True)
    if r.returncode:
        return {"impl": name, "error": r.stderr[-2000:]}
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--mode", choices=MODES, default="default")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--impls", default="ours,comfy,diffusers")
    ap.add_argument("--model", choices=sorted(MODELS), default=MODEL)
    ap.add_argument("--sequential", action="store_true",
                    help="one worker process at a time (for models whose copies do not fit in memory together)")
    ap.add_argument("--scratch", type=Path,
                    help="folder for the random weights file, kept afterwards and reused by later runs "
                         "(default: a temporary folder, removed at the end)")
    a = ap.parse_args()
    if a.model != MODEL:   # re-run with the model fixed for this process and its workers
        os.environ["SPACETIME_BENCH_MODEL"] = a.model
        os.execv(sys.executable, [sys.executable, *sys.argv])
    if a.child:
        print(json.dumps({"load": run_load_rss}[a.child]()))
        return
    if a.worker:
        worker(a.worker, a.mode)
        return
    scratch = a.scratch or Path(tempfile.mkdtemp(prefix="spacetime-bench-"))
    scratch.mkdir(parents=True, exist_ok=True)
    os.environ[SCRATCH_ENV] = str(scratch.resolve())   # inherited by every subprocess below
    try:
        measure(a)
    finally:
        if a.scratch is None:
            shutil.rmtree(scratch, ignore_errors=True)


def measure(a: argparse.Namespace) -> None:
    """Write the random weights if the scratch folder lacks them, then run and report."""
    if not weights_file().exists():
        child_write = subprocess.run([sys.executable, "-c", "import runpy,sys; sys.argv=['x'];"
                                      f"m=runpy.run_path({str(Path(__file__))!r}); m['write_weights']()"])
        assert child_write.returncode == 0
    res: dict = {"load": child("load", a.threads)}
    # Each implementation lives in its own process per allocator mode, and forwards are
    # interleaved round-robin so drift in the machine's load hits all alike.
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads), HF_HUB_OFFLINE="1", SPACETIME_MALLOC_TUNING="0")
    names = ["matmul"] + a.impls.split(",")
    # --sequential: each implementation alone (memory); otherwise all alive and interleaved.
    for mode in MODES:
        for group in ([[n] for n in names] if a.sequential else [names]):
            for n, runs in _run_group(group, env, a.rounds, mode).items():
                res.setdefault(n, {"load_s": runs.pop("load_s")})[mode] = runs[mode]
    report(res, a.impls.split(","))


def _run_group(names: list[str], env: dict, rounds: int, mode: str) -> dict:
    """Start one worker per name in allocator `mode` (one at a time, so loading does not
    overlap), run `rounds` forwards round-robin over them, then stop them all."""
    procs, res = {}, {}
    for n in names:
        p = subprocess.Popen([sys.executable, __file__, "--worker", n, "--mode", mode], env=env,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        procs[n] = p
        ready = json.loads(p.stdout.readline())
        res[n] = {"load_s": ready["load_s"], mode: []}
    for _ in range(rounds):
        for n, p in procs.items():
            p.stdin.write("run\n")
            p.stdin.flush()
            r = json.loads(p.stdout.readline())
            res[n][mode].append(r.get("forward_s", r.get("tflops")))
    for p in procs.values():
        p.stdin.close()
        p.wait()
    return res


def report(res: dict, impls: list[str]) -> None:
    st = _package()
    cfg = st.model.DIT_PRESETS[PRESET]
    print(f"model {MODEL} ({PRESET}), latent {LATENT}")
    fl = flops(cfg, LATENT[2] * LATENT[3] * LATENT[4] // 4, TEXT_LEN)
    peak = max(v for m in MODES for v in res["matmul"][m])
    print(json.dumps(res, indent=1))
    print(f"\nforward FLOPs {fl / 1e12:.2f} T; bf16 matmul peak (4096^3, best of run) {peak:.3f} TFLOP/s")
    print("\n| impl | load s | allocator | forward s (best) | all runs | TFLOP/s | % of peak |")
    print("|---|---|---|---|---|---|---|")
    best = {}
    for n in impls:
        for mode in MODES:
            runs = res[n][mode]
            b = min(runs)
            best[(n, mode)] = b
            tf = fl / b / 1e12
            print(f"| {n} | {res[n]['load_s']:.1f} | {mode} | {b:.1f} | {', '.join(f'{r:.1f}' for r in runs)} "
                  f"| {tf:.3f} | {100 * tf / peak:.0f}% |")
    for mode in MODES:
        refs = {n: best[(n, mode)] for n in impls if n != "ours"}
        if refs and "ours" in impls:
            ref = min(refs, key=refs.get)
            print(f"{mode} allocator: ours / fastest reference ({ref}) = {best[('ours', mode)] / refs[ref]:.3f} (target <= 0.85)")
    L = res["load"]
    if "ratio" in L:
        print(f"load peak RSS {L['peak_rss_gb']:.2f} GB for a {L['file_gb']:.2f} GB file: {L['ratio']:.2f}x (target <= 1.3x)")


if __name__ == "__main__":
    main()
