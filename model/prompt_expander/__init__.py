"""The prompt expander: a short idea becomes the detailed caption a video model was trained on.

``expand_prompt("a red fox", task="t2v", seed=0)`` works offline (rule-based backend); an
OpenAI-compatible server (``backend="openai"``) or a local transformers model (``backend="hf"``)
write richer captions; their settings travel as one ``LLMOptions``. Plain Python: no ComfyUI
import here. Every setting may come from a shared workflow, so API keys are read only from
variables and sent only to hosts the server's owner allowed (``keys.py``), local models load
only from inside ``models_dir``, and ``should_stop`` interrupts a call that waits.
"""
from .cache import clear_memory_cache, default_cache_dir
from .errors import (BackendUnavailable, DownloadTimedOut, EmptyAnswer, Interrupted, MalformedResponse,
                     ModelNotFound, PromptExpanderError, RequestRejected, ServerError, ServerTimeout,
                     ServerUnreachable)
from .expand import expand_prompt
from .options import BACKENDS, FAMILIES, LANGUAGES, ON_ERROR, TASKS, LLMOptions
from .scene import Scene, embedded_caption, embedded_notes, parse_scene, scene_caption
from .system_prompts import system_prompt

__all__ = [
    "expand_prompt", "LLMOptions", "system_prompt", "embedded_caption", "embedded_notes", "parse_scene", "scene_caption", "Scene",
    "TASKS", "FAMILIES", "LANGUAGES", "BACKENDS", "ON_ERROR", "clear_memory_cache", "default_cache_dir",
    "PromptExpanderError", "ServerUnreachable", "ServerTimeout", "ServerError", "ModelNotFound",
    "RequestRejected", "MalformedResponse", "EmptyAnswer", "BackendUnavailable", "Interrupted", "DownloadTimedOut",
]
