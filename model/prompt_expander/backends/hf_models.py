"""Where the local prompt-expander model lives, and fetching it (``hf_local`` loads and runs it).

The weights are fetched once with ``huggingface_hub.snapshot_download`` (safetensors, configs and
tokenizer files only; tqdm shows the progress) into a models folder chosen by the caller.
``huggingface_hub`` is imported lazily; a missing one raises ``BackendUnavailable``.

Every wait is bounded and interruptible: the download runs in a child process (``sys.executable``
running a few lines of ``huggingface_hub``) polled every ``POLL_S`` seconds and killed when
``should_stop()`` says so (``Interrupted``) or at ``SPACETIME_DOWNLOAD_TIMEOUT`` (``DownloadTimedOut``);
either way what was fetched stays and the next call resumes it. A repo whose weights exceed the
available RAM is not downloaded.

``model`` may come from a shared workflow, so ``models_dir`` is the only root models load from: a
folder name is looked up inside it (real paths: no ``..``, absolute paths or symlinks leading
out), and a repo id ``owner/name`` is downloaded into ``models_dir/name``, which remembers the
repo it came from (``REPO_MARKER``) so another owner's repo of the same name is not mistaken
for it.
"""
from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

from ..errors import BackendUnavailable, DownloadTimedOut, Interrupted

log = logging.getLogger("spacetime.prompt_expander")

# Short names as in the official extender, and the defaults (3B: fits beside a video model).
MODEL_ALIASES = {
    "Qwen2.5_3B": "Qwen/Qwen2.5-3B-Instruct",
    "Qwen2.5_7B": "Qwen/Qwen2.5-7B-Instruct",
    "Qwen2.5_14B": "Qwen/Qwen2.5-14B-Instruct",
    "QwenVL2.5_3B": "Qwen/Qwen2.5-VL-3B-Instruct",
    "QwenVL2.5_7B": "Qwen/Qwen2.5-VL-7B-Instruct",
}
DEFAULT_TEXT_MODEL = "Qwen/Qwen2.5-3B-Instruct"
DEFAULT_VISION_MODEL = "Qwen/Qwen2.5-VL-3B-Instruct"
# Only these files are fetched: never pickled weights (*.bin, *.pt, *.pth).
ALLOW_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja", "*.tiktoken"]
REPO_MARKER = ".spacetime_repo"  # in a downloaded folder: the repo id it was fetched from
_REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}")
POLL_S = 0.1  # how often a running download looks at should_stop and its deadline
DOWNLOAD_TIMEOUT_ENV = "SPACETIME_DOWNLOAD_TIMEOUT"  # seconds one download may take (as for catalog models)
DEFAULT_DOWNLOAD_TIMEOUT_S = 6 * 3600.0
MEMINFO = "/proc/meminfo"
GiB = 2**30


def default_models_dir() -> Path:
    """``$SPACETIME_LLM_DIR``, else ``~/.cache/spacetime_video/LLM`` (the node passes ComfyUI's models/LLM)."""
    env = os.environ.get("SPACETIME_LLM_DIR")
    return Path(env) if env else Path.home() / ".cache" / "spacetime_video" / "LLM"


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def resolve(model: str | None, models_dir: str | os.PathLike | None, vision: bool) -> tuple[str | None, Path]:
    """``(hub repo id or None, local folder)`` for a model name, alias, repo id or folder.

    A folder is a name inside ``models_dir`` (or a path that really lies inside it); a repo id
    downloads into ``models_dir/<name>``. Anything leading out of ``models_dir`` is refused."""
    root = (Path(models_dir) if models_dir else default_models_dir()).expanduser().resolve()
    given = (model or "").strip()
    name = MODEL_ALIASES.get(given, given) or (DEFAULT_VISION_MODEL if vision else DEFAULT_TEXT_MODEL)
    if "\x00" in name:
        raise ValueError(f"model={model!r} contains a NUL character")
    path = Path(name).expanduser()
    if ".." in path.parts or ".." in name.replace("\\", "/").split("/"):
        raise ValueError(f"model={model!r} may not contain '..': give a folder name inside the models folder "
                         f"{root} or a Hugging Face repo id like {DEFAULT_TEXT_MODEL!r}")
    candidate = path if path.is_absolute() else root / path
    if candidate.is_dir() or path.is_absolute():
        real = candidate.resolve()
        if real == root:
            raise ValueError(f"model={model!r} names the models folder {root} itself; give the name of one model's "
                             "folder inside it, or a Hugging Face repo id")
        if not _inside(real, root):
            raise ValueError(f"model={model!r} is outside the models folder {root} (after following links: {real}); "
                             "local models load only from inside it: move or copy the model folder there, or "
                             "(library use) pass models_dir= its parent")
        if not real.is_dir():
            raise ValueError(f"model={model!r}: {real} is not a model folder")
        return None, real
    if not _REPO_ID.fullmatch(name):
        raise ValueError(f"model={model!r} is neither a model folder inside {root} nor a Hugging Face repo id "
                         f"like {DEFAULT_TEXT_MODEL!r} (or one of {', '.join(MODEL_ALIASES)})")
    folder = root / name.split("/")[1]
    if folder.is_symlink() and not _inside(folder.resolve(), root):
        raise ValueError(f"{folder} links outside the models folder {root}; remove the link or use the rules/"
                         "openai backend")
    return name, folder


def _complete(folder: Path) -> bool:
    return (folder / "config.json").is_file() and any(folder.glob("*.safetensors"))


def _downloaded_from(folder: Path) -> str | None:
    try:
        return (folder / REPO_MARKER).read_text(encoding="utf-8").strip() or None
    except OSError:
        return None


def download_timeout() -> float:
    """Seconds one model download may take: ``SPACETIME_DOWNLOAD_TIMEOUT`` (default 6 hours; 0 or
    less: no limit, ``math.inf``)."""
    raw = os.environ.get(DOWNLOAD_TIMEOUT_ENV, "").strip()
    try:
        value = float(raw) if raw else DEFAULT_DOWNLOAD_TIMEOUT_S
    except ValueError:
        raise ValueError(f"{DOWNLOAD_TIMEOUT_ENV}={raw!r} is not a number of seconds (0: no limit)") from None
    return value if math.isfinite(value) and value > 0 else math.inf


def mem_available() -> int | None:
    """Bytes of RAM available without swapping (``MemAvailable`` of ``/proc/meminfo``), None if unknown."""
    try:
        with open(MEMINFO, encoding="ascii", errors="replace") as f:
            for line in f:
                name, _, value = line.partition(":")
                if name.strip() == "MemAvailable":
                    return int(value.split()[0]) * 1024  # kB
    except (OSError, ValueError, IndexError):
        pass
    return None


# The child process: only huggingface_hub is imported there (not this package, whose import name
# depends on how ComfyUI loaded it). It first refuses a repo whose safetensors outweigh the RAM
# the parent saw available (when the hub lists sizes); the outcome goes to a JSON file, stdout
# and stderr (the progress bars) are the parent's.
_CHILD = """
import json, sys
repo, local_dir, patterns, limit, result = sys.argv[1:6]
try:
    import huggingface_hub as hub
    out = None
    if int(limit):
        try:
            files = hub.HfApi().model_info(repo, files_metadata=True).siblings or []
        except Exception:
            files = []  # offline, gated, unknown repo: snapshot_download below says why
        size = sum(f.size or 0 for f in files if f.rfilename.endswith(".safetensors"))
        if size > int(limit):
            out = {"too_big": size}
    if out is None:
        out = {"path": hub.snapshot_download(repo_id=repo, local_dir=local_dir, allow_patterns=json.loads(patterns))}
except BaseException as e:
    out = {"error": type(e).__name__, "message": str(e)}
with open(result, "w") as f:
    json.dump(out, f)
"""


def _download_command(repo_id: str, folder: Path, result: Path, max_bytes: int | None) -> list[str]:
    """The command that downloads ``repo_id`` (``ALLOW_PATTERNS`` only) into ``folder`` and writes the
    outcome to ``result``: ``{"path"}``, ``{"too_big": bytes}`` or ``{"error", "message"}``."""
    safe_path = ["-P"] if sys.version_info >= (3, 11) else []  # no current folder on sys.path
    return [sys.executable, *safe_path, "-c", _CHILD, repo_id, str(folder), json.dumps(ALLOW_PATTERNS),
            str(max_bytes or 0), str(result)]


def _run_download(repo_id: str, folder: Path, max_bytes: int | None, should_stop: Callable[[], bool] | None,
                  timeout: float) -> dict:
    """Run the download child until it ends, ``should_stop()`` says stop or ``timeout`` seconds pass
    (then it is killed: ``Interrupted`` / ``DownloadTimedOut``); its outcome."""
    fd, name = tempfile.mkstemp(prefix="spacetime-llm-download-", suffix=".json")
    os.close(fd)
    result = Path(name)
    started = time.monotonic()
    proc = subprocess.Popen(_download_command(repo_id, folder, result, max_bytes), stdin=subprocess.DEVNULL)
    try:
        while proc.poll() is None:
            if should_stop is not None and should_stop():
                log.info("download of %s stopped; what is in %s resumes next time", repo_id, folder)
                raise Interrupted(f"the prompt expander was interrupted while downloading {repo_id}; the partial "
                                  f"download in {folder} resumes next time")
            if time.monotonic() - started >= timeout:
                raise DownloadTimedOut(
                    f"the download of {repo_id} into {folder} did not finish within {timeout:g}s "
                    f"({DOWNLOAD_TIMEOUT_ENV}); what was fetched is kept and the download resumes when run again. "
                    f"Run again, raise {DOWNLOAD_TIMEOUT_ENV}, or fetch it where the network is faster: "
                    f"`huggingface-cli download {repo_id} --local-dir {folder}`")
            try:
                proc.wait(timeout=POLL_S)
            except subprocess.TimeoutExpired:
                pass
        try:
            return json.loads(result.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {"error": "ChildProcessError",
                    "message": f"the download process ended (exit code {proc.returncode}) without a result"}
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        result.unlink(missing_ok=True)


def ensure_downloaded(repo_id: str | None, folder: Path, should_stop: Callable[[], bool] | None = None,
                      timeout: float | None = None) -> Path:
    """The model folder, downloading ``repo_id`` into it first if it is not there yet.

    The download is a child process, ended on ``should_stop()`` (``Interrupted``) or after
    ``timeout`` seconds (None: ``download_timeout()``; ``math.inf``: no limit) with
    ``DownloadTimedOut``; a repo whose safetensors exceed the available RAM is refused first."""
    origin = _downloaded_from(folder) if repo_id else None
    if origin is not None and origin != repo_id and _complete(folder):
        raise BackendUnavailable(
            f"{folder} holds {origin}, not {repo_id}: both would download into the same folder. Use {origin!r}, "
            f"or fetch {repo_id} into another folder inside the models folder and give that folder's name")
    if _complete(folder):
        return folder
    if repo_id is None:
        raise BackendUnavailable(f"{folder} holds no model: it needs config.json and *.safetensors weights")
    if importlib.util.find_spec("huggingface_hub") is None:
        raise BackendUnavailable("the local model backend needs huggingface_hub: pip install huggingface_hub")
    timeout = download_timeout() if timeout is None else timeout
    available = mem_available()
    log.info("downloading %s into %s (safetensors only)", repo_id, folder)
    outcome = _run_download(repo_id, folder, available, should_stop, timeout)
    if "too_big" in outcome:
        raise BackendUnavailable(
            f"{repo_id} has {outcome['too_big'] / GiB:.1f} GiB of weights but only {(available or 0) / GiB:.1f} GiB "
            f"of RAM is available to load them, so it was not downloaded. Pick a smaller model (e.g. "
            f"{DEFAULT_TEXT_MODEL!r}), free memory, or use the 'rules' or 'openai' backend")
    if "error" in outcome:  # offline, unknown repo, gated repo, disk full: all end the same way for the user
        offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
        raise BackendUnavailable(
            f"could not download {repo_id} into {folder}: {outcome['error']}: {str(outcome.get('message'))[:200]}"
            + (" (HF_HUB_OFFLINE is set)" if offline else "")
            + f". Fetch it where there is internet: `huggingface-cli download {repo_id} --local-dir {folder}`"
            " (or copy the folder there), or use the 'rules' or 'openai' backend.")
    if not _complete(folder):
        raise BackendUnavailable(f"{repo_id} was downloaded into {folder} but has no safetensors weights; "
                                 "pick a model published in safetensors")
    try:
        (folder / REPO_MARKER).write_text(repo_id + "\n", encoding="utf-8")
    except OSError as e:
        log.warning("could not record the origin of %s (%s)", folder, e)
    return folder


def is_vision_model(folder: Path) -> bool:
    """Whether the checkpoint in ``folder`` takes images (its config has a vision tower)."""
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return "vision_config" in config
