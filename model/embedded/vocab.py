"""The vocabulary of the embedded model's synthetic world.

Shared by the world generator (captions), the analyser (what it reports), and the prompt
expander (which writes captions for the embedded model in these words). Canonical names are
the dict keys; synonyms are what captions and users may say instead.
"""
from __future__ import annotations

# Object colours, RGB 0..255. Chosen far apart so the analyser can tell them at 64x64.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 190, 60),
    "blue": (40, 80, 230),
    "yellow": (240, 220, 40),
    "purple": (150, 60, 200),
    "orange": (245, 140, 30),
    "white": (245, 245, 245),
    "cyan": (40, 210, 220),
}

# Backgrounds, RGB 0..255.
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "black": (10, 10, 10),
    "gray": (110, 110, 110),
    "navy": (15, 20, 70),
    "beige": (200, 185, 150),
}

SHAPES: tuple[str, ...] = ("circle", "square", "triangle")

# Motions: four directions, still, and size changes.
MOTIONS: tuple[str, ...] = ("left", "right", "up", "down", "still", "grow", "shrink")

SYNONYMS: dict[str, tuple[str, ...]] = {
    "circle": ("circle", "ball", "disc", "dot", "sphere"),
    "square": ("square", "box", "block", "cube", "tile"),
    "triangle": ("triangle", "wedge", "pyramid"),
    "gray": ("gray", "grey"),
    "purple": ("purple", "violet"),
    "cyan": ("cyan", "turquoise"),
    "navy": ("navy", "dark blue"),
    "beige": ("beige", "sand-coloured", "sandy"),
    "left": ("moves to the left", "slides left", "rolls to the left", "drifts left", "travels leftward"),
    "right": ("moves to the right", "slides right", "rolls to the right", "drifts right", "travels rightward"),
    "up": ("moves up", "rises", "floats upward", "climbs", "drifts up"),
    "down": ("moves down", "falls", "sinks", "drops downward", "drifts down"),
    "still": ("stays still", "rests in place", "does not move", "sits motionless"),
    "grow": ("grows", "gets bigger", "expands", "swells"),
    "shrink": ("shrinks", "gets smaller", "contracts", "dwindles"),
}


def words_for(name: str) -> tuple[str, ...]:
    """Every way of saying a canonical name (the name itself first)."""
    return SYNONYMS.get(name, (name,))
