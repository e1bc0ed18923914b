"""The Parallel DiT node on a real ComfyUI server: a run on 2 CPU ranks renders; a worker killed
between runs makes the next run a node error naming its rank, and the run after that renders
again (the server keeps serving, the workers start afresh)."""
from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from nodes_helpers import error_message, run, saved_files

pytestmark = pytest.mark.host


def graph(seed: int) -> dict:
    return {
        "1": {"class_type": "SpacetimeEmbeddedLoader", "inputs": {"shift": 2.0}},
        "2": {"class_type": "SpacetimeTextEncode", "inputs": {"text_encoder": ["1", 2], "text": "a red ball"}},
        "3": {"class_type": "SpacetimeCanvas", "inputs": {"vae": ["1", 1], "model": ["1", 0], "width": 64,
              "height": 64, "length": 5, "invalid_size": "snap", "allow_large": False}},
        "7": {"class_type": "SpacetimeParallelDiT", "inputs": {"model": ["1", 0], "device_count": 2,
              "cfg_parallel": False, "timeout": 30.0}},
        "4": {"class_type": "SpacetimeSampler", "inputs": {"model": ["7", 0], "positive": ["2", 0],
              "negative": ["2", 0], "latent": ["3", 0], "seed": seed, "steps": 2, "cfg": 2.0, "solver": "euler",
              "shift": 2.0, "denoise": 1.0}},
        "5": {"class_type": "SpacetimeVAEDecode", "inputs": {"samples": ["4", 0], "vae": ["1", 1], "tile": 0}},
        "6": {"class_type": "SaveImage", "inputs": {"images": ["5", 0], "filename_prefix": f"parallel/{seed}"}}}


def workers_of(pid: int) -> list[int]:
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmd = (d / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid and b"spacetime_video.model.parallel.worker" in cmd:
            found.append(int(d.name))
    return found


def test_killed_worker_is_a_node_error_and_the_next_run_renders(host):
    h = run(host, graph(1))
    assert error_message(h) is None and saved_files(h), [l for l in host.log_text().splitlines() if "Error" in l][:8]
    workers = workers_of(host.proc.pid)
    assert len(workers) == 1, workers
    os.kill(workers[0], signal.SIGKILL)
    h = run(host, graph(2))
    message = error_message(h) or ""
    assert "worker rank 1" in message and "exited with code -9" in message, message
    h = run(host, graph(3))
    assert error_message(h) is None and saved_files(h), error_message(h)
    assert workers_of(host.proc.pid) not in ([], workers)
