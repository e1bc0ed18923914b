"""Start and stop a headless ComfyUI server on loopback, and talk to its HTTP API.

Used by the test fixture and ``spacetime-video run`` (``make demo``). Standard library only,
so the CLI works in any Python that has the pack installed.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

log = logging.getLogger("spacetime.host")

PACK_ROOT = Path(__file__).resolve().parents[1]
LOCAL_HOST_DIR = PACK_ROOT / ".host"


class HostError(RuntimeError):
    """The ComfyUI host could not be found, started or reached."""


def find_comfyui(explicit: str | os.PathLike | None = None) -> Path:
    """The ComfyUI folder to run: ``explicit``, ``$SPACETIME_COMFYUI``, the ComfyUI this pack is
    installed in (``ComfyUI/custom_nodes/<pack>``), or the project's own ``.host/ComfyUI``."""
    candidates = [explicit, os.environ.get("SPACETIME_COMFYUI"),
                  PACK_ROOT.parent.parent, LOCAL_HOST_DIR / "ComfyUI"]
    for c in candidates:
        if c and (Path(c) / "main.py").is_file() and (Path(c) / "comfy").is_dir():
            return Path(c).resolve()
    raise HostError("no ComfyUI found: run `make setup` (installs a local one into .host/), "
                    "set SPACETIME_COMFYUI=/path/to/ComfyUI, or pass --server URL")


def prepare_base_dir(base: str | os.PathLike, pack_root: Path = PACK_ROOT,
                     link_name: str = "spacetime") -> Path:
    """A ComfyUI ``--base-directory`` whose ``custom_nodes/<link_name>`` links to this pack (an
    absolute path: the server runs in its own folder)."""
    base = Path(base).resolve()
    for sub in ("custom_nodes", "models", "input", "output", "user", "temp"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    link = base / "custom_nodes" / link_name
    if link.is_symlink() and link.resolve() != pack_root.resolve():
        link.unlink()
    if not link.exists():
        link.symlink_to(pack_root, target_is_directory=True)
    return base


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ComfyClient:
    """The few HTTP calls of ComfyUI's API that the pack uses."""

    def __init__(self, url: str, timeout: float = 30.0):
        self.url = url.rstrip("/")
        self.timeout = timeout

    def _request(self, method: str, path: str, body: Any = None) -> tuple[int, bytes]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()
        except (urllib.error.URLError, OSError) as e:
            raise HostError(f"ComfyUI at {self.url} is not reachable: {e}") from e

    def get_json(self, path: str) -> Any:
        status, raw = self._request("GET", path)
        if status != 200:
            raise HostError(f"GET {path} answered {status}: {raw[:500]!r}")
        return json.loads(raw)

    def post_json(self, path: str, body: Any) -> tuple[int, Any]:
        status, raw = self._request("POST", path, body)
        try:
            return status, json.loads(raw) if raw else None
        except json.JSONDecodeError:
            return status, raw.decode(errors="replace")

    def alive(self) -> bool:
        try:
            return self._request("GET", "/system_stats")[0] == 200
        except HostError:
            return False

    def object_info(self) -> dict:
        return self.get_json("/object_info")

    def queue(self, prompt: dict, client_id: str = "spacetime") -> tuple[int, Any]:
        return self.post_json("/prompt", {"prompt": prompt, "client_id": client_id})

    def history(self, prompt_id: str) -> dict | None:
        return self.get_json(f"/history/{urllib.parse.quote(prompt_id)}").get(prompt_id)

    def interrupt(self) -> None:
        self.post_json("/interrupt", {})

    def download(self, filename: str, subfolder: str = "", type: str = "output") -> bytes:
        q = urllib.parse.urlencode({"filename": filename, "subfolder": subfolder, "type": type})
        status, raw = self._request("GET", f"/view?{q}")
        if status != 200:
            raise HostError(f"could not download {subfolder}/{filename}: HTTP {status}")
        return raw


class ComfyHost:
    """A ComfyUI server process on 127.0.0.1, started with ``--cpu`` unless told otherwise.

    Use as a context manager; the process (and its children) are always stopped on exit.
    ``env`` adds to (or overrides) the server's environment, which is this process's with
    ``HF_HUB_OFFLINE=1``. ``web_ui``: serve the installed ``comfyui-frontend-package`` (for tests in a
    browser) instead of an empty front end.
    """

    def __init__(self, base_dir: str | os.PathLike, comfy_dir: str | os.PathLike | None = None,
                 port: int | None = None, python: str = sys.executable, cpu: bool = True,
                 extra_args: tuple[str, ...] = (), pack_link: str = "spacetime",
                 env: dict[str, str] | None = None, web_ui: bool = False):
        self.comfy_dir = find_comfyui(comfy_dir)
        self.base_dir = prepare_base_dir(base_dir, link_name=pack_link)
        self.pack_link = pack_link
        self.port = port or free_port()
        self.python = python
        self.cpu = cpu
        self.extra_args = tuple(extra_args)
        self.env = dict(env or {})
        self.web_ui = web_ui
        self.proc: subprocess.Popen | None = None
        self.log_path = self.base_dir / "comfyui.log"
        self.started_in: float | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def client(self) -> ComfyClient:
        return ComfyClient(self.url)

    def start(self, timeout: float = 180.0) -> "ComfyHost":
        cmd = [self.python, "main.py", "--listen", "127.0.0.1", "--port", str(self.port),
               "--disable-auto-launch", "--base-directory", str(self.base_dir), *self.extra_args]
        if not self.web_ui:   # an empty front end: the HTTP API needs no web UI
            frontend = self.base_dir / "frontend"
            frontend.mkdir(exist_ok=True)
            cmd += ["--front-end-root", str(frontend)]
        if self.cpu:
            cmd.append("--cpu")
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", **self.env}
        t0 = time.monotonic()
        self._log_file = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, cwd=self.comfy_dir, stdout=self._log_file,
                                     stderr=subprocess.STDOUT, env=env, start_new_session=True)
        log.info("starting ComfyUI on %s (log: %s)", self.url, self.log_path)
        try:
            self._wait_ready(t0, timeout)
        except BaseException:
            self.stop()  # never leave a half-started server (or its log handle) behind
            raise
        return self

    def _wait_ready(self, t0: float, timeout: float) -> None:
        client = self.client
        while time.monotonic() - t0 < timeout:
            if self.proc.poll() is not None:
                raise HostError(f"ComfyUI exited with code {self.proc.returncode} while starting:\n"
                                + self.log_tail())
            if client.alive():
                self.started_in = time.monotonic() - t0
                log.info("ComfyUI ready in %.1fs", self.started_in)
                return
            time.sleep(0.25)
        raise HostError(f"ComfyUI did not answer within {timeout:.0f}s:\n" + self.log_tail())

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def pack_import_failed(self) -> bool:
        """Whether ComfyUI reported ``(IMPORT FAILED)`` for this pack's custom_nodes folder."""
        link = str(self.base_dir / "custom_nodes" / self.pack_link)
        return any("IMPORT FAILED" in line and line.rstrip().endswith(link)
                   for line in self.log_text().splitlines())

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def stop(self, timeout: float = 15.0) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait()
        self._log_file.close()
        self.proc = None

    def __enter__(self) -> "ComfyHost":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
