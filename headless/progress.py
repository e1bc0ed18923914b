"""Live progress of a ComfyUI job from its ``/ws`` websocket, drawn as a bar on stderr.

The websocket client is the minimum of RFC 6455 the server needs (standard library only: the
pack's runtime has no websocket package): the HTTP upgrade with a ``Sec-WebSocket-Key``, masked
client frames, unmasked server frames of any length, fragments, ping/pong and close. ComfyUI
sends JSON text messages (``executing``, ``progress``, ``execution_*``) and binary preview
images, which are skipped. If the socket cannot be opened the caller falls back to polling
``/history``.
"""
from __future__ import annotations

import base64
import json
import logging
import os
import select
import socket
import struct
import sys
import time
import urllib.parse
from typing import Any, Iterator, TextIO

log = logging.getLogger("spacetime.progress")

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


class WebSocketError(OSError):
    """The websocket could not be opened or broke."""


class WebSocket:
    """A blocking websocket client connection (text messages in, pings answered)."""

    def __init__(self, url: str, timeout: float = 10.0):
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("ws", "http"):
            raise WebSocketError(f"only plain ws:// (http://) servers are supported, not {url}")
        host, port = parts.hostname or "127.0.0.1", parts.port or 80
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        try:
            self.sock = socket.create_connection((host, port), timeout=timeout)
        except OSError as e:
            raise WebSocketError(f"cannot connect to {host}:{port}: {e}") from e
        key = base64.b64encode(os.urandom(16)).decode()
        request = (f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                   f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                   "Sec-WebSocket-Version: 13\r\n\r\n")
        self.sock.sendall(request.encode())
        self._buf = b""
        head = self._read_until(b"\r\n\r\n")
        status = head.split(b"\r\n", 1)[0]
        if b" 101 " not in status + b" ":
            raise WebSocketError(f"websocket upgrade refused: {status.decode(errors='replace')}")

    def _read_until(self, marker: bytes) -> bytes:
        while marker not in self._buf:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise WebSocketError("connection closed during the websocket handshake")
            self._buf += chunk
        head, self._buf = self._buf.split(marker, 1)
        return head

    def _read_exact(self, n: int) -> bytes:
        while len(self._buf) < n:
            chunk = self.sock.recv(max(65536, n - len(self._buf)))
            if not chunk:
                raise WebSocketError("the server closed the websocket")
            self._buf += chunk
        data, self._buf = self._buf[:n], self._buf[n:]
        return data

    def _send(self, opcode: int, payload: bytes = b"") -> None:
        mask = os.urandom(4)
        n = len(payload)
        if n < 126:
            header = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
        elif n < 1 << 16:
            header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
        else:
            header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(header + mask + masked)

    def _frame(self) -> tuple[bool, int, bytes]:
        b0, b1 = self._read_exact(2)
        n = b1 & 0x7F
        if n == 126:
            n = struct.unpack("!H", self._read_exact(2))[0]
        elif n == 127:
            n = struct.unpack("!Q", self._read_exact(8))[0]
        mask = self._read_exact(4) if b1 & 0x80 else None
        data = self._read_exact(n)
        if mask:
            data = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
        return bool(b0 & 0x80), b0 & 0x0F, data

    def recv(self, timeout: float | None = None) -> str | bytes | None:
        """The next whole message (str for text, bytes for binary); None if nothing arrives
        within ``timeout`` seconds. A message that has started is always read to its end."""
        if not self._buf:
            ready, _, _ = select.select([self.sock], [], [], timeout)
            if not ready:
                return None
        self.sock.settimeout(60.0)
        message, kind = b"", None
        try:
            while True:
                fin, opcode, data = self._frame()
                if opcode == OP_PING:
                    self._send(OP_PONG, data)
                    continue
                if opcode == OP_PONG:
                    continue
                if opcode == OP_CLOSE:
                    raise WebSocketError("the server closed the websocket")
                if opcode != OP_CONT:
                    kind = opcode
                message += data
                if fin:
                    return message.decode() if kind == OP_TEXT else message
        except socket.timeout as e:
            raise WebSocketError("the websocket stalled inside a message") from e

    def close(self) -> None:
        try:
            self._send(OP_CLOSE, struct.pack("!H", 1000))
        except OSError:
            pass
        self.sock.close()


def connect(server_url: str, client_id: str, timeout: float = 5.0) -> WebSocket:
    """Open ComfyUI's ``/ws?clientId=...`` for ``server_url`` (http://host:port)."""
    base = server_url.rstrip("/").replace("https://", "wss://").replace("http://", "ws://")
    return WebSocket(f"{base}/ws?clientId={urllib.parse.quote(client_id)}", timeout)


def events(ws: WebSocket, prompt_id: str, poll: float = 1.0) -> Iterator[dict | None]:
    """JSON events of one prompt; yields None every ``poll`` seconds of silence."""
    while True:
        msg = ws.recv(timeout=poll)
        if msg is None:
            yield None
            continue
        if isinstance(msg, bytes):
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
            self.node = None if data.get("node") is None else str(data["node"])
            self.value, self.max = 0, 0
            if self.node is not None and not self.tty:
                self.stream.write(f"[{len(self.done) + 1}/{len(self.graph)}] {self.label(self.node)}\n")
        elif kind == "progress":
            self.node = str(data.get("node", self.node))
            self.value, self.max = int(data.get("value", 0)), int(data.get("max", 0))
        self.draw()

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
        line = (f"\r[{'#' * fill}{'-' * (self.width - fill)}] nodes {len(self.done)}/"
                f"{len(self.graph)}{steps} {self.label(self.node)}")
        self.stream.write(line[:160].ljust(100))
        self.stream.flush()

    def finish(self) -> None:
        if self.tty:
            self.draw(force=True)
            self.stream.write("\n")
            self.stream.flush()
