"""Sequence-parallel DiT on gloo (CPU): 2 ranks (Ulysses; CFG parallel), 3 ranks (heads do not
divide: ring attention) and 4 ranks (Ulysses x ring, CFG x Ulysses) equal the single process,
for tiny random configs of each Wan family and the embedded model; bad input fails clearly."""
from __future__ import annotations

import json
import socket

import pytest
import torch.multiprocessing as mp

import parallel_workers

TOL = 1e-5


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(world: int, jobs: list[str], tmp_path) -> dict:
    result = tmp_path / f"result-{world}-{'-'.join(jobs)}.json"
    mp.spawn(parallel_workers.run_rank, args=(world, free_port(), jobs, str(result)), nprocs=world, join=True)
    return json.loads(result.read_text())


@pytest.fixture(scope="module", params=[2, 3, 4])
def run(request, tmp_path_factory) -> dict:
    return spawn(request.param, ["checks"], tmp_path_factory.mktemp("parallel"))


def test_parallel_equals_single_process(run):
    errors = {k: v for k, v in run.items() if k.startswith(("forward/", "sampled/"))}
    families = {k.split("/")[1] for k in errors}
    assert families == set(parallel_workers.FAMILIES)
    assert any(k.startswith("sampled/") for k in errors)
    bad = {k: v for k, v in errors.items() if not v <= TOL}
    assert not bad, f"{run['world']} ranks: relative error above {TOL}: {bad}"


def test_layouts_cover_each_scheme(run):
    tags = {k.split("/")[2] for k in run if k.startswith("forward/")}
    if run["world"] == 2:
        assert {"cfg1-u2-r1", "cfg2-u1-r1"} <= tags          # Ulysses; CFG parallel
    if run["world"] == 3:
        assert "cfg1-u1-r3" in tags                          # 2 and 4 heads: ring
    if run["world"] == 4:
        assert {"cfg1-u2-r2", "cfg2-u2-r1"} <= tags          # hybrid (2 heads); CFG x Ulysses
