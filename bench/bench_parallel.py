"""Sequence-parallel DiT on CPU ranks (gloo): agreement with one process, per-rank activation
memory and the time of one forward, as ratios.

    python bench/bench_parallel.py [--ranks 2,3,4]

- accuracy: the rank programs of tests/test_parallel.py (tiny random configs of each Wan family
  and the embedded model; forwards and a 4-step guided run) at each rank count; the largest
  relative error against one process.
- memory: peak bytes of the tensors one forward of 4,096 tokens (width 1024, 8 heads) creates on
  a rank of 2, over one process; with the CPU's size-dependent chunking off (as on a GPU) and on.
- time: that forward on 2 ranks of 1 thread each against 1 process of 1 thread:
  efficiency = one-process time / (2 x parallel time).
"""
from __future__ import annotations

import argparse
import datetime
import json
import socket
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import parallel_workers as W  # noqa: E402  (also makes this checkout ``spacetime_video``)

from spacetime_video.model.dit import WanDiT  # noqa: E402
from spacetime_video.model.parallel import parallelize  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def timed(rank: int, world: int, out: dict) -> None:
    torch.manual_seed(0)
    dit = WanDiT(W.MEMORY_CONFIG, attention="sdpa").eval()
    parallelize(dit, timeout_s=300)
    g = torch.Generator().manual_seed(0)
    x, ctx = torch.randn(1, 16, 16, 32, 32, generator=g), torch.randn(1, 16, 32, generator=g)
    times = {}
    with torch.no_grad():
        for mode in ("parallel", "single"):
            if mode == "single":
                dit.sequence_parallel = None
                if rank != 0:
                    break
            dit(x, torch.tensor([500.0]), ctx)
            best = float("inf")
            for _ in range(2):
                dist.barrier() if mode == "parallel" else None
                t0 = time.perf_counter()
                dit(x, torch.tensor([500.0]), ctx)
                best = min(best, time.perf_counter() - t0)
            times[mode] = best
    if rank == 0:
        out["time"] = times


def memory(rank: int, world: int, out: dict) -> None:
    W.activation_memory(rank, world, out, chunking=False, key="memory_no_chunks")
    W.activation_memory(rank, world, out, chunking=True, key="memory_chunks")


JOBS = {"checks": W.checks, "time": timed, "memory": memory}


def rank_main(rank: int, world: int, port: int, jobs: list[str], result: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=300))
    out: dict = {}
    for job in jobs:
        JOBS[job](rank, world, out)
    if rank == 0:
        Path(result).write_text(json.dumps(out))
    dist.destroy_process_group()


def spawn(world: int, jobs: list[str]) -> dict:
    result = Path(tempfile.mkdtemp()) / "out.json"
    mp.start_processes(rank_main, args=(world, free_port(), jobs, str(result)), nprocs=world, start_method="fork")
    return json.loads(result.read_text())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ranks", default="2,3,4")
    args = p.parse_args()
    for world in (int(r) for r in args.ranks.split(",")):
        out = spawn(world, ["checks"])
        errs = {k: v for k, v in out.items() if "/" in k}
        fwd = max(v for k, v in errs.items() if k.startswith("forward/"))
        smp = max(v for k, v in errs.items() if k.startswith("sampled/"))
        layouts = sorted({k.split("/")[2] for k in errs})
        print(f"{world} ranks ({', '.join(layouts)}): max relative error forward {fwd:.2e}, 4-step run {smp:.2e}")
    out = spawn(2, ["memory", "time"])
    for key, what in (("memory_no_chunks", "CPU chunking off"), ("memory_chunks", "CPU chunking on")):
        m = out[key]
        print(f"2 ranks, peak activation memory per rank / one process ({what}): "
              f"{max(m['ranks']) / m['single']:.3f} ({max(m['ranks']) / 1e6:.1f} MB / {m['single'] / 1e6:.1f} MB)")
    t = out["time"]
    print(f"2 ranks x 1 thread, one forward of 4,096 tokens: {t['parallel']:.2f} s vs {t['single']:.2f} s on one; "
          f"efficiency {t['single'] / (2 * t['parallel']):.2f}")


if __name__ == "__main__":
    main()
