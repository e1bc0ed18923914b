"""Captions for the embedded toy model, in its training vocabulary (``model/embedded/vocab.py``).

The toy world is one coloured shape moving over a plain background, so a caption has four
slots: colour, shape, motion, background. ``parse_scene`` reads them out of any sloppy prompt
("red ball left", "a violet box falling on grey", "红色的球向左"), mapping synonyms to the
canonical names; ``scene_caption`` writes the canonical caption, e.g.
"a red circle moves to the left across a black background". Slots the prompt leaves open are
chosen from the seed, so the same prompt and seed always give the same caption.
"""
from __future__ import annotations

import logging
import random
import re
from dataclasses import dataclass

from ..embedded import vocab

log = logging.getLogger("spacetime.prompt_expander")

DIRECTIONS = ("left", "right", "up", "down")

# Inflections and near-synonyms users type that the vocabulary's SYNONYMS do not list.
# (The vocabulary itself is shared with the world generator and is not changed here.)
_EXTRA_EN: dict[str, tuple[str, ...]] = {
    "red": ("crimson", "scarlet"), "green": ("lime",), "yellow": ("gold", "golden"),
    "orange": ("amber",), "purple": ("magenta", "lilac"), "cyan": ("teal", "aqua"),
    "gray": ("silver",), "beige": ("sand", "tan", "cream"), "navy": ("navy blue",),
    "circle": ("circles", "balls", "orb", "disk", "discs", "dots", "spheres", "round"),
    "square": ("squares", "boxes", "blocks", "cubes", "tiles", "rectangle"),
    "triangle": ("triangles", "wedges", "pyramids"),
    "left": ("left", "leftward", "leftwards", "to the left", "westward"),
    "right": ("right", "rightward", "rightwards", "to the right", "eastward"),
    "up": ("up", "upward", "upwards", "rising", "rise", "ascending", "ascends", "climbing", "floating"),
    "down": ("down", "downward", "downwards", "falling", "fall", "dropping", "drops", "sinking",
             "descending", "descends"),
    "still": ("still", "static", "stationary", "motionless", "not moving", "resting", "rests"),
    "grow": ("grow", "growing", "expanding", "enlarging", "bigger", "larger"),
    "shrink": ("shrink", "shrinking", "contracting", "smaller"),
}

# Chinese words, matched character by character (longest first, so 深蓝 wins over 蓝).
_ZH: dict[str, tuple[str, ...]] = {
    "red": ("红",), "green": ("绿",), "blue": ("蓝",), "yellow": ("黄",), "purple": ("紫",),
    "orange": ("橙", "橘"), "white": ("白",), "cyan": ("青",),
    "black": ("黑",), "gray": ("灰",), "navy": ("深蓝", "藏青", "海军蓝"), "beige": ("米色", "米黄", "沙色"),
    "circle": ("圆", "球", "圆点"), "square": ("方", "正方形", "方块", "盒子", "立方体"),
    "triangle": ("三角", "金字塔"),
    "left": ("左",), "right": ("右",), "up": ("上升", "向上", "往上", "升起", "飘起"),
    "down": ("下落", "向下", "往下", "下降", "落下", "掉落"),
    "still": ("静止", "不动", "停住"), "grow": ("变大", "放大", "长大", "膨胀"),
    "shrink": ("变小", "缩小", "收缩"),
}
# Chinese words that contain a vocabulary character but mean something else (方向 = direction).
_ZH_IGNORE = ("方向", "地方", "方法", "上方", "下方", "方面")

_BG_AFTER = {"background", "backdrop", "bg", "backgrounds", "背", "底"}
_BG_BEFORE = {"on", "over", "against", "across", "onto"}
_FILLERS = {"a", "an", "the", "plain", "dark", "solid", "colored", "coloured", "色", "的", "在"}
_SIZES = {"small", "big", "large", "tiny", "little", "huge", "小", "大", "的", "色"}

# An object colour asked for as a background (or the reverse): the closest one the world has.
_AS_BACKGROUND = {"blue": "navy", "purple": "navy", "cyan": "navy", "white": "beige",
                  "yellow": "beige", "orange": "beige"}
_AS_COLOUR = {"navy": "blue", "beige": "yellow", "gray": "white"}


def _kind(name: str) -> str:
    if name in vocab.COLOURS:
        return "colour"
    if name in vocab.BACKGROUNDS:
        return "background"
    if name in vocab.SHAPES:
        return "shape"
    return "motion"


def _table(language: str) -> dict[tuple[str, ...], str]:
    """Phrase (as a tuple of tokens) -> canonical name."""
    table: dict[tuple[str, ...], str] = {}
    names = [*vocab.COLOURS, *vocab.BACKGROUNDS, *vocab.SHAPES, *vocab.MOTIONS]
    for name in names:
        if language == "zh":
            table.update({tuple(p): name for p in _ZH.get(name, ())})
        else:
            for p in (*vocab.words_for(name), *_EXTRA_EN.get(name, ())):
                table[tuple(p.lower().replace("-", " ").split())] = name
    if language == "zh":
        table.update({tuple(p): "" for p in _ZH_IGNORE})  # matched, then skipped
    return table


_TABLES = {lang: _table(lang) for lang in ("en", "zh")}


def _tokens(text: str) -> tuple[list[str], str]:
    """Tokens and their language: CJK text is split into characters, the rest into words."""
    if re.search(r"[\u4e00-\u9fff]", text):
        zh = [c for c in text if not c.isspace()]
        return zh, "zh"
    return re.findall(r"[a-z]+", text.lower().replace("-", " ")), "en"


@dataclass(frozen=True)
class Scene:
    """The four slots of an embedded-world caption; ``None`` where the prompt said nothing."""

    colour: str | None = None
    shape: str | None = None
    motion: str | None = None
    background: str | None = None

    def merged(self, other: "Scene") -> "Scene":
        """This scene with its empty slots taken from ``other``."""
        return Scene(*(a if a is not None else b for a, b in
                       zip((self.colour, self.shape, self.motion, self.background),
                           (other.colour, other.shape, other.motion, other.background))))


def _skip(tokens: list[str], i: int, step: int, skip: set[str]) -> str | None:
    """The first token from ``i`` in direction ``step`` that is not in ``skip``."""
    while 0 <= i < len(tokens):
        if tokens[i] not in skip:
            return tokens[i]
        i += step
    return None


def parse_scene(text: str, notes: list[str] | None = None) -> Scene:
    """Read colour, shape, motion and background out of a free-form prompt (English or Chinese).

    A colour word counts as the background when "background" follows it or "on/over/against"
    precedes it, as the shape's colour when a shape follows it, and otherwise by its kind.
    ``notes`` receives one line per word the world has not got in that role, naming what is used.
    """
    tokens, language = _tokens(text)
    table = _TABLES[language]
    longest = max(len(k) for k in table)
    matches: list[tuple[int, int, str]] = []  # (start, end, canonical)
    i = 0
    while i < len(tokens):
        for n in range(min(longest, len(tokens) - i), 0, -1):
            name = table.get(tuple(tokens[i:i + n]))
            if name is not None:
                matches.append((i, i + n, name))
                i += n
                break
        else:
            i += 1
    shape_starts = {s for s, _, name in matches if _kind(name) == "shape"}
    slots: dict[str, str] = {}
    for start, end, name in matches:
        if not name:
            continue
        kind = _kind(name)
        if kind in ("colour", "background"):
            after = _skip(tokens, end, 1, _FILLERS)
            before = _skip(tokens, start - 1, -1, _FILLERS)
            j = end
            while j < len(tokens) and tokens[j] in _SIZES:
                j += 1
            if after in _BG_AFTER or before in _BG_BEFORE:
                role = "background"
            elif j in shape_starts:
                role = "colour"
            else:
                role = kind
            if role == "background" and kind == "colour":
                name = _as(name, vocab.BACKGROUNDS, _AS_BACKGROUND, "background", notes)
            elif role == "colour" and kind == "background":
                name = _as(name, vocab.COLOURS, _AS_COLOUR, "shape colour", notes)
            slots.setdefault(role, name)
        else:
            slots.setdefault(kind, name)
    return Scene(slots.get("colour"), slots.get("shape"), slots.get("motion"), slots.get("background"))


def _as(name: str, table: dict[str, tuple[int, int, int]], preferred: dict[str, str], role: str,
        notes: list[str] | None = None) -> str:
    """The entry of ``table`` closest to colour ``name`` (explicit choice, else nearest RGB)."""
    if name in preferred:
        out = preferred[name]
    else:
        rgb = vocab.COLOURS.get(name) or vocab.BACKGROUNDS[name]
        out = min(table, key=lambda k: sum((a - b) ** 2 for a, b in zip(table[k], rgb)))
    log.info("embedded model has no %s %r; using the closest one, %r", role, name, out)
    if notes is not None:
        notes.append(f"no {role} '{name}' in the embedded model's world ({', '.join(table)}): used '{out}'")
    return out


def complete_scene(scene: Scene, seed: int) -> Scene:
    """Fill the empty slots from ``seed`` (deterministic: same scene and seed, same result)."""
    rng = random.Random(f"embedded|{seed}")
    picks = Scene(rng.choice(list(vocab.COLOURS)), rng.choice(vocab.SHAPES),
                  rng.choice(vocab.MOTIONS), rng.choice(list(vocab.BACKGROUNDS)))
    return scene.merged(picks)


def scene_caption(scene: Scene) -> str:
    """The canonical caption of a complete scene, in the world generator's words:
    "a red circle moves to the left across a black background",
    "an orange square stays still on a gray background"."""
    if None in (scene.colour, scene.shape, scene.motion, scene.background):
        raise ValueError(f"scene_caption needs all four slots, got {scene}; call complete_scene first")
    custom = getattr(vocab, "caption", None)  # the world generator's own writer, when it has one
    if callable(custom):
        return custom(scene.colour, scene.shape, scene.motion, scene.background)
    article = "an" if scene.colour[0] in "aeiou" else "a"
    where = "across" if scene.motion in DIRECTIONS else "on"
    motion = vocab.words_for(scene.motion)[0]
    return f"{article} {scene.colour} {scene.shape} {motion} {where} a {scene.background} background"


def embedded_caption(prompt: str, seed: int = 0, hint: str | None = None) -> str:
    """The embedded-model caption for ``prompt``. ``hint`` (e.g. an LLM's rewrite) fills the slots
    the prompt leaves open before the seed does; what the user wrote always wins."""
    scene = parse_scene(prompt)
    if hint:
        scene = scene.merged(parse_scene(hint))
    full = complete_scene(scene, seed)
    if full != scene:
        log.debug("embedded caption: %r parsed as %s, completed as %s", prompt, scene, full)
    return scene_caption(full)


_SLOT_WORDS = {"colour": ("shape colour", vocab.COLOURS), "shape": ("shape", vocab.SHAPES),
               "motion": ("motion", vocab.MOTIONS), "background": ("background", vocab.BACKGROUNDS)}


def embedded_notes(prompt: str, seed: int = 0) -> list[str]:
    """What ``embedded_caption(prompt, seed)`` could not take from the prompt as written: a word
    the world has not got in that role (and the one used instead), and each slot the prompt left
    open (and what the seed chose), one line each; empty when the caption says what was asked."""
    notes: list[str] = []
    scene = parse_scene(prompt, notes)
    full = complete_scene(scene, seed)
    for slot, (role, words) in _SLOT_WORDS.items():
        if getattr(scene, slot) is None:
            notes.append(f"no {role} the embedded model knows ({', '.join(words)}) in the prompt: "
                         f"used '{getattr(full, slot)}' (from the seed)")
    return notes


__all__ = ["Scene", "parse_scene", "complete_scene", "scene_caption", "embedded_caption", "embedded_notes"]
