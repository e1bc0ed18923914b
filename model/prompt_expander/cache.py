"""A cache of expanded prompts, in memory and on disk, keyed by every input except the API key.

Why: a language model served elsewhere may not be bit-reproducible even with a seed (batching,
GPU kernels, a model updated under the same name). Caching the first answer makes a
workflow reproducible: the same prompt, seed, model, endpoint, system prompt and images give
the same caption until the cache is cleared. The key is a SHA-256 of the inputs; the API key
is never part of the key nor of the stored files (only ``{"key", "text"}`` is written).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

log = logging.getLogger("spacetime.prompt_expander")

_MEMORY: "OrderedDict[str, str]" = OrderedDict()
_MEMORY_SIZE = 512


def default_cache_dir() -> Path:
    """``$SPACETIME_PROMPT_CACHE``, else ``$XDG_CACHE_HOME/spacetime_video/prompts``
    (``~/.cache/...``)."""
    env = os.environ.get("SPACETIME_PROMPT_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "spacetime_video" / "prompts"


def cache_key(inputs: dict[str, Any]) -> str:
    """SHA-256 of the inputs as canonical JSON (bytes, e.g. images, are hashed first)."""
    def plain(v: Any) -> Any:
        if isinstance(v, (bytes, bytearray)):
            return "sha256:" + hashlib.sha256(v).hexdigest()
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {str(k): plain(x) for k, x in v.items()}
        return v
    blob = json.dumps(plain(inputs), sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class PromptCache:
    """Memory (always) plus an optional folder of ``<key>.json`` files."""

    def __init__(self, folder: str | os.PathLike | None):
        self.folder = Path(folder) if folder is not None else None

    def get(self, key: str) -> str | None:
        if key in _MEMORY:
            _MEMORY.move_to_end(key)
            return _MEMORY[key]
        if self.folder is None:
            return None
        path = self.folder / f"{key}.json"
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            log.warning("ignoring unreadable prompt cache file %s (%s)", path, e)
            return None
        text = data.get("text") if isinstance(data, dict) and data.get("key") == key else None
        if isinstance(text, str):
            self._remember(key, text)
        return text if isinstance(text, str) else None

    def put(self, key: str, text: str) -> None:
        """Remember ``text``; a failed file write is logged and skipped (the expansion goes on) and
        leaves no temporary file."""
        self._remember(key, text)
        if self.folder is None:
            return
        tmp = None
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            # Write-then-rename so a concurrent reader never sees half a file.
            fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=".", suffix=".tmp")
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump({"key": key, "text": text}, f, ensure_ascii=False)
            os.replace(tmp, self.folder / f"{key}.json")
            tmp = None
        except (OSError, ValueError) as e:  # disk full, file-size limit, text UTF-8 cannot hold: not cached
            log.warning("could not write the prompt cache in %s (%s); continuing without it", self.folder, e)
        finally:
            if tmp is not None:  # whatever stopped the write, no half-written file stays behind
                try:
                    os.unlink(tmp)
                except OSError:
                    pass

    @staticmethod
    def _remember(key: str, text: str) -> None:
        _MEMORY[key] = text
        _MEMORY.move_to_end(key)
        while len(_MEMORY) > _MEMORY_SIZE:
            _MEMORY.popitem(last=False)


def open_cache(cache: bool | str | os.PathLike) -> PromptCache | None:
    """``False`` -> no cache; ``True`` -> memory + the default folder; a path -> memory + that folder."""
    if cache is False or cache is None:
        return None
    if cache is True:
        return PromptCache(default_cache_dir())
    return PromptCache(cache)


def clear_memory_cache() -> None:
    """Forget the in-memory entries (files on disk stay)."""
    _MEMORY.clear()
