"""System prompts for LLM backends, kept as text data in ``prompts/``.

Layout: ``{task}.{language}.txt`` (what to write for text-to-video, image-to-video, first+last
frame, extension) followed by ``family-{family}.{language}.txt`` (what the target model
understands best). The embedded toy model has its own ``embedded.{language}.txt``, which
replaces both: it can only read its small vocabulary, whatever the task.
Placeholders ``{max_words}``, ``{colours}``, ``{shapes}``, ``{backgrounds}``, ``{motions}``
are filled in here. The structure follows the official Wan prompt extender
(Wan-Video/Wan2.1 ``wan/utils/prompt_extend.py``: keep the meaning, add detail, motion,
camera and style, 80-100 words); the text is our own.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from ..embedded import vocab

PROMPTS_DIR = Path(__file__).with_name("prompts")


@lru_cache(maxsize=None)
def _read(name: str) -> str:
    path = PROMPTS_DIR / name
    if not path.is_file():
        raise FileNotFoundError(f"system prompt file {path} is missing: reinstall the pack "
                                "(the prompts/*.txt files ship with it)")
    return path.read_text(encoding="utf-8").strip()


def _fill(text: str, values: dict[str, str]) -> str:
    for key, value in values.items():
        text = text.replace("{" + key + "}", value)
    return text


def system_prompt(task: str, model_family: str, language: str, max_words: int) -> str:
    """The system prompt for one (task, family, language), with its placeholders filled."""
    values = {
        "max_words": str(max_words),
        "colours": ", ".join(vocab.COLOURS),
        "shapes": ", ".join(vocab.SHAPES),
        "backgrounds": ", ".join(vocab.BACKGROUNDS),
        "motions": ", ".join(vocab.MOTIONS),
    }
    if model_family == "embedded":
        return _fill(_read(f"embedded.{language}.txt"), values)
    text = _read(f"{task}.{language}.txt") + "\n\n" + _read(f"family-{model_family}.{language}.txt")
    return _fill(text, values)
