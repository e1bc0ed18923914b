"""The Parallel DiT node (in-process ComfyUI): native sampling through the worker pool equals
sampling on one process; bad device counts are node errors naming the input."""
from __future__ import annotations

import os

import pytest
import torch
from dit_helpers import TINY, random_state_dict, rel_err


@pytest.fixture(scope="module")
def pn(comfy):
    from spacetime_video.nodes import parallel_nodes
    yield parallel_nodes
    parallel_nodes.close_pools()


def _model():
    from spacetime_video.model.dit import load_dit
    from spacetime_video.nodes.comfy_model import wrap_dit
    return wrap_dit(load_dit(random_state_dict(TINY["t2v"], 3), config=TINY["t2v"], attention="math"), shift=5.0)


def _sample(model):
    import comfy.sample
    ctx = torch.randn(1, 7, TINY["t2v"].text_dim, generator=torch.Generator().manual_seed(1))
    latent = torch.zeros(1, 16, 3, 8, 8)
    noise = comfy.sample.prepare_noise(latent, 0)
    return comfy.sample.sample(model, noise, 3, 2.0, "uni_pc", "simple", [[ctx, {}]], [[torch.zeros_like(ctx), {}]],
                               latent, seed=0)


def test_native_sampler_through_workers_equals_one_process(pn):
    model = _model()
    ref = _sample(model)
    parallel = pn.SpacetimeParallelDiT.execute(model, 2, cfg_parallel=True, timeout=30).result[0]
    got = _sample(parallel)
    assert rel_err(got, ref) <= 1e-5
    pool = next(iter(pn._pools.values()))
    assert pool.alive and pool.layout.cfg == 2 and len(pool.procs) == 1
    assert rel_err(_sample(parallel), ref) <= 1e-5           # a second run: the same worker
    assert rel_err(_sample(model), ref) == 0                   # the unpatched MODEL stays single-process


def test_bad_device_counts_name_the_input(pn):
    from spacetime_video.nodes.errors import SpacetimeNodeError
    model = _model()
    with pytest.raises(SpacetimeNodeError, match=r"SpacetimeParallelDiT: input 'device_count': .* core"):
        pn.SpacetimeParallelDiT.execute(model, (os.cpu_count() or 1) + 1)
    with pytest.raises(SpacetimeNodeError, match=r"input 'cfg_parallel': needs an even device_count"):
        pn.SpacetimeParallelDiT.execute(model, 3, cfg_parallel=True)
