"""Live progress of a ComfyUI job from its ``/ws`` websocket, drawn as a bar on stderr.

The websocket is ``websocket-client``'s (handshake, masking, fragments, ping/pong, close).
ComfyUI sends JSON text messages (``executing``, ``progress``, ``execution_*``) and binary ones:
preview images, which are skipped, and a node's progress text (the line a node such as Long
Video shows under itself: "window 3 of 30: step 12 of 20"), passed on as a ``progress_text``
event. If the socket cannot be opened the caller falls back to polling ``/history``.
"""
from __future__ import annotations

import json
import logging
import select
import struct
import sys
import time
import urllib.parse
from typing import Any, Iterator, TextIO

import websocket

log = logging.getLogger("spacetime.progress")

WebSocket = websocket.WebSocket


PROGRESS_TEXT = 3           # ComfyUI's protocol.BinaryEventTypes.TEXT
TEXT_EVERY = 10.0           # seconds between progress-text lines when stderr is not a terminal


class WebSocketError(OSError):
    """The websocket could not be opened or broke."""


def connect(server_url: str, client_id: str, timeout: float = 5.0) -> WebSocket:
    """Open ComfyUI's ``/ws?clientId=...`` for ``server_url`` (http://host:port)."""
    base = server_url.rstrip("/").replace("https://", "wss://").replace("http://", "ws://")
    url = f"{base}/ws?clientId={urllib.parse.quote(client_id)}"
    try:
        return websocket.create_connection(url, timeout=timeout)
    except (OSError, websocket.WebSocketException) as e:
        raise WebSocketError(f"cannot open the websocket {url}: {e}") from e


def receive(ws: WebSocket, timeout: float) -> str | bytes | None:
    """The next whole message (str for text, bytes for binary); None if nothing arrives within
    ``timeout`` seconds. A message that has started is always read to its end."""
    if not select.select([ws.sock], [], [], timeout)[0]:
        return None
    ws.settimeout(60.0)
    try:
        return ws.recv()
    except (OSError, websocket.WebSocketException) as e:
        raise WebSocketError(f"the websocket broke: {e}") from e


def progress_text(msg: bytes) -> tuple[str, str] | None:
    """(node id, text) of a binary progress-text message; None for any other binary message."""
    if len(msg) < 8 or struct.unpack(">I", msg[:4])[0] != PROGRESS_TEXT:
        return None
    (n,) = struct.unpack(">I", msg[4:8])
    return msg[8:8 + n].decode("utf-8", "replace"), msg[8 + n:].decode("utf-8", "replace")


def events(ws: WebSocket, prompt_id: str, poll: float = 1.0) -> Iterator[dict | None]:
    """JSON events of one prompt; yields None every ``poll`` seconds of silence."""
    while True:
        msg = receive(ws, poll)
        if msg is None:
            yield None
            continue
        if isinstance(msg, bytes):
            text = progress_text(msg)
            if text is not None:
                yield {"type": "progress_text", "data": {"node": text[0], "text": text[1]}}
            continue  # a preview image
        try:
            event = json.loads(msg)
        except json.JSONDecodeError:
            continue
        data = event.get("data") or {}
        if data.get("prompt_id") not in (None, prompt_id):
            continue
        yield event


class ProgressBar:
    """One status line on a terminal (redrawn with CR), or a line per node when not a tty."""

    def __init__(self, graph: dict, stream: TextIO = sys.stderr, width: int = 28):
        self.graph = graph
        self.stream = stream
        self.width = width
        self.tty = hasattr(stream, "isatty") and stream.isatty()
        self.done: set[str] = set()
        self.node: str | None = None
        self.value, self.max = 0, 0
        self._last = 0.0
        self.text, self._text_printed, self._text_at = "", "", 0.0   # the node's progress text

    def label(self, node: str | None) -> str:
        if node is None:
            return ""
        info = self.graph.get(str(node)) or {}
        title = (info.get("_meta") or {}).get("title") or info.get("class_type") or "?"
        return f"{title} (node {node})"

    def update(self, event: dict[str, Any]) -> None:
        kind, data = event.get("type"), event.get("data") or {}
        if kind == "execution_cached":
            self.done.update(str(n) for n in data.get("nodes") or [])
        elif kind == "executing":
            if self.node is not None:
                self.done.add(self.node)
                self._print_text(force=True)
            self.node = None if data.get("node") is None else str(data["node"])
            self.value, self.max = 0, 0
            self.text = self._text_printed = ""
            if self.node is not None and not self.tty:
                self.stream.write(f"[{len(self.done) + 1}/{len(self.graph)}] {self.label(self.node)}\n")
        elif kind == "progress":
            self.node = str(data.get("node", self.node))
            self.value, self.max = int(data.get("value", 0)), int(data.get("max", 0))
        elif kind == "progress_text" and str(data.get("node")) == self.node:
            self.text = " ".join(str(data.get("text", "")).split())   # one line
            self._print_text()
        self.draw()

    def _print_text(self, force: bool = False) -> None:
        """Not a terminal: the node's progress text as a line, at most every TEXT_EVERY seconds,
        and its last one when the node ends."""
        if self.tty or not self.text or self.text == self._text_printed:
            return
        now = time.monotonic()
        if force or now - self._text_at >= TEXT_EVERY:
            self.stream.write(f"    {self.label(self.node)}: {self.text}\n")
            self._text_printed, self._text_at = self.text, now

    def draw(self, force: bool = False) -> None:
        if not self.tty:
            return
        now = time.monotonic()
        if not force and now - self._last < 0.1:
            return
        self._last = now
        frac = self.value / self.max if self.max else len(self.done) / max(len(self.graph), 1)
        fill = int(round(frac * self.width))
        steps = f" {self.value}/{self.max}" if self.max else ""
        text = f": {self.text}" if self.text else ""
        line = (f"\r[{'#' * fill}{'-' * (self.width - fill)}] nodes {len(self.done)}/"
                f"{len(self.graph)}{steps} {self.label(self.node)}{text}")
        self.stream.write(line[:160].ljust(100))
        self.stream.flush()

    def finish(self) -> None:
        self._print_text(force=True)
        if self.tty:
            self.draw(force=True)
            self.stream.write("\n")
            self.stream.flush()
