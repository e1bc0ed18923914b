"""The prompt cache on disk: a write that fails (file-size limit, disk full, text UTF-8 cannot
hold) is logged and skipped -- the expansion goes on -- and leaves no temporary file."""
from __future__ import annotations

import errno
import json
import logging
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from spacetime_video.model.prompt_expander import cache as pe_cache

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def fresh():
    pe_cache.clear_memory_cache()
    yield
    pe_cache.clear_memory_cache()


def test_file_size_limit_skips_the_file_and_leaves_nothing(tmp_path):
    """In a child limited to 2 kB per file (RLIMIT_FSIZE: writes fail with EFBIG): a long answer
    is not cached on disk, a short one is, the call never fails and no temporary file stays."""
    folder = tmp_path / "prompts"
    code = textwrap.dedent(f"""
        import importlib.util, logging, resource, sys
        spec = importlib.util.spec_from_file_location('spacetime_video', {str(ROOT / '__init__.py')!r},
                                                      submodule_search_locations=[{str(ROOT)!r}])
        m = importlib.util.module_from_spec(spec); sys.modules['spacetime_video'] = m; spec.loader.exec_module(m)
        from spacetime_video.model.prompt_expander.cache import PromptCache
        logging.basicConfig(level=logging.WARNING, stream=sys.stdout, format='%(levelname)s %(message)s')
        resource.setrlimit(resource.RLIMIT_FSIZE, (2_000, 2_000))
        store = PromptCache({str(folder)!r})
        store.put('long', 'a fox ' * 2_000)
        store.put('short', 'a fox')
        print('LONG IN MEMORY', store.get('long') == 'a fox ' * 2_000)
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "could not write the prompt cache" in r.stdout and "continuing without it" in r.stdout, r.stdout
    assert "LONG IN MEMORY True" in r.stdout
    assert sorted(p.name for p in folder.iterdir()) == ["short.json"]  # no partial or temporary file
    assert json.loads((folder / "short.json").read_text()) == {"key": "short", "text": "a fox"}


def test_disk_full_during_the_write_is_logged_and_leaves_nothing(tmp_path, monkeypatch, caplog):
    def full(obj, f, **kw):
        f.write('{"key": "k", "te')
        f.flush()
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(json, "dump", full)
    store = pe_cache.PromptCache(tmp_path)
    with caplog.at_level(logging.WARNING, logger="spacetime.prompt_expander"):
        store.put("k", "a fox")
    assert "No space left on device" in caplog.text
    assert list(tmp_path.iterdir()) == []
    assert store.get("k") == "a fox"  # still remembered in memory


def test_text_utf8_cannot_hold_is_not_cached_on_disk(tmp_path, caplog):
    store = pe_cache.PromptCache(tmp_path)  # a server may answer a lone surrogate ("\ud83d" in its JSON)
    with caplog.at_level(logging.WARNING, logger="spacetime.prompt_expander"):
        store.put("k", "a fox \ud83d")
    assert "could not write the prompt cache" in caplog.text
    assert list(tmp_path.iterdir()) == []


def test_an_unexpected_error_is_raised_and_leaves_nothing(tmp_path, monkeypatch):
    def broken(obj, f, **kw):
        f.write("{")
        raise RuntimeError("a bug, not a full disk")
    monkeypatch.setattr(json, "dump", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        pe_cache.PromptCache(tmp_path).put("k", "a fox")
    assert list(tmp_path.iterdir()) == []
