"""The prompt expander node inside a real ComfyUI server (fixture ``host``).

The node's text is checked in ``/history``: through its own UI text output and through
ComfyUI's native "Preview as Text" node (PreviewAny) fed by its STRING outputs.
"""
from __future__ import annotations

import os
import socket
import tempfile
import threading
import time
from http.server import ThreadingHTTPServer

import pytest

import spacetime_video as st
from test_prompt_expander_http import FakeOpenAI

pytestmark = pytest.mark.host

# The node caches LLM answers on disk; keep the host's cache out of the user's home. Test modules
# are imported before the session's host starts, so the server inherits this.
os.environ.setdefault("SPACETIME_PROMPT_CACHE", tempfile.mkdtemp(prefix="spacetime-prompts-"))
# A variable a workflow must not be able to use as an API key (no _API_KEY suffix).
PRIVATE_VALUE = "private-value-the-workflow-must-not-see-0417"
os.environ["SPACETIME_TEST_PRIVATE_VAR"] = PRIVATE_VALUE

BASE_INPUTS = {"task": "t2v", "model_family": "wan2.1", "language": "en", "seed": 3, "max_words": 100,
               "backend": "rules", "base_url": "", "model": "", "api_key_env": "", "on_error": "raise"}


def run(host, graph: dict, timeout: float = 60.0) -> dict:
    status, body = host.client.queue(graph)
    assert status == 200, body
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        entry = host.client.history(body["prompt_id"])
        if entry and entry.get("status", {}).get("completed") is not None:
            if entry["status"].get("status_str") == "error" or entry["status"].get("completed"):
                return entry
        time.sleep(0.2)
    raise AssertionError(f"the prompt did not finish in {timeout}s:\n{host.log_tail()}")


def graph(prompt: str, **inputs) -> dict:
    return {
        "1": {"class_type": "SpacetimePromptExpander", "inputs": {**BASE_INPUTS, "prompt": prompt, **inputs}},
        "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}},
        "3": {"class_type": "PreviewAny", "inputs": {"source": ["1", 1]}},
    }


@pytest.fixture(scope="module")
def llm_server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), FakeOpenAI)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    httpd.shutdown()
    httpd.server_close()


def test_node_is_registered(object_info):
    info = object_info["SpacetimePromptExpander"]
    required = info["input"]["required"]
    assert required["task"][1]["options"] == ["t2v", "i2v", "flf2v", "extend"]
    assert required["backend"][1]["options"] == ["rules", "openai-compatible", "local HF"]
    assert required["seed"][1]["control_after_generate"] is True
    assert set(required) >= {"prompt", "task", "model_family", "language", "seed", "max_words", "backend",
                             "base_url", "model", "api_key_env", "on_error"}
    assert "images" in info["input"]["optional"]
    assert info["output"] == ["STRING", "STRING"] and info["output_node"] is True


def test_rules_graph_outputs_in_history(host):
    expected = st.model.expand_prompt("a red fox", seed=3)
    entry = run(host, graph("a red fox"))
    outputs = entry["outputs"]
    assert outputs["1"]["text"] == [expected]          # the node's own UI text
    assert outputs["2"]["text"] == [expected]          # native PreviewAny fed by "expanded"
    assert outputs["3"]["text"] == ["a red fox"]       # ... and by "original"


def test_embedded_family_in_host(host):
    entry = run(host, graph("red ball left", model_family="embedded", seed=0))
    text = entry["outputs"]["2"]["text"][0]
    assert text == st.model.expand_prompt("red ball left", model_family="embedded", seed=0)
    assert text.startswith("a red circle moves to the left across a ")


def test_openai_backend_from_the_host(host, llm_server):
    entry = run(host, graph("a snowy owl", backend="openai-compatible", base_url=llm_server, model="echo", seed=11))
    text = entry["outputs"]["2"]["text"][0]
    assert text.startswith("seed 11 temperature 0.7:") and text.endswith("About a snowy owl.")
    assert any(r["body"]["model"] == "echo" and r["body"]["seed"] == 11 for r in FakeOpenAI.requests)


def test_unreachable_server_falls_back_or_fails_loudly(host):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    entry = run(host, graph("a quiet lake", backend="openai-compatible", base_url=url, model="m",
                            on_error="fallback", seed=5))
    assert entry["outputs"]["2"]["text"] == [st.model.expand_prompt("a quiet lake", seed=5)]
    assert "using the offline rule-based expander" in host.log_text()
    entry = run(host, graph("a quiet lake", backend="openai-compatible", base_url=url, model="m",
                            on_error="raise", seed=6))
    assert entry["status"]["status_str"] == "error"
    errors = [m for m in entry["status"]["messages"] if m[0] == "execution_error"]
    message = errors[0][1]["exception_message"]
    assert message.startswith("SpacetimePromptExpander: input 'base_url'") and "could not connect" in message


def test_disallowed_key_variable_fails_the_node_even_with_fallback(host, llm_server):
    entry = run(host, graph("a snowy owl", backend="openai-compatible", base_url=llm_server, model="echo",
                            api_key_env="SPACETIME_TEST_PRIVATE_VAR", on_error="fallback", seed=23))
    assert entry["status"]["status_str"] == "error"
    errors = [m for m in entry["status"]["messages"] if m[0] == "execution_error"]
    message = errors[0][1]["exception_message"]
    assert message.startswith("SpacetimePromptExpander: input 'api_key_env'"), message
    assert "not an allowed API key variable" in message and PRIVATE_VALUE not in message


def test_interrupt_ends_a_hung_llm_call_quickly(host):
    """The expander waits on a server that accepted the connection and never answers; ComfyUI's
    /interrupt (the Cancel button) must bring the queue back to idle within a second."""
    hung = socket.socket()
    hung.bind(("127.0.0.1", 0))
    hung.listen(4)
    hung.settimeout(60)
    url = f"http://127.0.0.1:{hung.getsockname()[1]}/v1"
    try:
        status, body = host.client.queue(graph("a quiet lake", backend="openai-compatible", base_url=url, model="m",
                                               on_error="fallback", seed=29))
        assert status == 200, body
        conn, _ = hung.accept()  # the node is now waiting for an answer that never comes
        time.sleep(0.3)
        t0 = time.monotonic()
        host.client.interrupt()
        while time.monotonic() - t0 < 30:
            queue = host.client.get_json("/queue")
            if not queue["queue_running"] and not queue["queue_pending"]:
                break
            time.sleep(0.01)
        latency = time.monotonic() - t0
        conn.close()
    finally:
        hung.close()
    entry = host.client.history(body["prompt_id"])
    kinds = [m[0] for m in entry["status"]["messages"]]
    print(f"interrupt -> idle: {latency:.3f}s")
    assert latency <= 1.0, f"back to idle {latency:.3f}s after POST /interrupt (target <= 1 s)"
    assert "execution_interrupted" in kinds, kinds


def test_embedded_family_says_which_words_it_replaced(host):
    """A word outside the embedded model's world is named in the node's text, with what was used."""
    entry = run(host, graph("a green triangle moves up across a white background", model_family="embedded"))
    shown = entry["outputs"]["1"]["text"]
    assert shown[0] == "a green triangle moves up across a beige background"
    assert len(shown) == 2 and "'white'" in shown[1] and "used 'beige'" in shown[1]
    full = run(host, graph("red ball left on a navy background", model_family="embedded"))
    assert full["outputs"]["1"]["text"] == ["a red circle moves to the left across a navy background"]
