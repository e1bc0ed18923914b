"""The one validation layer of the pack's nodes: every node is a ``SpacetimeNode``, whose declared
inputs are checked before the graph runs (ComfyUI's ``validate_inputs``: a refusal is an HTTP
400 naming the node and the input) and again when it runs (values that came through links).

Per declared type: INT an integer, FLOAT a finite number, BOOLEAN a boolean, each within the
declared min/max; COMBO one of the declared choices; STRING text without NUL characters or lone
surrogates and at most ``MAX_TEXT`` characters. Inputs named in a node's ``FOLDERS`` are file
names that must resolve to a file inside that ComfyUI folder (no ``..``, absolute paths or
links out). Memory that a size would need is checked by ``check_fits`` before anything is
allocated. Every message names the node, the input, the value and what is valid.
"""
from __future__ import annotations

import functools
import inspect
import math
from typing import Any

import folder_paths
import psutil
from comfy_api.latest import io

from .errors import SpacetimeNodeError, node_error
from .files import file_inside

MAX_TEXT = 100_000    # characters of a text input (captions, prompts, names)
NONE = "none"         # the "no file" choice of optional file inputs


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _number_problem(value: Any, kind: str, low: float | None, high: float | None) -> str | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind == "INT" and not isinstance(value, int)):
        return f"expected {'an integer' if kind == 'INT' else 'a number'}, got {type(value).__name__}"
    if not math.isfinite(value):
        return "expected a finite number"
    if (low is not None and value < low) or (high is not None and value > high):
        return f"expected a value from {low} to {high}"
    return None


def text_problem(value: Any) -> str | None:
    """Why ``value`` is not usable text (None when it is)."""
    if not isinstance(value, str):
        return f"expected text, got {type(value).__name__}"
    if "\x00" in value:
        return "text may not contain NUL characters"
    if len(value) > MAX_TEXT:
        return f"text of {len(value):,} characters; at most {MAX_TEXT:,}"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "text holds a lone surrogate (not valid Unicode); send UTF-8 text"
    return None


def _file_problem(folder: str, value: str) -> str | None:
    if value == NONE or file_inside(folder_paths.get_folder_paths(folder)
                                    if folder != "input" else [folder_paths.get_input_directory()], value):
        return None
    where = "input folder" if folder == "input" else f"models/{folder} folder"
    return f"is not a file in ComfyUI's {where}; put the file there and refresh"


def input_problem(node_cls, inp, value: Any) -> str | None:
    """The problem with ``value`` for the declared input ``inp`` of ``node_cls`` (None: fine)."""
    kind = inp.get_io_type()
    if kind in ("INT", "FLOAT"):
        return _number_problem(value, kind, inp.min, inp.max)
    if kind == "BOOLEAN":
        return None if isinstance(value, bool) else f"expected true or false, got {type(value).__name__}"
    if kind not in ("STRING", "COMBO"):
        return None  # MODEL, IMAGE, ...: ComfyUI checks that links carry the right type
    problem = text_problem(value)
    if problem:
        return problem
    folder = getattr(node_cls, "FOLDERS", {}).get(inp.id)
    if folder is not None:
        return _file_problem(folder, value)
    if kind == "COMBO" and value not in inp.options:
        choices = ", ".join(map(str, inp.options[:12])) + (", ..." if len(inp.options) > 12 else "")
        return f"not one of the choices: {choices}"
    return None


def first_problem(node_cls, values: dict[str, Any], running: bool = False) -> SpacetimeNodeError | None:
    """The first declared input of ``node_cls`` whose value in ``values`` is not valid. Before the
    run a None is a link not evaluated yet; ``running``, a required input may not be None."""
    for inp in node_cls.define_schema().inputs:  # (GET_SCHEMA writes to the class: not on ComfyUI's locked clones)
        value = values.get(inp.id)
        if value is None and (inp.optional or not running or inp.id not in values):
            continue
        problem = "a value is required" if value is None else input_problem(node_cls, inp, value)
        if problem:
            return node_error(node_cls, inp.id, f"{_show(values[inp.id])}: {problem}")
    return None


def check_fits(node_cls, inputs: str, need: float, what: str, allow: bool = False) -> None:
    """Refuse before allocating ``need`` bytes (``what``) when they exceed the free RAM, naming
    the inputs to lower and the ``allow_large`` override."""
    free = psutil.virtual_memory().available
    if need > free and not allow:
        raise node_error(node_cls, inputs, f"{what} needs about {need / 2**30:.1f} GiB but {free / 2**30:.1f} GiB "
                         "of memory is free: lower it (or set allow_large if you know it fits)")


def allow_large_input() -> io.Boolean.Input:
    return io.Boolean.Input("allow_large", default=False, optional=True,
                            tooltip="run even when the memory estimate exceeds the free memory")


class SpacetimeNode(io.ComfyNode):
    """Base of every node of the pack. ``FOLDERS`` maps file-name inputs to their ComfyUI folder;
    ``check_inputs`` may add a node's own checks of widget values (return a message or None)."""

    FOLDERS: dict[str, str] = {}

    @classmethod
    def validate_inputs(cls, **values) -> bool | str:
        problem = first_problem(cls, values)
        message = str(problem) if problem else cls.check_inputs(**values)
        return True if message is None else message

    @classmethod
    def check_inputs(cls, **values) -> str | None:
        return None

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        execute = cls.__dict__.get("execute")
        # values that came through links are checked too; ComfyUI's clones of a class copy the
        # wrapped method (and may be locked against changes)
        if isinstance(execute, classmethod) and not hasattr(execute.__func__, "__wrapped__"):
            func = execute.__func__
            signature = inspect.signature(func)

            @functools.wraps(func)
            def checked(node_cls, *args, **kwargs):
                problem = first_problem(node_cls, signature.bind(node_cls, *args, **kwargs).arguments, running=True)
                if problem:
                    raise problem
                optional = {inp.id for inp in node_cls.define_schema().inputs if inp.optional}
                kwargs = {k: v for k, v in kwargs.items() if v is not None or k not in optional}  # null: the default
                return func(node_cls, *args, **kwargs)

            cls.execute = classmethod(checked)
