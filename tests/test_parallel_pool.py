"""Persistent workers (model/parallel/pool.py): the host process is rank 0 of worker processes
that stay alive across calls, follow the host's weights, and fail clearly when one dies."""
from __future__ import annotations

import os
import signal

import pytest
import torch
from dit_helpers import TINY, inputs, random_state_dict, rel_err

from spacetime_video.model.dit import WanDiT
from spacetime_video.model.parallel import ParallelError
from spacetime_video.model.parallel.pool import WorkerPool


def call(dit: WanDiT, pool: WorkerPool | None, *args) -> torch.Tensor:
    dit.sequence_parallel = None if pool is None else pool.running()
    try:
        with torch.no_grad():
            return dit(*args)
    finally:
        dit.sequence_parallel = None


def test_workers_persist_follow_weights_and_fail_clearly():
    cfg = TINY["t2v"]
    dit = WanDiT(cfg, attention="math").eval()
    dit.load_state_dict(random_state_dict(cfg))
    x, t, ctx, _ = inputs(cfg, b=2, t=3)
    pool = WorkerPool(dit, world=2, timeout_s=20)
    try:
        assert rel_err(call(dit, pool, x, t, ctx), call(dit, None, x, t, ctx)) <= 1e-5
        pids = [p.pid for p in pool.procs]
        assert rel_err(call(dit, pool, x, t, ctx), call(dit, None, x, t, ctx)) <= 1e-5
        assert [p.pid for p in pool.procs] == pids                      # the same workers
        with torch.no_grad():                                           # a LoRA-like change in place
            dit.blocks[0].ffn[0].weight.mul_(1.5)
        assert rel_err(call(dit, pool, x, t, ctx), call(dit, None, x, t, ctx)) <= 1e-5
        os.kill(pids[0], signal.SIGKILL)
        with pytest.raises(ParallelError, match=r"worker rank 1 \(pid \d+\) exited with code -9"):
            call(dit, pool, x, t, ctx)
        assert not pool.alive and all(p.poll() is not None for p in pool.procs or [])
        assert rel_err(call(dit, pool, x, t, ctx), call(dit, None, x, t, ctx)) <= 1e-5  # started afresh
        assert [p.pid for p in pool.procs] != pids
    finally:
        pool.close()
