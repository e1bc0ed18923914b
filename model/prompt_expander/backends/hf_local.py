"""A local Hugging Face chat model through ``transformers`` (optional).

As the official Wan extender does (Wan-Video/Wan2.1 ``wan/utils/prompt_extend.py``,
``QwenPromptExpander``): Qwen2.5-Instruct for text, Qwen2.5-VL-Instruct when images are given.
The model is found or fetched by ``hf_models`` (a folder inside the caller's models folder -- the
node passes ComfyUI's ``models/LLM`` -- or a repo downloaded there), loaded on the GPU when there
is one, run, then offloaded: moved back to CPU RAM (``offload="cpu"``, the default, quick to
reuse) or dropped entirely (``offload="free"``). ``transformers`` is imported lazily, so the pack
works without it; a missing one raises ``BackendUnavailable`` naming what to install.

A folder whose weights do not fit the available RAM is not loaded (``MemAvailable`` of
``/proc/meminfo``; skipped where unreadable), and only one model stays loaded at a time. While
the model writes, ``should_stop`` and the call's deadline are checked after each token. Remote
code is never run (``trust_remote_code`` stays off).
"""
from __future__ import annotations

import gc
import io
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from ..errors import BackendUnavailable, EmptyAnswer, Interrupted, ServerTimeout
from .hf_models import (DEFAULT_TEXT_MODEL, DEFAULT_VISION_MODEL, GiB, ensure_downloaded, is_vision_model,
                        mem_available, resolve)
from .openai_compat import clean_answer

log = logging.getLogger("spacetime.prompt_expander")


@dataclass
class LocalModel:
    """A loaded model and its tokenizer (text) or processor (vision)."""

    folder: Path
    model: Any
    tokenizer: Any  # a tokenizer, or a processor for vision models
    vision: bool


_LOADED: dict[str, LocalModel] = {}  # at most one: loading another model drops the previous one


def _transformers():
    try:
        import transformers
    except ImportError:
        raise BackendUnavailable("the local model backend needs transformers: pip install transformers "
                                 "(or use the 'rules' or 'openai' backend)") from None
    return transformers


def _unload_all() -> None:
    """Forget the loaded model(s), so that their memory goes back before another one loads."""
    if not _LOADED:
        return
    for lm in _LOADED.values():
        log.info("unloading the local model %s", lm.folder.name)
    _LOADED.clear()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def needed_bytes(folder: Path, dtype: torch.dtype) -> int:
    """RAM the weights in ``folder`` take once loaded as ``dtype``: the size of its ``*.safetensors``,
    doubled when a 16-bit checkpoint (as its config says) is loaded as float32."""
    size = sum(p.stat().st_size for p in folder.glob("*.safetensors"))
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        config = {}
    stored = str(config.get("torch_dtype") or config.get("dtype") or "") if isinstance(config, dict) else ""
    return size * 2 if dtype == torch.float32 and stored in ("bfloat16", "float16") else size


def check_memory(folder: Path, dtype: torch.dtype) -> None:
    """Refuse (``BackendUnavailable``) a model whose weights do not fit in the available RAM."""
    available = mem_available()
    if available is None:
        return
    need = needed_bytes(folder, dtype)
    if need > available:
        raise BackendUnavailable(
            f"the local model {folder.name} needs about {need / GiB:.1f} GiB of RAM to load "
            f"({str(dtype).replace('torch.', '')}) but only {available / GiB:.1f} GiB is available, so it was "
            f"not loaded. Free memory (close programs, unload other models), pick a smaller model (e.g. "
            f"{DEFAULT_TEXT_MODEL!r}), or use the 'rules' or 'openai' backend")


def load(folder: Path, vision: bool, dtype: torch.dtype | None = None) -> LocalModel:
    """Load (or reuse) the model in ``folder``; it stays on the CPU until ``generate`` runs it. Only
    one model stays loaded: another one's is dropped first, and a model the RAM cannot hold is refused."""
    key = f"{folder.resolve()}|{vision}"
    if key in _LOADED:
        return _LOADED[key]
    dtype = dtype or (torch.bfloat16 if torch.cuda.is_available() else torch.float32)
    _unload_all()
    check_memory(folder, dtype)
    tf = _transformers()
    log.info("loading %s (%s, %s)", folder, "vision" if vision else "text", dtype)
    if vision:
        tokenizer = tf.AutoProcessor.from_pretrained(str(folder))
        model = tf.AutoModelForImageTextToText.from_pretrained(str(folder), dtype=dtype)
    else:
        tokenizer = tf.AutoTokenizer.from_pretrained(str(folder))
        model = tf.AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype)
    model.eval()
    _LOADED[key] = LocalModel(folder, model, tokenizer, vision)
    return _LOADED[key]


def _pil_images(images: list[tuple[str, bytes]]) -> list[Any]:
    try:
        from PIL import Image
    except ImportError:
        raise BackendUnavailable("image input to the local model needs Pillow: pip install pillow") from None
    return [Image.open(io.BytesIO(data)).convert("RGB") for _, data in images]


def _inputs(lm: LocalModel, system: str, user: str, images: list[tuple[str, bytes]]) -> dict:
    if lm.vision:
        content = [{"type": "image"} for _ in images] + [{"type": "text", "text": user}]
        messages = [{"role": "system", "content": [{"type": "text", "text": system}]},
                    {"role": "user", "content": content}]
        text = lm.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return dict(lm.tokenizer(text=[text], images=_pil_images(images) or None, return_tensors="pt"))
    messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
    text = lm.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return dict(lm.tokenizer([text], return_tensors="pt"))


def offload(lm: LocalModel, how: str = "cpu") -> None:
    """Give the accelerator back: ``cpu`` moves the weights to RAM, ``free`` drops them."""
    if how == "free":
        _LOADED.pop(next((k for k, v in _LOADED.items() if v is lm), ""), None)
        lm.model = None
        gc.collect()
    elif how == "cpu":
        lm.model.to("cpu")
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class _StopWhen:
    """A transformers stopping criterion that ends generation when ``should_stop()`` is true
    (``stopped``) or the monotonic clock reaches ``end`` (``late``)."""

    def __init__(self, should_stop: Callable[[], bool] | None, end: float = math.inf) -> None:
        self.should_stop = should_stop
        self.end = end
        self.stopped = self.late = False

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        if not (self.stopped or self.late):
            self.stopped = self.should_stop is not None and bool(self.should_stop())
            self.late = time.monotonic() >= self.end
        done = self.stopped or self.late
        return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)


def _check_stop(should_stop: Callable[[], bool] | None, what: str) -> None:
    if should_stop is not None and should_stop():
        raise Interrupted(f"the prompt expander was interrupted {what}")


def generate(system: str, user: str, images: list[tuple[str, bytes]] | None = None, seed: int = 0,
             temperature: float = 0.7, max_new_tokens: int = 512, model: str | None = None,
             models_dir: str | os.PathLike | None = None, device: str | None = None,
             offload_to: str = "cpu", should_stop: Callable[[], bool] | None = None,
             deadline: float | None = None, download_timeout_s: float | None = None) -> str:
    """Rewrite ``user`` with a local chat model; seeded sampling (greedy when temperature is 0).

    ``should_stop`` is checked before loading, every ``hf_models.POLL_S`` seconds of a download and after each
    new token (``Interrupted``). ``deadline`` (seconds) bounds loading and writing (``ServerTimeout``),
    ``download_timeout_s`` a first download (see ``ensure_downloaded``)."""
    images = images or []
    repo_id, folder = resolve(model, models_dir, vision=bool(images))
    _check_stop(should_stop, "before loading the local model")
    folder = ensure_downloaded(repo_id, folder, should_stop, download_timeout_s)
    end = time.monotonic() + deadline if deadline else math.inf
    vision = is_vision_model(folder)
    if images and not vision:
        log.warning("%s is a text-only model: the images are ignored (use a vision model such as %s)",
                    folder.name, DEFAULT_VISION_MODEL)
        images = []
    lm = load(folder, vision=vision)
    _check_stop(should_stop, "after loading the local model")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    stop = _StopWhen(should_stop, end)
    try:
        lm.model.to(device)
        inputs = {k: v.to(device) if hasattr(v, "to") else v for k, v in _inputs(lm, system, user, images).items()}
        sampling = dict(do_sample=True, temperature=temperature, top_p=0.9) if temperature > 0 else dict(do_sample=False)
        # A private RNG stream: the seed decides the sampling, and the caller's RNG state is untouched.
        with torch.random.fork_rng(devices=[torch.device(device)] if device.startswith("cuda") else []), torch.no_grad():
            torch.manual_seed(seed)
            sampling["stopping_criteria"] = _transformers().StoppingCriteriaList([stop])
            out = lm.model.generate(**inputs, max_new_tokens=max_new_tokens, **sampling)  # (1, prompt + new)
        new_tokens = out[0, inputs["input_ids"].shape[1]:]
        decoder = lm.tokenizer
        text = clean_answer(decoder.decode(new_tokens, skip_special_tokens=True))
    finally:
        offload(lm, offload_to)
    if stop.stopped:
        raise Interrupted(f"the prompt expander was interrupted while {folder.name} was writing")
    if stop.late:
        err = ServerTimeout(f"the local model {folder.name} did not finish within the deadline of {deadline:g}s "
                            "(loading and writing together); raise deadline, lower max_tokens or use a smaller model")
        err.retryable = False
        raise err
    if not text:
        raise EmptyAnswer(f"the local model {folder.name} produced no text; try another model or seed")
    return text
