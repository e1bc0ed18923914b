"""The choices the expander accepts, and checks that name the valid values on bad input."""
from __future__ import annotations

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
