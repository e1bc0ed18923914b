"""Helpers for the node tests: queue a graph on the test host and wait for its outcome."""
from __future__ import annotations

import time
import uuid


def queue(host, prompt: dict, extra_data: dict | None = None) -> tuple[int, dict]:
    body = {"prompt": prompt, "client_id": "spacetime-tests-" + uuid.uuid4().hex[:6]}
    if extra_data:
        body["extra_data"] = extra_data
    return host.client.post_json("/prompt", body)


def wait(host, prompt_id: str, timeout: float = 120.0) -> dict:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        h = host.client.history(prompt_id)
        if h and h.get("status", {}).get("completed") is not None and (
                h["status"].get("completed") or h["status"].get("status_str") == "error"):
            return h
        time.sleep(0.2)
    raise TimeoutError(f"prompt {prompt_id} did not finish in {timeout}s:\n{host.log_tail()}")


def run(host, prompt: dict, extra_data: dict | None = None, timeout: float = 120.0) -> dict:
    """Queue and wait; assert the server accepted the graph; return its history entry."""
    status, body = queue(host, prompt, extra_data)
    assert status == 200, body
    return wait(host, body["prompt_id"], timeout)


def error_message(history: dict) -> str | None:
    for kind, data in history.get("status", {}).get("messages", []):
        if kind == "execution_error":
            return f"{data.get('node_type')}: {data.get('exception_message')}"
    return None


def saved_files(history: dict) -> list[dict]:
    files = []
    for out in history.get("outputs", {}).values():
        for key in ("images", "gifs", "videos", "animated"):
            for item in out.get(key, []) or []:
                if isinstance(item, dict) and "filename" in item:
                    files.append(item)
    return files
