"""The torchrun command of the parallel render: two invocations with --nnodes 2 on 127.0.0.1
equal one process; a port in use and a run outside torchrun fail clearly."""
from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
import torch
from dit_helpers import rel_err
from safetensors.torch import load_file

from spacetime_video.headless import parallel as P
from spacetime_video.pipeline import generate_embedded

TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]
JOB = ["-m", "spacetime_video.headless.parallel", "--distilled", "--frames", "5", "--seed", "3"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env() -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def test_two_nodes_on_localhost_equal_one_process(tmp_path):
    port, out = free_port(), tmp_path / "clip.safetensors"
    nodes = [subprocess.Popen([*TORCHRUN, "--nnodes", "2", "--nproc_per_node", "1", "--node_rank", str(i),
                               "--master_addr", "127.0.0.1", "--master_port", str(port), *JOB,
                               "--out", str(out if i == 0 else tmp_path / "unused.safetensors")],
                              env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in (0, 1)]
    try:
        logs = [n.communicate(timeout=240)[0] for n in nodes]
    finally:
        for n in nodes:
            n.kill()
    assert [n.returncode for n in nodes] == [0, 0], logs
    assert "2 ranks = 1 CFG x 2 Ulysses" in logs[0], logs[0]
    got = load_file(out)["video"]
    with torch.no_grad():
        ref = generate_embedded("a red ball rolls to the left across a black background", frames=5, seed=3,
                                distilled=True)
    assert got.shape == ref.shape == (3, 5, 64, 64)
    assert rel_err(got, ref) <= 1e-5


def test_port_in_use_is_named(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        r = subprocess.run([*TORCHRUN, "--nproc_per_node", "1", "--master_addr", "127.0.0.1", "--master_port",
                            str(s.getsockname()[1]), *JOB, "--out", str(tmp_path / "x.gif")],
                           env=env(), capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    assert "address already in use" in r.stderr


def test_outside_torchrun_says_how_to_launch(tmp_path, monkeypatch, caplog):
    for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(k, raising=False)
    assert P.main(["--out", str(tmp_path / "x.gif")]) == 1
    assert "start the parallel run with torchrun" in caplog.text


def test_bad_arguments_are_refused(tmp_path):
    with pytest.raises(SystemExit):
        P.parse_args(["--out", str(tmp_path / "x.mp4")])
    with pytest.raises(SystemExit):
        P.parse_args(["--out", str(tmp_path / "x.gif"), "--dit", "a.safetensors"])


def test_wan_checkpoint_path_with_vae_bands(tmp_path, monkeypatch):
    """--dit/--vae/--text with --vae-bands on a group of one (torchrun's variables set here): the
    clip equals generate() with the same files."""
    from safetensors.torch import save_file
    from nodes_helpers import write_tiny_models

    from spacetime_video.model.dit import load_dit
    from spacetime_video.model.vae import load_vae
    from spacetime_video.pipeline import generate

    names = write_tiny_models(tmp_path)
    dit_file, vae_file = tmp_path / "models/diffusion_models" / names["dit"], tmp_path / "models/vae" / names["vae"]
    text = {"context": torch.randn(1, 5, 64), "negative": torch.zeros(1, 5, 64)}
    save_file(text, str(tmp_path / "states.safetensors"))
    for k, v in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                 "MASTER_PORT": str(free_port())}.items():
        monkeypatch.setenv(k, v)
    out = tmp_path / "clip.safetensors"
    args = ["--dit", str(dit_file), "--vae", str(vae_file), "--text", str(tmp_path / "states.safetensors"),
            "--frames", "5", "--height", "32", "--width", "32", "--steps", "2", "--vae-bands", "--out", str(out)]
    assert P.main(args) == 0
    with torch.no_grad():
        ref = generate(load_dit(dit_file), load_vae(vae_file), text["context"], text["negative"], frames=5,
                       height=32, width=32, steps=2, seed=0)
    got = load_file(out)["video"]
    assert got.shape == ref.shape == (3, 5, 32, 32)
    assert rel_err(got, ref.float()) <= 1e-5
