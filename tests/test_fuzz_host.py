"""Hostile input through the HTTP API of a real host: for every Spacetime node in /object_info and
every widget input it declares, generated bad values (wrong JSON types, NaN and infinities, out
of range, huge or NUL / surrogate strings, unknown choices, paths out of the folders, a missing
required input). Each must be refused with a 400 that names the node and the input, or fail
as a node error that names them; never a bare traceback, never a dead server; a valid job still
runs afterwards. Sizes inside the declared ranges that cannot fit are refused before allocating.
"""
from __future__ import annotations

import copy
import json
import math
import socket
import time

import pytest

from nodes_helpers import CLIP_A, queue, run, saved_files, wait, write_inputs, write_tiny_models

pytestmark = pytest.mark.host

BARE = ("KeyError", "TypeError", "AttributeError", "IndexError", "UnicodeEncodeError", "ValueError: embedded null")


@pytest.fixture(scope="module")
def tiny(host):
    names = write_tiny_models(host.base_dir)
    write_inputs(host.base_dir)
    return names


def closed_port() -> int:
    """A loopback port nobody listens on: the expander's server is unreachable, so it falls back
    to its rules, but every setting it reads (base_url, api_key_env, ...) is checked."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def base_graphs(t: dict) -> list[dict]:
    """Valid graphs that together hold every node of the pack on a path to an output."""
    loaders = {
        "1": {"class_type": "SpacetimeDiTLoader", "inputs": {"dit_name": t["dit"], "weight_dtype": "default",
              "compute_dtype": "fp32", "attention": "auto", "shift": 2.0, "low_noise_dit_name": "none"}},
        "2": {"class_type": "SpacetimeVAELoader", "inputs": {"vae_name": t["vae"], "dtype": "fp32"}},
        "3": {"class_type": "SpacetimeTextEncoderLoader", "inputs": {"text_encoder_name": t["text"]}},
        "4": {"class_type": "SpacetimeTextEncode", "inputs": {"text_encoder": ["3", 0], "text": ["23", 0]}},
        "5": {"class_type": "SpacetimeTextEncode", "inputs": {"text_encoder": ["3", 0], "text": ""}},
        "6": {"class_type": "SpacetimeCanvas", "inputs": {"vae": ["2", 0], "model": ["1", 0], "width": 32,
              "height": 32, "length": 5, "invalid_size": "snap", "allow_large": False}},
        "23": {"class_type": "SpacetimePromptExpander", "inputs": {
            "prompt": "red ball left", "task": "t2v", "model_family": "embedded", "language": "en", "seed": 0,
            "max_words": 40, "backend": "openai-compatible", "base_url": f"http://127.0.0.1:{closed_port()}/v1",
            "model": "m", "api_key_env": "OPENAI_API_KEY", "on_error": "fallback", "temperature": 0.7}},
    }
    main = {**copy.deepcopy(loaders),
            "21": {"class_type": "SpacetimeLoadVideo", "inputs": {"video": CLIP_A, "start_frame": 0, "frame_count": 5,
                   "stride": 1, "width": 32, "height": 32}},
            "20": {"class_type": "SpacetimePlaceFrames", "inputs": {"latent": ["6", 0], "vae": ["2", 0],
                   "images": ["21", 0], "position": "start", "frame": 0, "use": "first", "count": 1}},
            "22": {"class_type": "SpacetimeScheduler", "inputs": {"steps": 2, "shift": 2.0, "spacing": "wan",
                   "denoise": 1.0}},
            "7": {"class_type": "SpacetimeSampler", "inputs": {"model": ["1", 0], "positive": ["4", 0],
                  "negative": ["5", 0], "latent": ["20", 0], "seed": 1, "steps": 2, "cfg": 2.0, "solver": "euler",
                  "shift": 2.0, "denoise": 1.0, "sigmas": ["22", 0]}},
            "8": {"class_type": "SpacetimeVAEDecode", "inputs": {"samples": ["7", 0], "vae": ["2", 0], "tile": 0}},
            "9": {"class_type": "SpacetimeSaveVideo", "inputs": {"images": ["8", 0], "fps": 8.0,
                  "filename_prefix": "fuzz/ok", "format": "mp4"}},
            "24": {"class_type": "SpacetimeVAEEncode", "inputs": {"images": ["21", 0], "vae": ["2", 0], "tile": 0}},
            "25": {"class_type": "SpacetimeVAEDecode", "inputs": {"samples": ["24", 0], "vae": ["2", 0], "tile": 0}},
            "26": {"class_type": "SaveImage", "inputs": {"images": ["25", 0], "filename_prefix": "fuzz/enc"}}}
    custom = {**copy.deepcopy(loaders),
              "30": {"class_type": "SpacetimeSolver", "inputs": {"solver": "unipc", "order": 2}},
              "31": {"class_type": "SpacetimeScheduler", "inputs": {"steps": 2, "shift": 2.0, "spacing": "wan",
                     "denoise": 1.0}},
              "32": {"class_type": "RandomNoise", "inputs": {"noise_seed": 3}},
              "37": {"class_type": "SpacetimeLoraLoader", "inputs": {"model": ["1", 0], "lora_name": t["lora"],
                     "strength_model": 1.0}},
              "38": {"class_type": "SpacetimeParallelDiT", "inputs": {"model": ["37", 0], "device_count": 1,
                     "cfg_parallel": False, "timeout": 120.0}},
              "33": {"class_type": "CFGGuider", "inputs": {"model": ["38", 0], "positive": ["4", 0],
                     "negative": ["5", 0], "cfg": 2.0}},
              "34": {"class_type": "SamplerCustomAdvanced", "inputs": {"noise": ["32", 0], "guider": ["33", 0],
                     "sampler": ["30", 0], "sigmas": ["31", 0], "latent_image": ["6", 0]}},
              "35": {"class_type": "SpacetimeVAEDecode", "inputs": {"samples": ["34", 0], "vae": ["2", 0], "tile": 0}},
              "36": {"class_type": "SaveImage", "inputs": {"images": ["35", 0], "filename_prefix": "fuzz/custom"}}}
    embedded = {
        "1": {"class_type": "SpacetimeEmbeddedLoader", "inputs": {"shift": 2.0}},
        "2": {"class_type": "SpacetimeTextEncode", "inputs": {"text_encoder": ["1", 2], "text": "a red circle"}},
        "3": {"class_type": "SpacetimeCanvas", "inputs": {"vae": ["1", 1], "model": ["1", 0], "width": 64,
              "height": 64, "length": 5, "invalid_size": "snap", "allow_large": False}},
        "7": {"class_type": "SpacetimeStepCache", "inputs": {"model": ["1", 0], "speed": "custom", "threshold": 0.5,
              "warmup": 0.1, "cooldown": 0.1, "max_skips": 2, "cfg_until": 0.5, "reuse_text": True}},
        "4": {"class_type": "SpacetimeSampler", "inputs": {"model": ["7", 0], "positive": ["2", 0], "negative": ["2", 0],
              "latent": ["3", 0], "seed": 1, "steps": 1, "cfg": 1.0, "solver": "euler", "shift": 2.0, "denoise": 1.0}},
        "5": {"class_type": "SpacetimeVAEDecode", "inputs": {"samples": ["4", 0], "vae": ["1", 1], "tile": 0}},
        "6": {"class_type": "SaveImage", "inputs": {"images": ["5", 0], "filename_prefix": "fuzz/emb"}}}
    download = {**copy.deepcopy(main), "40": {"class_type": "SpacetimeModelDownload",
                                             "inputs": {"model": "wan2.1-vae"}}}
    download["9"]["inputs"]["caption"] = ["40", 0]          # a STRING consumer on the way to an output
    long = {**copy.deepcopy(loaders),
            "50": {"class_type": "SpacetimeLongVideo", "inputs": {
                "model": ["1", 0], "vae": ["2", 0], "text_encoder": ["3", 0], "storyboard": "0.5: a red ball",
                "negative": "", "fps": 8.0, "seconds": 1.0, "width": 32, "height": 32, "window": 5, "overlap": 1,
                "continuity": "pixels", "anchor": 0.5, "blend": False, "expand_prompts": "off", "seed": 1,
                "steps": 1, "cfg": 2.0, "solver": "euler", "shift": 2.0, "filename_prefix": "fuzz/long",
                "reanchor": True, "boundary": 0.875, "low_noise_cfg": 3.0}}}
    return [main, custom, embedded, download, long]


def bad_values(spec: list) -> list:
    """Values a careless or hostile client may send for an input declared as ``spec``."""
    kind, opts = spec[0], (spec[1] if len(spec) > 1 else {}) or {}
    common = [{"not": "a value"}, None]
    if kind == "INT":
        return common + ["abc", 1.5, True, opts.get("min", 0) - 1, opts.get("max", 10**6) + 1, 10**30,
                         float("nan")]
    if kind == "FLOAT":
        return common + ["abc", float("nan"), float("inf"), float("-inf"), opts.get("min", 0) - 1,
                         opts.get("max", 1e6) * 10]
    if kind == "BOOLEAN":
        return common + ["yes", 2]
    strings = ["x\x00y", "\ud800", "x" * 200_001, "../../../etc/passwd", "/etc/passwd", 5]
    if kind == "COMBO" or isinstance(kind, list):
        return common + strings + ["not-a-choice", ""]
    if kind == "STRING":
        return common + strings
    return []


def clear(node_type: str, name: str, status: int, body, history: dict | None) -> str | None:
    """None when the outcome names the node and the input; else what was wrong."""
    if status == 400 or (status == 200 and body.get("node_errors")):  # 200: the other outputs ran
        errors = body.get("node_errors") or {}
        text = json.dumps(errors) + json.dumps(body.get("error") or {})
        if node_type not in text and not any(e.get("class_type") == node_type for e in errors.values()):
            return f"400 without the node: {text[:300]}"
        # ComfyUI files a custom validator's message under every input of the node, so the input
        # must be named in the message itself; ComfyUI's own checks name it in extra_info
        named = [e for node in errors.values() for e in node.get("errors", [])
                 if (f"input '{name}'" in e.get("details", "") if e.get("type") == "custom_validation_failed"
                     else (e.get("extra_info") or {}).get("input_name") == name)]
        if not named:
            return f"400 without the input: {text[:300]}"
        if any(bare in text for bare in BARE):
            return f"400 carrying a bare exception: {text[:300]}"
        return None
    if status != 200:
        return f"HTTP {status}: {str(body)[:300]}"
    for kind, data in (history or {}).get("status", {}).get("messages", []):
        if kind == "execution_error":
            message = str(data.get("exception_message", "")).strip()
            if not message.startswith("Spacetime") or name not in message:
                return f"execution error not naming node and input: {data.get('exception_type')}: {message[:300]}"
    return None


def test_every_widget_input_refuses_bad_values_clearly(host, tiny):
    object_info = host.client.object_info()
    ours = sorted(n for n in object_info if n.startswith("Spacetime"))
    graphs = base_graphs(tiny)
    covered = {g[k]["class_type"] for g in graphs for k in g}
    assert set(ours) <= covered, f"nodes without a fuzz graph: {sorted(set(ours) - covered)}"
    cases, problems, executed, t0 = 0, [], 0, time.monotonic()
    for node_type in ours:
        graph = next(g for g in graphs if any(v["class_type"] == node_type for v in g.values()))
        node_id = next(k for k, v in graph.items() if v["class_type"] == node_type)
        spec = object_info[node_type]["input"]
        for section in ("required", "optional"):
            for name, declared in (spec.get(section) or {}).items():
                if not isinstance(graph[node_id]["inputs"].get(name), (str, int, float, bool)) \
                        and name in graph[node_id]["inputs"]:
                    continue  # a link in the base graph: its type is checked by ComfyUI
                values = bad_values(declared) + (["<absent>"] if section == "required" else [])
                for value in values:
                    g = copy.deepcopy(graph)
                    if value == "<absent>":
                        g[node_id]["inputs"].pop(name, None)
                    else:
                        g[node_id]["inputs"][name] = value
                    status, body = queue(host, g)
                    history = None
                    if status == 200:
                        executed += not body.get("node_errors")
                        history = wait(host, body["prompt_id"], timeout=120)
                    cases += 1
                    why = clear(node_type, name, status, body, history)
                    if why:
                        problems.append(f"{node_type}.{name} = {str(value)[:40]!r}: {why}")
    elapsed = time.monotonic() - t0
    assert not problems, "\n".join(problems[:40]) + f"\n({len(problems)} of {cases})"
    assert cases >= 300, cases
    graphs[0]["7"]["inputs"]["seed"] = 4242                     # the server still runs a valid job
    h = run(host, graphs[0])
    assert not [m for m in h["status"]["messages"] if m[0] == "execution_error"], h["status"]
    assert saved_files(h), h
    print(f"fuzz: {cases} cases, {executed} passed validation and ran, {elapsed:.1f}s")


def test_sizes_in_range_that_cannot_fit_are_refused_before_allocating(host, tiny):
    """The largest canvas inside the declared ranges would need tens of GB: refused with the
    inputs to lower (and the allow_large override) instead of allocated."""
    g = base_graphs(tiny)[2]
    g["3"]["inputs"].update(width=8192, height=8192, length=1025)
    h = run(host, g)
    message = next(d["exception_message"] for k, d in h["status"]["messages"] if k == "execution_error")
    assert message.startswith("SpacetimeCanvas: input 'width/height/length'") and "allow_large" in message, message
    assert "GiB" in message
