"""A worker rank of a :class:`~.pool.WorkerPool`: joins the pool's process group, receives the
model and then, call after call, the embedded inputs of each DiT forward, and runs its share.

Started by the pool as ``python -c <bootstrap> RANK WORLD PORT TIMEOUT DEVICE`` so that it
imports this package from the same folder as the host, whatever that folder is called. Commands
arrive through the process group's key-value store (``cmd/<n>``): ``forward``, ``weights``,
``stop``. A worker exits when the host process is gone.
"""
from __future__ import annotations

import logging
import os
import sys
from datetime import timedelta

import torch
import torch.distributed as dist

from ..dit.config import DiTConfig
from ..dit.model import WanDiT
from ..dit.patches import grid_of, rope_table
from .pool import receive_tensors, receive_weights, setup_message
from .sequence import parallelize

log = logging.getLogger(__name__)
IDLE_POLL_S = 2.0


def next_command(store: dist.Store, n: int, host_pid: int) -> str:
    """Block until the host posts command ``n``; exit quietly when the host has gone."""
    while True:
        if os.getppid() != host_pid:
            sys.exit(0)
        try:
            store.wait([f"cmd/{n}"], timedelta(seconds=IDLE_POLL_S))
            return store.get(f"cmd/{n}").decode()
        except dist.DistStoreError:
            continue            # no command yet (a timeout), or the host is going: checked above
        except Exception:       # the store itself is gone with its host
            sys.exit(0)


def serve(rank: int, world: int, port: int, timeout_s: float, device: str) -> None:
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    host_pid = os.getppid()
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", init_method=f"tcp://127.0.0.1:{port}",
                            rank=rank, world_size=world, timeout=timedelta(seconds=timeout_s))
    store = dist.distributed_c10d._get_default_store()
    setup = setup_message(None)
    config = DiTConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in setup["config"].items()})
    dit = WanDiT(config, compute_dtype=setup["compute_dtype"], attention=setup["attention"]).eval()
    for name, dtype in setup["dtypes"].items():      # the host's storage precision, tensor by tensor
        t = dit.get_parameter(name) if name in dict(dit.named_parameters()) else dit.get_buffer(name)
        t.data = t.data.to(dev, dtype)
    dit.to(dev)
    receive_weights(dit)
    parallelize(dit, cfg=setup["cfg"], timeout_s=timeout_s)
    plan = dit.sequence_parallel
    n = 0
    with torch.no_grad():
        while True:
            cmd = next_command(store, n, host_pid)
            n += 1
            if cmd == "stop":
                break
            if cmd == "weights":
                receive_weights(dit)
                continue
            x, e, e0, ctx, ctx_img = receive_tensors(dev)
            grid = grid_of(x.shape, dit.config.patch_size, dit.config.in_dim)
            rope = rope_table(grid, dit.config.head_dim, dit.config.rope_theta, dev)
            plan(dit, x, e, e0, ctx, ctx_img, rope, dit.attention_fn(dev))
    dist.destroy_process_group()


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    serve(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), sys.argv[5])
