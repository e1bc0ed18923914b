"""Interop on a real host: our MODEL under native KSampler / SamplerCustomAdvanced driven by our
SIGMAS and SAMPLER, our SIGMAS into our Sampler; files of the expected size come out."""
from __future__ import annotations

import pytest

from nodes_helpers import error_message, run, saved_files, write_tiny_models
from test_nodes_errors import graph

pytestmark = pytest.mark.host


@pytest.fixture(scope="module")
def tiny(host):
    return write_tiny_models(host.base_dir)


def _frames(host, h):
    from spacetime_video.nodes.video_file import read_video
    assert error_message(h) is None, error_message(h)
    (item,) = saved_files(h)
    return read_video(host.base_dir / "output" / item["subfolder"] / item["filename"])[0]


def test_native_samplers_drive_our_model_with_our_sigmas_and_solver(host, tiny):
    g = graph(tiny, length=9)
    g["10"] = {"class_type": "SpacetimeScheduler", "inputs": {"steps": 2, "shift": 2.0, "spacing": "wan", "denoise": 1.0}}
    g["11"] = {"class_type": "SpacetimeSolver", "inputs": {"solver": "euler", "order": 2}}
    g["12"] = {"class_type": "CFGGuider", "inputs": {"model": ["1", 0], "positive": ["4", 0], "negative": ["5", 0], "cfg": 2.0}}
    g["13"] = {"class_type": "RandomNoise", "inputs": {"noise_seed": 3}}
    g["7"] = {"class_type": "SamplerCustomAdvanced", "inputs": {"noise": ["13", 0], "guider": ["12", 0],
              "sampler": ["11", 0], "sigmas": ["10", 0], "latent_image": ["6", 0]}}
    assert _frames(host, run(host, g)).shape == (9, 32, 32, 3)

    g = graph(tiny, length=9)
    g["7"] = {"class_type": "KSampler", "inputs": {"model": ["1", 0], "positive": ["4", 0], "negative": ["5", 0],
              "latent_image": ["6", 0], "seed": 1, "steps": 2, "cfg": 2.0, "sampler_name": "uni_pc",
              "scheduler": "simple", "denoise": 1.0}}
    assert _frames(host, run(host, g)).shape == (9, 32, 32, 3)


def test_our_sigmas_into_our_sampler(host, tiny):
    g = graph(tiny, length=5)
    g["10"] = {"class_type": "SpacetimeScheduler", "inputs": {"steps": 3, "shift": 2.0, "spacing": "wan", "denoise": 1.0}}
    g["7"]["inputs"]["sigmas"] = ["10", 0]
    assert _frames(host, run(host, g)).shape == (5, 32, 32, 3)
