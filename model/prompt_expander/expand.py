"""``expand_prompt``: a short idea -> the long, detailed caption a video model was trained on."""
from __future__ import annotations

import logging
import os
import re
from typing import Any, Callable

from . import rules
from .cache import cache_key, open_cache
from .errors import BackendUnavailable, PromptExpanderError, redact
from .images import data_url, frames_from, pick_frames, to_image_bytes
from .keys import read_api_key
from .options import FAMILIES, LANGUAGES, ON_ERROR, TASKS, LLMOptions, check_choice, check_max_words
from .system_prompts import system_prompt

log = logging.getLogger("spacetime.prompt_expander")

CACHE_VERSION = 1  # bump when post-processing changes, so old cached answers are not reused
_WARNED: set[str] = set()

__all__ = ["expand_prompt", "limit_words", "read_api_key", "check_text"]


def _warn_once(kind: str, message: str) -> None:
    if kind not in _WARNED:
        _WARNED.add(kind)
        log.warning(message)
    else:
        log.info(message)


def check_text(name: str, value: str) -> str:
    """``value`` if it is text that can be encoded and sent: no NUL character, no lone surrogate."""
    if "\x00" in value:
        raise ValueError(f"{name} contains a NUL character (\\x00) at position {value.index(chr(0))}; "
                         "remove it (it often comes from a bad copy and paste or a binary file)")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"{name} holds a lone surrogate ({value[e.start]!r}, at position {e.start}), which is not "
                         "valid Unicode text; send the text as UTF-8 (half of an emoji was probably cut off)") from None
    return value


def limit_words(text: str, max_words: int) -> str:
    """``text`` cut to at most ``max_words`` words (Chinese: characters), at a sentence end if possible."""
    if rules.count_words(text) <= max_words:
        return text
    sentences = re.findall(r".+?(?:[.!?。！？](?=\s|$)|[。！？]|$)", text)
    kept = ""
    for s in sentences:
        if rules.count_words(kept + s) > max_words:
            break
        kept += s
    if kept.strip():
        return kept.strip()
    words = text.split()  # one long first sentence: cut by words
    return " ".join(words[:max_words]) if len(words) > 1 else text[:max_words]


def expand_prompt(prompt: str, task: str = "t2v", seed: int = 0, *, model_family: str = "wan2.1",
                  language: str = "en", max_words: int = 100, images: Any = None, llm: LLMOptions | None = None,
                  on_error: str = "fallback", cache: bool | str | os.PathLike = True,
                  should_stop: Callable[[], bool] | None = None, **llm_settings: Any) -> str:
    """Rewrite a short prompt into a detailed caption for a video model.

    Args:
        prompt: the user's idea, e.g. "a red fox".
        task: ``t2v`` | ``i2v`` (images[0] is the first frame) | ``flf2v`` (first and last frame) |
            ``extend`` (images[-1] is the last frame of the clip to continue).
        seed: decides every choice (rules) and is sent to the LLM with its temperature.
        model_family: ``wan2.1`` | ``wan2.2`` | ``embedded`` (captions in the toy model's vocabulary).
        language: ``en`` | ``zh`` (the embedded model reads English only).
        max_words: length limit (Chinese: characters); Wan captions are usually 80-100.
        images: ComfyUI IMAGE tensor(s), PIL images, file paths or PNG/JPEG bytes.
        llm: which language model and how to call it (:class:`LLMOptions`; default: the offline
            rules). Its fields may also be given as keywords, e.g. ``backend="openai",
            base_url="http://localhost:11434/v1", model="qwen2.5:7b"``; they override ``llm``'s.
        on_error: ``fallback`` (log a warning, return the rule-based caption) or ``raise``.
        cache: ``True`` (memory + ``~/.cache/spacetime_video/prompts``), ``False``, or a folder.
        should_stop: polled (every 0.05 s while waiting on the server, and between retries; every
            0.1 s of a local model's download, and between its tokens); when it returns True the
            call raises ``Interrupted``.

    Returns:
        The expanded caption. Same inputs and seed give the same text (LLM answers are cached).

    Raises:
        ValueError: an input is invalid (the message names the valid values).
        PromptExpanderError: the LLM backend failed and ``on_error="raise"``.
        Interrupted: ``should_stop()`` turned True (never replaced by the fallback).
    """
    if not isinstance(prompt, str):
        raise ValueError(f"prompt must be text, got {type(prompt).__name__}")
    check_text("prompt", prompt)
    task = check_choice("task", task, TASKS)
    model_family = check_choice("model_family", model_family, FAMILIES)
    language = check_choice("language", language, LANGUAGES)
    on_error = check_choice("on_error", on_error, ON_ERROR)
    max_words = check_max_words(max_words)
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed={seed!r} must be a non-negative integer")
    opts = LLMOptions.from_settings(llm, **llm_settings) if llm_settings or llm is None else llm
    for name in ("base_url", "model", "api_key_env"):
        if isinstance(getattr(opts, name), str):
            check_text(name, getattr(opts, name))
    frames = pick_frames(frames_from(images), task)
    if not prompt.strip() and not frames:
        raise ValueError("prompt is empty: write a short idea (e.g. 'a red fox running through snow') "
                         "or give an image to describe")

    def with_rules(hint: str | None = None) -> str:
        return rules.expand_with_rules(prompt.strip() or "the scene", task, model_family, language, seed, max_words, hint)

    backend = opts.backend
    if backend == "rules":
        if frames:
            log.info("the rules backend cannot see images; they are ignored")
        return with_rules()

    if task == "flf2v" and len(frames) == 1:
        log.warning("task flf2v expects two images (first and last frame); got one")
    encoded = [to_image_bytes(f) for f in frames]  # [(mime, bytes)]
    system = system_prompt(task, model_family, language, max_words)
    user = prompt.strip() or "(no text: describe the image)"
    max_tokens = int(opts.max_tokens or 4 * max_words + 256)
    if backend == "openai":
        if not opts.base_url:
            raise ValueError("backend 'openai' needs base_url, e.g. http://localhost:11434/v1 (Ollama), "
                             "http://localhost:8080/v1 (llama.cpp), https://api.openai.com/v1")
        if not opts.model:
            raise ValueError("backend 'openai' needs a model name, e.g. 'qwen2.5:7b' (Ollama) or 'gpt-4o-mini'")
    api_key = read_api_key(opts.api_key_env) if backend == "openai" else None

    store = open_cache(cache)
    key = cache_key({
        "v": CACHE_VERSION, "backend": backend, "base_url": (opts.base_url or "").rstrip("/"),
        "model": opts.model or "", "api_key_env": opts.api_key_env or "", "models_dir": str(opts.models_dir or ""),
        "task": task, "family": model_family, "language": language, "max_words": max_words, "seed": seed,
        "temperature": float(opts.temperature), "max_tokens": max_tokens, "system": system, "user": user,
        "images": [data for _, data in encoded],
    })
    if store is not None and (hit := store.get(key)) is not None:
        log.debug("prompt expander: cache hit %s", key[:12])
        return hit

    try:
        if backend == "openai":
            from .backends.openai_compat import ChatRequest, chat
            answer = chat(ChatRequest(base_url=opts.base_url, model=opts.model, system=system, user=user,
                                      images=[data_url(m, d) for m, d in encoded], seed=seed,
                                      temperature=float(opts.temperature), max_tokens=max_tokens,
                                      timeout=float(opts.timeout), retries=opts.retries,
                                      deadline=float(opts.deadline), api_key=api_key,
                                      api_key_env=opts.api_key_env), should_stop=should_stop)
        else:
            from .backends import hf_local
            answer = hf_local.generate(system, user, encoded, seed=seed, temperature=float(opts.temperature),
                                       max_new_tokens=max_tokens, model=opts.model, models_dir=opts.models_dir,
                                       should_stop=should_stop, deadline=float(opts.deadline))
    except PromptExpanderError as e:
        if on_error == "raise":
            raise
        if isinstance(e, BackendUnavailable):
            _warn_once(f"unavailable:{backend}:{e}", f"prompt expander backend '{backend}' unavailable ({e}); "
                       "using the offline rule-based expander")
        else:
            log.warning("prompt expander backend '%s' failed (%s); using the offline rule-based expander",
                        backend, e)
        return with_rules()  # not cached: the next call tries the backend again

    answer = redact(answer, api_key)  # (the backend redacted already; a caption is never the place for a key)
    text = with_rules(hint=answer) if model_family == "embedded" else limit_words(answer, max_words)
    if store is not None:
        store.put(key, text)
    return text
