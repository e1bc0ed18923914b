"""The choices the expander accepts, the language-model settings as one frozen object, and
checks that name the valid values on bad input."""
from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass

TASKS = ("t2v", "i2v", "flf2v", "extend")          # text, first frame, first+last frame, continue a clip
FAMILIES = ("wan2.1", "wan2.2", "embedded")        # which model the caption is written for
LANGUAGES = ("en", "zh")                           # language of the caption
BACKENDS = ("rules", "openai", "hf")               # offline rules, OpenAI-compatible HTTP, local transformers
ON_ERROR = ("fallback", "raise")

# Other spellings users (and the node's display names) may use for a backend.
BACKEND_ALIASES = {
    "rules": "rules", "rule": "rules", "offline": "rules", "none": "rules",
    "openai": "openai", "openai-compatible": "openai", "openai_compat": "openai", "http": "openai",
    "hf": "hf", "local hf": "hf", "local-hf": "hf", "hf_local": "hf", "transformers": "hf",
}


def check_choice(name: str, value: str, valid: tuple[str, ...]) -> str:
    """``value`` lower-cased if it is one of ``valid``; otherwise a ValueError that lists them."""
    v = str(value).strip().lower()
    if v not in valid:
        raise ValueError(f"{name}={value!r} is not supported; choose one of {', '.join(valid)}")
    return v


def check_backend(value: str) -> str:
    v = str(value).strip().lower()
    if v not in BACKEND_ALIASES:
        raise ValueError(f"backend={value!r} is not supported; choose one of {', '.join(BACKENDS)} "
                         f"('rules' works offline, 'openai' needs base_url, 'hf' needs transformers)")
    return BACKEND_ALIASES[v]


def check_max_words(max_words: int) -> int:
    if not isinstance(max_words, int) or isinstance(max_words, bool) or not 10 <= max_words <= 1000:
        raise ValueError(f"max_words={max_words!r} must be an integer from 10 to 1000 "
                         "(Wan captions are usually 80-100 words)")
    return max_words


def _positive_seconds(value: object) -> bool:
    try:
        seconds = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False
    return not isinstance(value, bool) and math.isfinite(seconds) and seconds > 0


@dataclass(frozen=True)
class LLMOptions:
    """How to reach a language model, validated on creation: ``backend`` ``rules`` (offline) |
    ``openai`` (an OpenAI-compatible server at ``base_url``, serving ``model``) | ``hf`` (a local
    transformers ``model``: repo id, alias or folder, fetched into ``models_dir``); ``api_key_env``
    is the NAME of the environment variable holding the key; ``max_tokens`` None: from max_words.
    ``timeout`` bounds one HTTP attempt, ``deadline`` the whole call (every attempt and the waits
    between retries; for ``hf``: loading and writing, while a first download has its own limit,
    ``SPACETIME_DOWNLOAD_TIMEOUT``), both in seconds."""

    backend: str = "rules"
    base_url: str | None = None
    model: str | None = None
    api_key_env: str | None = "OPENAI_API_KEY"
    temperature: float = 0.7
    timeout: float = 60.0
    retries: int = 2
    deadline: float = 180.0
    max_tokens: int | None = None
    models_dir: str | os.PathLike | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "backend", check_backend(self.backend))
        if not 0.0 <= float(self.temperature) <= 2.0:
            raise ValueError(f"temperature={self.temperature!r} must be between 0 and 2 (0 = greedy)")
        if not _positive_seconds(self.timeout) or not isinstance(self.retries, int) or self.retries < 0:
            raise ValueError(f"timeout must be > 0 seconds and retries a non-negative integer "
                             f"(got timeout={self.timeout!r}, retries={self.retries!r})")
        if not _positive_seconds(self.deadline):
            raise ValueError(f"deadline={self.deadline!r} must be a number of seconds > 0: the longest the "
                             "whole call may take, every attempt and retry wait together (default 180)")

    @classmethod
    def from_settings(cls, base: "LLMOptions | None" = None, **settings: object) -> "LLMOptions":
        """``base`` (default: the defaults) with ``settings`` replaced; an unknown name is refused
        with the list of valid ones."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(settings) - names)
        if unknown:
            raise TypeError(f"unknown prompt expander setting(s) {', '.join(unknown)}; "
                            f"valid: {', '.join(sorted(names))}")
        return dataclasses.replace(base or cls(), **settings)
