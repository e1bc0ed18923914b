"""Dynamic prompts, as the web UI expands them when it queues a workflow.

Text widgets whose input definition has ``dynamicPrompts: true`` (CLIPTextEncode's ``text``,
for one) are sent with C-style comments removed and every ``{a|b|{c|d}}`` group replaced by
one of its options, nested groups included; ``\\{``, ``\\|`` and ``\\}`` stay literal. The UI
picks at random each time (ComfyUI_frontend ``processDynamicPrompt``); here the choice comes
from a ``random.Random`` the caller may seed, so a headless run can be repeated exactly.
"""
from __future__ import annotations

import random
import re

_COMMENTS = re.compile(r"/\*[\s\S]*?\*/|//.*")
_ESCAPED = re.compile(r"\\([{}|])")


def expand(text: str, rng: random.Random) -> str:
    """``text`` with comments stripped and each choice group resolved."""
    out = _expand(_COMMENTS.sub("", text), rng)
    return _ESCAPED.sub(r"\1", out)


def _expand(text: str, rng: random.Random) -> str:
    result, i = [], 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text):
            result.append(text[i:i + 2])
            i += 2
        elif ch == "{":
            options, i = _group(text, i + 1)
            result.append(_expand(rng.choice(options), rng))
        else:
            result.append(ch)
            i += 1
    return "".join(result)


def _group(text: str, i: int) -> tuple[list[str], int]:
    """The options of the group opening before index ``i``, and the index after its ``}``
    (an unclosed group runs to the end of the text, as in the UI)."""
    options, current, depth = [], [], 0
    while i < len(text):
        ch = text[i]
        i += 1
        if ch == "\\" and i < len(text):
            current.append(ch + text[i])
            i += 1
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            if depth == 0:
                break
            depth -= 1
        elif ch == "|" and depth == 0:
            options.append("".join(current))
            current = []
            continue
        current.append(ch)
    options.append("".join(current))
    return options, i
