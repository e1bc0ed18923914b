"""The offline, rule-based expander: always available, deterministic by seed.

It cannot invent like a language model, but it gives a Wan-style structured caption -- the
user's prompt verbatim, then appearance, action, setting, lighting, camera and style -- from
phrase banks in ``prompts/rules.{en,zh}.json``. What the prompt already says (a motion, a
camera move, a light, a style, a place) is not overwritten. For the embedded toy model it
writes the canonical caption of its vocabulary instead (see ``scene.py``).

Structure after the official Wan extender's system prompt (Wan-Video/Wan2.1
``wan/utils/prompt_extend.py``): subject detail, motion, camera, style, about 80-100 words.
"""
from __future__ import annotations

import hashlib
import json
import logging
import random
import re
from functools import lru_cache

from .scene import embedded_caption
from .system_prompts import PROMPTS_DIR

log = logging.getLogger("spacetime.prompt_expander")

_CJK = re.compile(r"[\u3000-\u303f\u4e00-\u9fff\uff00-\uffef]")


@lru_cache(maxsize=None)
def _bank(language: str) -> dict:
    return json.loads((PROMPTS_DIR / f"rules.{language}.json").read_text(encoding="utf-8"))


def count_words(text: str) -> int:
    """Words of English text plus characters of Chinese text (how Wan counts 80-100 "字")."""
    return len(_CJK.findall(text)) + len(re.findall(r"[A-Za-z0-9][A-Za-z0-9'\-]*", _CJK.sub(" ", text)))


def _rng(*parts: object) -> random.Random:
    """A generator seeded by every input, stable across runs and Python versions."""
    digest = hashlib.sha256("|".join(map(str, parts)).encode("utf-8")).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def _mentions(text: str, words: list[str]) -> bool:
    """Whether ``text`` contains any of ``words`` (whole words for Latin, substrings for CJK)."""
    low = f" {text.lower()} "
    for w in words:
        if _CJK.search(w) or w.startswith(" "):
            if w in low:
                return True
        elif re.search(rf"(?<![a-z]){re.escape(w)}(?![a-z])", low):
            return True
    return False


def category(prompt: str) -> str:
    """animal, person, vehicle, nature or object: picks which phrase banks fit the subject."""
    for name in ("animal", "person", "vehicle", "nature"):
        if any(_mentions(prompt, _bank(lang)["categories"][name]) for lang in ("en", "zh")):
            return name
    return "object"


def _any_language(key: str) -> list[str]:
    return [*_bank("en")[key], *_bank("zh")[key]]


def _clean(prompt: str) -> str:
    text = " ".join(prompt.split()).strip()
    return text.rstrip(".。!！?？;；,，")


def _sentence(text: str, language: str) -> str:
    if language == "zh":
        return text if text.endswith(("。", "！", "？")) else text + "。"
    text = text[:1].upper() + text[1:]
    return text if text.endswith((".", "!", "?")) else text + "."


def wan_caption(prompt: str, task: str, model_family: str, language: str, seed: int, max_words: int) -> str:
    """A structured Wan caption for ``prompt``, at most ``max_words`` words (or Chinese characters)."""
    text = _clean(prompt)
    if count_words(text) >= max_words:
        log.info("prompt already has %d words (max_words=%d): kept as it is", count_words(text), max_words)
        return text
    bank = _bank(language)
    rng = _rng(seed, text, task, model_family, language)
    kind = category(text)
    image_led = task in ("i2v", "flf2v", "extend")  # the frames fix the look: do not invent one

    # (priority, sentence) in reading order; higher priorities are dropped first to fit max_words.
    parts: list[tuple[int, str]] = [(0, text)]
    if bank["task"][task]:
        parts.append((1, bank["task"][task]))
    if not image_led:
        parts.append((5, rng.choice(bank["appearance"][kind])))
    if not _mentions(text, _any_language("motion_words")) or task == "extend":
        parts.append((2, rng.choice(bank["action"][kind])))
    if not image_led and not _mentions(text, _any_language("setting_words")):
        parts.append((6, rng.choice(bank["setting"][kind])))
    if not image_led and not _mentions(text, _any_language("light_words")):
        parts.append((7, rng.choice(bank["lighting"])))
    if not _mentions(text, _any_language("camera_words")):
        parts.append((3, rng.choice(bank["camera"][task])))
    if model_family == "wan2.2":
        parts.append((8, rng.choice(bank["wan2.2"])))
    if task in ("i2v", "flf2v"):
        parts.append((4, bank["keep_style"]))
    elif task == "t2v" and not _mentions(text, _any_language("style_words")):
        parts.append((4, rng.choice(bank["style"])))

    sentences = [(p, _sentence(s, language)) for p, s in parts]
    joiner = "" if language == "zh" else " "
    while count_words(joiner.join(s for _, s in sentences)) > max_words and len(sentences) > 1:
        drop = max(range(len(sentences)), key=lambda i: (sentences[i][0], i))
        sentences.pop(drop)
    return joiner.join(s for _, s in sentences)


def expand_with_rules(prompt: str, task: str = "t2v", model_family: str = "wan2.1", language: str = "en",
                      seed: int = 0, max_words: int = 100, hint: str | None = None) -> str:
    """The rule-based expansion (the default backend, and the fallback of the others).

    ``hint``: for the embedded family, text (e.g. an LLM's answer) whose vocabulary words fill the
    slots the prompt leaves open.
    """
    if model_family == "embedded":
        if language != "en":
            log.info("the embedded model reads English captions only: writing English")
        return embedded_caption(prompt, seed, hint=hint)
    return wan_caption(prompt, task, model_family, language, seed, max_words)
