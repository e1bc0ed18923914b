"""Queue an API-format graph on a ComfyUI server, follow it to the end, collect its files.

Progress comes from the ``/ws`` websocket when it opens (``progress.py``), else from polling
``/history``. Ctrl-C stops the server's job (``POST /interrupt`` with the prompt id, and
removes it from the queue if it had not started) before the CLI exits with code 4.
"""
from __future__ import annotations

import logging
import time
import uuid
from pathlib import Path
from typing import Any

from . import progress as P
from .host import ComfyClient

log = logging.getLogger("spacetime.runner")

EXIT_OK, EXIT_HOST, EXIT_VALIDATION, EXIT_EXECUTION, EXIT_INTERRUPTED = 0, 1, 2, 3, 4


class RunFailed(Exception):
    """A run that ended without outputs; ``code`` is the CLI's exit code."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


def format_validation_error(body: Any) -> str:
    """Turn ``/prompt``'s refusal (or its ``node_errors``) into lines naming node, input, reason."""
    if not isinstance(body, dict):
        return f"the server refused the workflow: {body}"
    lines = []
    err = body.get("error") or {}
    if isinstance(err, dict) and err.get("message"):
        lines.append(f"{err.get('message')}: {err.get('details', '')}".rstrip(": "))
    for node_id, info in (body.get("node_errors") or {}).items():
        cls = info.get("class_type", "?")
        for e in info.get("errors", []):
            name = (e.get("extra_info") or {}).get("input_name")
            where = f"node {node_id} ({cls})" + (f", input '{name}'" if name else "")
            lines.append(f"{where}: {e.get('message', '')}: {e.get('details', '')}".rstrip(": "))
    return "\n".join(lines) or str(body)


def execution_error(history: dict) -> str | None:
    for kind, data in history.get("status", {}).get("messages", []):
        if kind == "execution_error":
            return (f"node {data.get('node_id')} ({data.get('node_type')}) failed: "
                    f"{data.get('exception_type', 'Error')}: "
                    f"{str(data.get('exception_message', '')).strip()}")
        if kind == "execution_interrupted":
            return "interrupted"
    return None


def finished(history: dict | None) -> bool:
    status = (history or {}).get("status") or {}
    return bool(status.get("completed")) or status.get("status_str") == "error"


def wait_polling(client: ComfyClient, prompt_id: str, timeout: float, poll: float = 0.25) -> dict:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        h = client.history(prompt_id)
        if finished(h):
            return h
        time.sleep(poll)
    raise RunFailed(EXIT_HOST, f"prompt {prompt_id} did not finish within {timeout:.0f}s")


def wait_websocket(client: ComfyClient, ws: P.WebSocket, prompt_id: str, graph: dict,
                   timeout: float) -> dict:
    """Draw progress from websocket events; the history stays the authority on the result."""
    bar = P.ProgressBar(graph)
    t0 = time.monotonic()
    try:
        for event in P.events(ws, prompt_id, poll=1.0):
            if event is not None:
                bar.update(event)
                kind = event.get("type")
                done = kind in ("execution_success", "execution_error", "execution_interrupted") \
                    or (kind == "executing" and (event.get("data") or {}).get("node") is None)
                if not done:
                    continue
            h = client.history(prompt_id)  # on an end event, and once a second of silence
            if finished(h):
                return h
            if time.monotonic() - t0 > timeout:
                raise RunFailed(EXIT_HOST, f"prompt {prompt_id} did not finish within {timeout:.0f}s")
    finally:
        bar.finish()
    raise RunFailed(EXIT_HOST, "the websocket ended unexpectedly")  # events() never ends


def collect_outputs(client: ComfyClient, history: dict, out: Path) -> list[Path]:
    """Download every file the graph's output nodes report into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for node_out in history.get("outputs", {}).values():
        for items in node_out.values():
            if not isinstance(items, list):
                continue
            for item in items:
                if isinstance(item, dict) and "filename" in item and item.get("type") == "output":
                    data = client.download(item["filename"], item.get("subfolder", ""), "output")
                    dest = out / Path(item["filename"]).name
                    dest.write_bytes(data)
                    written.append(dest)
    return written


def stop_job(client: ComfyClient, prompt_id: str) -> None:
    """Interrupt the job if it runs, and drop it from the queue if it waits."""
    for path, body in (("/interrupt", {"prompt_id": prompt_id}), ("/queue", {"delete": [prompt_id]})):
        try:
            client.post_json(path, body)
        except Exception as e:  # noqa: BLE001 - best effort while exiting
            log.warning("could not reach the server to stop prompt %s: %s", prompt_id, e)


def run_graph(client: ComfyClient, graph: dict, out: Path, timeout: float = 3600,
              progress: bool = True) -> list[Path]:
    client_id = uuid.uuid4().hex
    ws = None
    if progress:
        try:
            ws = P.connect(client.url, client_id)
        except OSError as e:
            log.info("no websocket progress (%s); polling instead", e)
    prompt_id = None
    try:
        status, body = client.queue(graph, client_id=client_id)
        if status != 200:
            raise RunFailed(EXIT_VALIDATION, format_validation_error(body))
        prompt_id = body["prompt_id"]
        if body.get("node_errors"):
            # The server runs the outputs that validated and silently skips the others; a
            # headless run must not pretend that is success.
            stop_job(client, prompt_id)
            raise RunFailed(EXIT_VALIDATION, format_validation_error(body))
        log.info("queued prompt %s", prompt_id)
        if ws is not None:
            try:
                history = wait_websocket(client, ws, prompt_id, graph, timeout)
            except P.WebSocketError as e:
                log.info("websocket lost (%s); polling", e)
                history = wait_polling(client, prompt_id, timeout)
        else:
            history = wait_polling(client, prompt_id, timeout)
    except KeyboardInterrupt:
        if prompt_id:
            stop_job(client, prompt_id)
        raise RunFailed(EXIT_INTERRUPTED, "interrupted: the server's job was stopped")
    finally:
        if ws is not None:
            ws.close()
    err = execution_error(history)
    if err == "interrupted":
        raise RunFailed(EXIT_INTERRUPTED, "the run was interrupted on the server")
    if err or history.get("status", {}).get("status_str") == "error":
        raise RunFailed(EXIT_EXECUTION, err or "the run failed (no error message from the server)")
    return collect_outputs(client, history, out)
