"""The catalog of known model files (``catalog.json``: id -> Hugging Face repo and file, target
ComfyUI folder, size and sha256 where verified; safetensors only) and their downloads.

Downloads use ``huggingface_hub`` (imported lazily): a copy in the local hub cache is linked
without network; otherwise the file is fetched with progress and resume and moved into place.
Offline, the error names the repo, the file and the destination.

The network download runs in a child process (``sys.executable`` running a few lines that call
``hf_hub_download``), polled every ``POLL_S`` seconds: a caller's ``should_stop`` (a server's
cancel button) or ``deadline`` ends it by killing the child, within about ``POLL_S``. What was
fetched so far stays in the staging folder, and the next download resumes from there.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from .files import WeightsError, read_safetensors_header

log = logging.getLogger("spacetime.models")

CATALOG_PATH = Path(__file__).resolve().with_name("catalog.json")
DOWNLOAD_SUBDIR = ".spacetime-download"  # inside the target folder: same filesystem, atomic move
POLL_S = 0.1  # how often a running download looks at should_stop and the deadline


class ModelError(RuntimeError):
    """A catalog, manifest or download problem; the message says what to do."""


class DownloadStopped(ModelError):
    """``should_stop`` said stop: the download was ended; it resumes when run again."""


class DownloadTimedOut(ModelError):
    """The deadline passed before the download finished; it resumes when run again."""


@dataclass(frozen=True)
class ModelEntry:
    id: str
    repo: str
    path: str            # file inside the repo
    folder: str          # ComfyUI model folder
    filename: str        # name inside that folder (what loader nodes list)
    description: str = ""
    size: int | None = None
    sha256: str | None = None

    def destination(self, models_dir: str | os.PathLike) -> Path:
        return Path(models_dir) / self.folder / self.filename


def load_catalog(path: str | os.PathLike = CATALOG_PATH) -> dict[str, ModelEntry]:
    """Catalog id -> entry, checked for the fields every entry needs."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ModelError(f"cannot read the model catalog {path}: {e}") from e
    out = {}
    for mid, e in data.get("models", {}).items():
        missing = [k for k in ("repo", "path", "folder") if not e.get(k)]
        if missing or not str(e["path"]).endswith(".safetensors"):
            raise ModelError(f"catalog entry {mid!r} in {path} needs repo, path (a .safetensors "
                             f"file) and folder; missing or wrong: {missing or ['path']}")
        out[mid] = ModelEntry(mid, e["repo"], e["path"], e["folder"],
                              e.get("filename") or e["path"].rsplit("/", 1)[-1],
                              e.get("description", ""), e.get("size"), e.get("sha256"))
    return out


def lookup(ids: Iterable[str], catalog: dict[str, ModelEntry] | None = None) -> list[ModelEntry]:
    catalog = catalog if catalog is not None else load_catalog()
    unknown = [i for i in ids if i not in catalog]
    if unknown:
        raise ModelError(f"unknown model id(s) {', '.join(unknown)}; valid ids: "
                         f"{', '.join(sorted(catalog))} (see `spacetime-video models list`)")
    return [catalog[i] for i in ids]


def hub_cache_dir() -> Path:
    """The hub cache as the environment says now (``HF_HUB_CACHE``, ``HF_HOME``/hub, default)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "huggingface")
    return Path(home) / "hub"


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _install(entry: ModelEntry, src: Path, dest: Path, move: bool) -> None:
    """Put ``src`` at ``dest`` only once it is whole and verified: a file of the download folder
    is moved (``move``); a hub-cache file is hard-linked (no extra space) or copied next to
    ``dest`` first. A failure (a full disk, a bad file) leaves no partial or bad file at ``dest``."""
    src = Path(src).resolve()  # the hub's snapshot entry is a symlink to a blob
    tmp = src if move else dest.with_name(dest.name + ".spacetime-tmp")
    problem = None
    try:
        if not move:
            tmp.unlink(missing_ok=True)
            try:
                os.link(src, tmp)
            except OSError:
                shutil.copyfile(src, tmp)
        problem = file_problem(entry, tmp)
        if problem is None:
            os.replace(tmp, dest)
    except OSError as e:
        if not move:
            tmp.unlink(missing_ok=True)
        raise ModelError(f"cannot write {dest}: {e.strerror or e}. Nothing was put there; free some disk "
                         "space (or choose another models folder) and run again") from None
    if problem is not None:
        tmp.unlink(missing_ok=True)
        if move:  # a damaged download: removed, so the next run fetches it again
            raise ModelError(f"the download of {entry.repo}/{entry.path} is damaged ({problem}); it was "
                             f"removed and nothing was put at {dest}: run again to download it again")
        raise ModelError(f"the Hugging Face cache copy {src} of {entry.repo}/{entry.path} is damaged "
                         f"({problem}): delete it and run again")


def file_problem(entry: ModelEntry, path: Path) -> str | None:
    """Why ``path`` is not the catalog's file (None when it is): size and sha256 where the
    catalog has them, else whether its safetensors header reads."""
    if entry.size is not None and path.stat().st_size != entry.size:
        return f"it has {path.stat().st_size} bytes, the catalog says {entry.size} for {entry.repo}/{entry.path}"
    if entry.sha256:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 24), b""):
                h.update(chunk)
        if h.hexdigest() != entry.sha256.lower():
            return f"its sha256 is {h.hexdigest()}, the catalog says {entry.sha256}"
    try:
        read_safetensors_header(path)
    except WeightsError as e:
        return str(e)
    return None


def verify(entry: ModelEntry, path: Path) -> None:
    """``ModelError`` unless ``path`` is the catalog's file (see ``file_problem``)."""
    problem = file_problem(entry, path)
    if problem:
        raise ModelError(f"{path}: {problem}: delete it and download again")


# The child process: only huggingface_hub is imported there (not this package, whose import
# name depends on how ComfyUI loaded it); the outcome goes to a JSON file, stdout and stderr
# (the progress bars) are the parent's.
_CHILD = """
import json, sys
repo, filename, local_dir, result = sys.argv[1:5]
try:
    from huggingface_hub import hf_hub_download
    out = {"path": hf_hub_download(repo, filename, local_dir=local_dir)}
except BaseException as e:
    out = {"error": type(e).__name__, "message": str(e)}
with open(result, "w") as f:
    json.dump(out, f)
"""


def _download_command(repo: str, filename: str, local_dir: Path, result: Path) -> list[str]:
    """The command that downloads ``filename`` of ``repo`` into ``local_dir`` and writes the
    outcome to ``result`` (``{"path": ...}`` or ``{"error": ..., "message": ...}``)."""
    safe_path = ["-P"] if sys.version_info >= (3, 11) else []  # no current folder on sys.path
    return [sys.executable, *safe_path, "-c", _CHILD, repo, filename, str(local_dir), str(result)]


def _run_download(entry: ModelEntry, staging: Path, where: str,
                  should_stop: Callable[[], bool] | None, deadline: float | None) -> Path:
    """Download in a child process that is killed on ``should_stop()`` or at ``deadline``."""
    staging.mkdir(parents=True, exist_ok=True)
    result = staging / f".result-{secrets.token_hex(6)}.json"
    started = time.monotonic()
    proc = subprocess.Popen(_download_command(entry.repo, entry.path, staging, result),
                            stdin=subprocess.DEVNULL)
    try:
        while proc.poll() is None:
            if should_stop is not None and should_stop():
                log.info("%s: download stopped; the partial file in %s resumes next time", entry.id, staging)
                raise DownloadStopped(f"stopped the download of {where}; run again to resume it")
            if deadline is not None and time.monotonic() >= deadline:
                raise DownloadTimedOut(f"cannot download {where}: not finished by the deadline "
                                       f"({time.monotonic() - started:.0f} s after it started). The "
                                       "partial download is kept: run again to resume it")
            try:
                proc.wait(timeout=POLL_S)
            except subprocess.TimeoutExpired:
                pass
        try:
            outcome = json.loads(result.read_text())
        except (OSError, ValueError):
            raise ModelError(f"cannot download {where}: the download process ended (exit code "
                             f"{proc.returncode}) without a result. Run again: partial downloads "
                             "resume") from None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        result.unlink(missing_ok=True)
    if "error" in outcome:
        raise ModelError(f"cannot download {where}: {outcome['error']}: {outcome['message']}. Check the "
                         "network (or run again: partial downloads resume)")
    return Path(outcome["path"])


def download(entry: ModelEntry, models_dir: str | os.PathLike, force: bool = False, *,
             should_stop: Callable[[], bool] | None = None, deadline: float | None = None) -> Path:
    """Make ``models_dir/<folder>/<filename>`` exist; returns its path."""
    return download_to(entry, entry.destination(models_dir), force, should_stop=should_stop, deadline=deadline)


def download_to(entry: ModelEntry, dest: Path, force: bool = False, *,
                should_stop: Callable[[], bool] | None = None, deadline: float | None = None) -> Path:
    """Make ``dest`` hold the catalog file (from the hub cache, else the network).

    ``should_stop()`` is asked every ``POLL_S`` seconds while the network download runs; when
    it says True the download is ended and ``DownloadStopped`` raised. ``deadline`` (a
    ``time.monotonic()`` value) ends it likewise with ``DownloadTimedOut``. Either way the
    partial download is kept and the next call resumes it."""
    dest = Path(dest)
    if dest.is_file() and not force:
        log.info("%s: already present at %s", entry.id, dest)
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    cache = hub_cache_dir()
    try:
        cached = Path(hf_hub_download(entry.repo, entry.path, cache_dir=cache, local_files_only=True))
    except (LocalEntryNotFoundError, FileNotFoundError, OSError):
        cached = None
    if cached is not None:
        log.info("%s: using the hub cache copy %s", entry.id, cached)
        _install(entry, cached, dest, move=False)
    else:
        where = (f"the file {entry.path} of the Hugging Face repo {entry.repo} "
                 f"(https://huggingface.co/{entry.repo}/resolve/main/{entry.path}) "
                 f"to {dest}")
        if offline():
            raise ModelError(
                f"cannot download {where}: offline (HF_HUB_OFFLINE=1) and not in the hub cache "
                f"{cache}. Unset HF_HUB_OFFLINE on a machine with network, or copy the file "
                f"there by hand.")
        staging = dest.parent / DOWNLOAD_SUBDIR
        log.info("%s: downloading %s/%s", entry.id, entry.repo, entry.path)
        got = _run_download(entry, staging, where, should_stop, deadline)
        _install(entry, got, dest, move=True)
    return dest
