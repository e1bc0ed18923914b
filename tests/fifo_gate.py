"""A zero-CPU way to hold the test server's worker busy: a LoadImage whose file is a named pipe.

The server's worker blocks in ``open()`` (first for LoadImage's change hash, then to load it)
until a writer appears, so prompts queued meanwhile stay pending (they can be validated and
deleted without running) and a running job can be interrupted deterministically.
"""
from __future__ import annotations

import io
import os
import time
import uuid
from pathlib import Path


def _png() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (255, 128, 0)).save(buf, "PNG")
    return buf.getvalue()


class FifoGate:
    def __init__(self, input_dir: Path):
        self.name = f"gate_{uuid.uuid4().hex[:8]}.png"
        self.path = Path(input_dir) / self.name
        os.mkfifo(self.path)

    def graph(self) -> dict:
        return {"g1": {"class_type": "LoadImage", "inputs": {"image": self.name}},
                "g2": {"class_type": "PreviewImage", "inputs": {"images": ["g1", 0]}}}

    def wait_running(self, client, prompt_id: str, timeout: float = 30) -> None:
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            running = client.get_json("/queue")["queue_running"]
            if any(item[1] == prompt_id for item in running):
                return
            time.sleep(0.05)
        raise TimeoutError(f"prompt {prompt_id} never started")

    def release(self, client, prompt_id: str, timeout: float = 30) -> dict:
        """Feed the pipe until the gated prompt has finished; returns its history."""
        png = _png()
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK)
            except OSError:  # no reader right now
                fd = None
            if fd is not None:
                try:
                    os.write(fd, png)
                finally:
                    os.close(fd)
            h = client.history(prompt_id)
            if h and h.get("status", {}).get("completed") is not None and (
                    h["status"]["completed"] or h["status"].get("status_str") == "error"):
                self.path.unlink(missing_ok=True)
                return h
            time.sleep(0.05)
        raise TimeoutError(f"gated prompt {prompt_id} did not finish")
