"""Rank programs for tests/test_parallel.py: each spawned rank joins a gloo group on 127.0.0.1,
runs several parallel checks, and rank 0 compares each with the single-process result and
writes the relative errors to a file the test reads."""
from __future__ import annotations

import datetime
import json
import os
import time
import weakref

import conftest  # noqa: F401  (this checkout as ``spacetime_video`` in a spawned rank)
import torch
import torch.distributed as dist
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from dit_helpers import TINY, inputs, random_state_dict, rel_err

from spacetime_video.model.dit import WanDiT
from spacetime_video.model.dit import model as dit_model
from spacetime_video.model.embedded import load_embedded
from spacetime_video.model.embedded.config import DIT_CONFIG as EMBEDDED
from spacetime_video.model.parallel import ParallelError, parallelize
from spacetime_video.model.parallel.vae import bands, sharded_decode
from spacetime_video.samplers import cfg_denoiser, flow_sigmas, sample

FAMILIES = {"t2v": TINY["t2v"], "i2v": TINY["i2v"], "ti2v": TINY["ti2v"], "embedded": EMBEDDED}


def build(name: str, seed: int = 0) -> WanDiT:
    cfg = FAMILIES[name]
    dit = WanDiT(cfg, attention="math").eval()
    dit.load_state_dict(random_state_dict(cfg, seed))
    return dit


def family_inputs(name: str, frames: int) -> tuple:
    """A guided batch of 2 (cond, uncond contexts); per-token timesteps for TI2V (frame 0 kept)."""
    cfg = FAMILIES[name]
    x, _, ctx, clip = inputs(cfg, b=2, t=frames, hw=8)
    if name == "ti2v":
        tokens = frames * 16
        t = torch.full((2, tokens), 700.0)
        t[:, :16] = 0.0
    else:
        t = torch.tensor([700.0, 700.0])
    return x, t, ctx, clip


def forward_error(dit: WanDiT, name: str, frames: int) -> float:
    x, t, ctx, clip = family_inputs(name, frames)
    with torch.no_grad():
        got = dit(x, t, ctx, clip)
        plan, dit.sequence_parallel = dit.sequence_parallel, None
        ref = dit(x, t, ctx, clip) if dist.get_rank() == 0 else got
        dit.sequence_parallel = plan
    return rel_err(got, ref)


def sampled_error(dit: WanDiT, name: str, frames: int) -> float:
    """A 4-step guided UniPC run (batched cond/uncond forwards) vs the single-process run."""
    x, _, ctx, clip = family_inputs(name, frames)
    extra = {} if clip is None else {"clip_fea": clip[:1]}

    noise, image = x[:1, :dit.config.out_dim], x[:1, dit.config.out_dim:]   # I2V: image channels stay

    def model(z, sigma, context, **kw):
        z_in = torch.cat([z, image.expand(z.shape[0], -1, -1, -1, -1)], 1)
        return z - sigma.view(-1, 1, 1, 1, 1) * dit(z_in, 1000 * sigma, context, **kw)
    denoise = cfg_denoiser(model, {"context": ctx[:1], **extra}, {"context": ctx[1:], **extra}, 4.0)
    with torch.no_grad():
        got = sample(denoise, noise, flow_sigmas(4, 3.0), solver="unipc", disable=True)
        plan, dit.sequence_parallel = dit.sequence_parallel, None
        ref = sample(denoise, noise, flow_sigmas(4, 3.0), solver="unipc", disable=True) \
            if dist.get_rank() == 0 else got
        dit.sequence_parallel = plan
    return rel_err(got, ref)


def checks(rank: int, world: int, out: dict) -> None:
    """Every family at every layout this world size allows; frames 5 splits frames by rows."""
    layouts = [dict(cfg=1)] + ([dict(cfg=2)] if world % 2 == 0 else [])
    for name in FAMILIES:
        dit = build(name)
        for lay in layouts:
            groups = parallelize(dit, timeout_s=60, **lay)
            tag = f"{name}/cfg{lay['cfg']}-u{groups.layout.ulysses}-r{groups.layout.ring}"
            out[f"forward/{tag}/f3"] = forward_error(dit, name, 3)
            out[f"forward/{tag}/f5"] = forward_error(dit, name, 5)
            if name in ("t2v", "embedded") or lay["cfg"] == 1:
                out[f"sampled/{tag}"] = sampled_error(dit, name, 3)
        dit.sequence_parallel = None


def mismatched_weights(rank: int, world: int, out: dict) -> None:
    dit = build("t2v", seed=rank)               # every rank a different checkpoint
    try:
        parallelize(dit, timeout_s=30)
        out["mismatch"] = "no error"
    except ParallelError as e:
        out["mismatch"] = str(e)


def too_many_ranks(rank: int, world: int, out: dict) -> None:
    dit = build("t2v")
    parallelize(dit, timeout_s=30)
    x, t, ctx, _ = family_inputs("t2v", 1)
    x = x[:, :, :, :2, :]                       # one token row: fewer than the ranks
    try:
        with torch.no_grad():
            dit(x, t, ctx)
        out["too_many"] = "no error"
    except ValueError as e:
        out["too_many"] = str(e)


def lost_rank(rank: int, world: int, out: dict, stall: bool) -> None:
    """Rank 1 dies (or stalls) inside its second block; the others must fail within the timeout."""
    dit = build("t2v")
    parallelize(dit, timeout_s=5)
    if rank == 1:
        def die(*args, **kwargs):
            if stall:
                time.sleep(600)
            os._exit(3)
        dit.blocks[1].forward = die
    x, t, ctx, _ = family_inputs("t2v", 3)
    start = time.perf_counter()
    try:
        with torch.no_grad():
            dit(x, t, ctx)
        out["lost"] = "no error"
    except ParallelError as e:
        out["lost"] = str(e)
    out["lost_seconds"] = time.perf_counter() - start


class PeakTensorBytes(TorchDispatchMode):
    """The peak of the bytes held by tensors created while active (every op's outputs, counted
    once per storage until the tensor that owns it is freed): activation memory without the
    weights and inputs made before, and without kernels' internal scratch."""

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, int] = {}
        self.now = self.peak = 0

    def _free(self, key: int) -> None:
        self.now -= self.live.pop(key, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t._base is None and t.device.type == "cpu":
                key = t.untyped_storage().data_ptr()
                if key and key not in self.live:
                    self.live[key] = t.untyped_storage().nbytes()
                    self.now += self.live[key]
                    self.peak = max(self.peak, self.now)
                    weakref.finalize(t, self._free, key)
        return out


MEMORY_CONFIG = FAMILIES["t2v"].__class__(dim=1024, ffn_dim=2048, num_heads=8, num_layers=1, text_dim=32,
                                          freq_dim=64, text_len=16)


def activation_memory(rank: int, world: int, out: dict, chunking: bool = False, key: str = "memory") -> None:
    """Peak activation bytes of one forward of 4,096 tokens (width 1024, 8 heads of 128 as Wan's,
    SDPA) on this rank, and rank 0's single-process figure. The CPU forward's size-dependent
    paths (FFN chunks and separate q/k/v matmuls above CPU_CHUNK_BYTES) are switched off, as on a
    GPU, so that both runs take the same path and the comparison is of the sharding alone
    (``chunking=True`` keeps them, as the CPU forward runs)."""
    kept = dit_model.CPU_CHUNK_BYTES
    dit_model.CPU_CHUNK_BYTES = kept if chunking else 2**40
    torch.manual_seed(0)
    dit = WanDiT(MEMORY_CONFIG, attention="sdpa").eval()
    parallelize(dit, timeout_s=60)
    g = torch.Generator().manual_seed(0)
    x, ctx = torch.randn(1, 16, 16, 32, 32, generator=g), torch.randn(1, 16, 32, generator=g)
    peaks = {}
    for mode in ("parallel", "single"):
        if mode == "single":
            dit.sequence_parallel = None
            if rank != 0:
                break
        with torch.no_grad():
            dit(x, torch.tensor([500.0]), ctx)                  # cached RoPE tables: not activations
            with PeakTensorBytes() as meter:
                dit(x, torch.tensor([500.0]), ctx)
        peaks[mode] = meter.peak
    every = [torch.zeros(1, dtype=torch.float64) for _ in range(world)]
    dist.all_gather(every, torch.tensor([float(peaks["parallel"])], dtype=torch.float64))
    dit_model.CPU_CHUNK_BYTES = kept
    if rank == 0:
        out[key] = {"single": peaks["single"], "ranks": [int(e) for e in every]}


def vae_decode(rank: int, world: int, out: dict) -> None:
    """The embedded (Wan 2.1-layout) VAE: the banded decode on every rank equals the one-process
    tiled decode with the same bands, and stays close to the untiled one."""
    vae = load_embedded().vae
    z = torch.randn(1, vae.config.z_dim, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    got = sharded_decode(vae, z, halo=2)
    if rank == 0:
        tile, _ = bands(16, world, 2)
        s = vae.config.stride[1]
        with torch.no_grad():
            tiled = vae.decode(z, tile=(tile * s, 16 * s), tile_overlap=(2 * s, 0))
            whole = vae.decode(z)
        out["vae"] = {"tiled": rel_err(got, tiled), "whole": rel_err(got, whole), "shape": list(got.shape)}


JOBS = {"checks": checks, "memory": activation_memory, "vae": vae_decode, "mismatch": mismatched_weights, "too_many": too_many_ranks,
        "killed": lambda r, w, o: lost_rank(r, w, o, stall=False), "stalled": lambda r, w, o: lost_rank(r, w, o, stall=True)}


def run_rank(rank: int, world: int, port: int, jobs: list[str], result: str) -> None:
    """One rank of a spawned test group (torch.multiprocessing.spawn calls it)."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=60))
    out: dict = {"world": world}
    start = time.perf_counter()
    try:
        for job in jobs:
            JOBS[job](rank, world, out)
    finally:
        out["seconds"] = time.perf_counter() - start
        if rank == 0:
            with open(result, "w") as f:
                json.dump(out, f)
    if "lost" not in out:       # after a lost peer the group is broken: just leave
        dist.destroy_process_group()
