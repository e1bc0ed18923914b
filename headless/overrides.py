"""``--set NODE.INPUT=VALUE`` and ``--seed N`` applied to an API-format graph.

NODE is a node id (``6``, or ``116:95`` inside a flattened subgraph), else a node title
(``_meta.title``; the UI title for converted workflows), else a class type, matched exactly
and then case-insensitively; a name that matches several nodes is refused with their ids.
VALUE is typed by the input's definition in ``/object_info`` (INT, FLOAT, BOOLEAN, STRING,
combo); without it, JSON is tried and the raw text kept otherwise.
"""
from __future__ import annotations

import json
from typing import Any

SEED_INPUTS = ("seed", "noise_seed")


class OverrideError(ValueError):
    """A ``--set``/``--seed`` that cannot be applied; the message lists the valid choices."""


def _find_nodes(graph: dict, target: str) -> list[str]:
    if target in graph:
        return [target]
    for key in (lambda n: (n.get("_meta") or {}).get("title"), lambda n: n.get("class_type")):
        for fold in (lambda s: s, lambda s: s.lower() if isinstance(s, str) else s):
            hits = [i for i, n in graph.items() if fold(key(n)) == fold(target)]
            if hits:
                return hits
    return []


def _spec(object_info: dict | None, class_type: str, name: str) -> list | None:
    info = (object_info or {}).get(class_type)
    if info is None:
        return None
    for section in ("required", "optional"):
        spec = (info.get("input") or {}).get(section) or {}
        if name in spec:
            return spec[name]
    return None


def _input_names(object_info: dict | None, node: dict) -> list[str]:
    info = (object_info or {}).get(node.get("class_type")) or {}
    names = [n for s in ("required", "optional") for n in ((info.get("input") or {}).get(s) or {})]
    return names or sorted(node.get("inputs") or {})


def parse_value(text: str, spec: list | None) -> Any:
    """``text`` as the type the input expects."""
    kind = spec[0] if spec else None
    try:
        if kind == "INT":
            return int(text)
        if kind == "FLOAT":
            return float(text)
    except ValueError:
        raise OverrideError(f"{text!r} is not a{'n integer' if kind == 'INT' else ' number'}")
    if kind == "BOOLEAN":
        low = text.strip().lower()
        if low not in ("true", "false", "1", "0", "yes", "no"):
            raise OverrideError(f"{text!r} is not a boolean (true/false)")
        return low in ("true", "1", "yes")
    if kind == "STRING":
        return text
    if isinstance(kind, list) or kind == "COMBO":
        options = kind if isinstance(kind, list) else (spec[1] or {}).get("options", [])
        for o in options:
            if str(o) == text:
                return o
        return text  # the server's validation names the valid options
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def apply_overrides(graph: dict, sets: list[str], object_info: dict | None = None) -> None:
    """Apply each ``NODE.INPUT=VALUE`` in place; raises ``OverrideError`` naming the problem."""
    for item in sets:
        key, sep, text = item.partition("=")
        target, dot, name = key.rpartition(".")
        if not sep or not dot or not target or not name:
            raise OverrideError(f"--set {item!r}: expected NODE.INPUT=VALUE, e.g. "
                                "--set \"Prompt.text=a red fox\" or --set 6.seed=3")
        ids = _find_nodes(graph, target)
        if not ids:
            listing = ", ".join(f"{i} ({(n.get('_meta') or {}).get('title') or n['class_type']})"
                                for i, n in graph.items())
            raise OverrideError(f"--set {item!r}: no node with id, title or type {target!r}; "
                                f"nodes: {listing}")
        if len(ids) > 1:
            raise OverrideError(f"--set {item!r}: {target!r} matches nodes {', '.join(ids)}; "
                                "use one node id")
        node = graph[ids[0]]
        spec = _spec(object_info, node["class_type"], name)
        known = name in (node.get("inputs") or {}) or spec is not None
        if not known:
            raise OverrideError(f"--set {item!r}: node {ids[0]} ({node['class_type']}) has no input "
                                f"{name!r}; its inputs: {', '.join(_input_names(object_info, node))}")
        node.setdefault("inputs", {})[name] = parse_value(text, spec)


def set_seed(graph: dict, seed: int) -> int:
    """Set every ``seed``/``noise_seed`` widget (not links) to ``seed``; returns how many."""
    count = 0
    for node in graph.values():
        inputs = node.get("inputs") or {}
        for name in SEED_INPUTS:
            if name in inputs and not isinstance(inputs[name], list):
                inputs[name] = seed
                count += 1
    return count
