"""Convert a workflow saved by ComfyUI's web UI into the API format that ``POST /prompt`` takes.

A UI workflow (``{"nodes": [...], "links": [...], "definitions": {"subgraphs": [...]}}``) stores
each node's widget values as a positional list, links as ``[id, from, from_slot, to, to_slot,
type]`` and keeps editor-only nodes (Reroute, PrimitiveNode, notes). The API format is a flat
``{node_id: {"class_type", "inputs": {name: value | [from_id, slot]}}}``. The web frontend does
this in ``graphToPrompt`` (ComfyUI_frontend, ``src/utils/executionUtil.ts``); this module
re-implements the same rules from the server's ``/object_info`` alone, so that a headless run
needs no browser:

* widget names come from each class's input definitions (required, then optional, in
  ``input_order``); an ``INT`` with ``control_after_generate`` is followed by one extra stored
  value (``"fixed"``/``"randomize"``...), an input with ``image_upload``/``video_upload`` by the
  upload button's value; neither is sent to the server;
* an input that has a link wins over the widget of the same name ("converted widget");
* Reroute nodes are followed to their source; a PrimitiveNode's value replaces the widget it
  feeds;
* muted nodes (mode 2) are left out, and so are links from them; bypassed nodes (mode 4) pass
  an input of the same type (the same slot index first) through to the consumer;
* text widgets with ``dynamicPrompts`` get their ``{a|b}`` choices made and comments removed
  (``dynamic_prompts.py``);
* subgraphs (``definitions.subgraphs``, nodes whose ``type`` is a subgraph id) are flattened;
  inner nodes get the ids ``"<instance id>:<inner id>"`` as in the frontend; widgets promoted to
  the instance (``properties.proxyWidgets`` or widget-inputs of the instance) feed the inner
  nodes.

Legacy "group nodes" (``extra.groupNodes``) are refused with a message saying what to do.
"""
from __future__ import annotations

import logging
import random
from typing import Any

from . import dynamic_prompts

from .ui_graph import (MODE_BYPASS, MODE_MUTED, ConversionError, ConversionReport,  # noqa: F401
                       FlatNode, Flattener, NodeRef, Ref, ValueRef)

log = logging.getLogger("spacetime.ui_to_api")

# Editor-only node types: never sent to the server.
VIRTUAL_TYPES = {"Reroute", "PrimitiveNode", "Note", "MarkdownNote"}
# Input types the frontend draws as a widget (and so stores in widgets_values).
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO", "WEBCAM", "LOAD_3D",
                "LOAD_3D_ANIMATION", "PREVIEW_3D", "PREVIEW_3D_ANIMATION"}
UPLOAD_FLAGS = ("image_upload", "video_upload", "audio_upload", "animated_image_upload")
EXTRA = None  # a stored widget value the server never sees (seed control, upload button)


class MissingNodeTypes(ConversionError):
    """The workflow uses node types this server does not have."""

    def __init__(self, types: dict[str, list[str]]):
        self.types = types
        listing = ", ".join(f"{t} (node {', '.join(ids)})" for t, ids in sorted(types.items()))
        super().__init__(f"this ComfyUI has no node type {listing}: install the custom node "
                         "pack that provides it, or remove/mute those nodes")


def is_ui_workflow(data: Any) -> bool:
    """True for the web UI's save format (as opposed to the API format)."""
    return isinstance(data, dict) and isinstance(data.get("nodes"), list) and "links" in data


def widget_names(class_info: dict) -> list[str | None]:
    """The widget slots of a node class in ``widgets_values`` order; ``None`` marks a stored
    value that is not an input (seed control mode, upload button)."""
    spec = class_info.get("input", {})
    order = class_info.get("input_order") or {}
    names: list[str | None] = []
    for section in ("required", "optional"):
        defs = spec.get(section) or {}
        for name in order.get(section) or list(defs):
            d = defs.get(name)
            if not d:
                continue
            kind, opts = d[0], (d[1] if len(d) > 1 and isinstance(d[1], dict) else {})
            if not (isinstance(kind, list) or kind in WIDGET_TYPES) or opts.get("forceInput"):
                continue
            names.append(name)
            # The seed control (and, for a combo, its filter text) follow the widget; an INT
            # named seed/noise_seed gets one unless the definition says otherwise.
            control = opts.get("control_after_generate")
            if control is None:
                control = kind == "INT" and name in ("seed", "noise_seed")
            if control:
                names.append(EXTRA)
                if isinstance(kind, list) or kind == "COMBO":
                    names.append(EXTRA)
            if any(opts.get(flag) for flag in UPLOAD_FLAGS):
                names.append(EXTRA)
    return names


# --------------------------------------------------------------------------- API graph

def _types_match(a: Any, b: Any) -> bool:
    """Whether two slot types connect: equal (ignoring case), a wildcard, or comma-separated
    lists that share a type (LiteGraph's ``isValidConnection``)."""
    a = "" if a in (None, "*", 0) else str(a).lower()
    b = "" if b in (None, "*", 0) else str(b).lower()
    if not a or not b or a == b:
        return True
    return bool(set(a.split(",")) & set(b.split(",")))


class _Resolver:
    def __init__(self, nodes: dict[str, FlatNode], report: ConversionReport):
        self.nodes = nodes
        self.report = report

    def resolve(self, ref: Ref, want: Any) -> Ref:
        """Follow Reroutes, primitives and bypassed nodes to a real source, a value or nothing.

        ``want`` is the type of the consuming input; it decides which input a bypassed node
        passes through. A muted source stays a reference and is dropped with the other links
        to nodes that are not in the graph, as the frontend does.
        """
        for _ in range(10_000):
            if ref is None or isinstance(ref, ValueRef):
                return ref
            node = self.nodes.get(ref.node)
            if node is None:
                return None
            if node.type == "Reroute":
                ref = node.input_refs[0] if node.input_refs else None
                continue
            if node.type == "PrimitiveNode":
                wv = node.widgets_values
                return ValueRef(wv[0] if isinstance(wv, list) and wv else None)
            if node.mode == MODE_BYPASS:
                i = self._bypass_slot(node, ref.slot, want)
                ref = node.input_refs[i] if i is not None else None
                continue
            return ref
        raise ConversionError("a cycle of Reroute/bypassed nodes: check the workflow's links")

    @staticmethod
    def _bypass_slot(node: FlatNode, slot: int, want: Any) -> int | None:
        """Which input a bypassed node hands on for output ``slot``: the input at the same
        index if its type fits both the output and the consumer, else the first input of
        exactly the consumer's type, else the first that fits both."""
        types = [i.get("type") for i in node.inputs]
        if not types:
            return None
        if want in (None, "", "*"):
            return slot if slot < len(types) else 0
        out_type = node.outputs[slot].get("type") if slot < len(node.outputs) else want
        if slot < len(types) and _types_match(types[slot], out_type) and _types_match(types[slot], want):
            return slot
        if want in types:
            return types.index(want)
        return next((i for i, t in enumerate(types)
                     if _types_match(t, out_type) and _types_match(t, want)), None)


def _widget_values(node: FlatNode, info: dict, report: ConversionReport) -> dict[str, Any]:
    names = widget_names(info)
    values = node.widgets_values
    if isinstance(values, dict):  # some custom nodes store widgets by name
        out = {n: values[n] for n in names if n is not None and n in values}
    else:
        stored = len(values)
        if stored != len(names):
            # Frontends before control_after_generate was explicit did not store the control
            # value for every INT; retry without the extras before warning.
            plain = [n for n in names if n is not EXTRA]
            if stored == len(plain):
                names = plain
            elif stored > len(names):
                # Frontend-only display widgets (a status text, a 3D preview) are appended
                # after the inputs' widgets; they carry nothing for the server.
                log.debug("node %s (%s): %d extra trailing widget values ignored",
                          node.id, node.type, stored - len(names))
            elif stored:
                report.warnings.append(
                    f"node {node.id} ({node.type}): {stored} stored widget values for "
                    f"{len(names)} widget slots {names}; mapped in order")
        out = {n: v for n, v in zip(names, values) if n is not None}
    bad = [n for n, v in out.items() if not _fits(_input_spec(info, n), v)]
    if bad:
        report.warnings.append(
            f"node {node.id} ({node.type}): stored widget values do not fit the inputs {bad} of "
            "this server's definition (saved with another version of the node?); check them")
    out.update(node.overrides)
    return {k: _wrap(v) for k, v in out.items()}


def _wrap(value: Any) -> Any:
    """A list-valued widget is sent as ``{"__value__": [...]}``: a bare list means a link."""
    return {"__value__": value} if isinstance(value, list) else value


def _input_spec(info: dict, name: str) -> list:
    spec = info.get("input", {})
    return (spec.get("required") or {}).get(name) or (spec.get("optional") or {}).get(name) or []


def _fits(spec: list, value: Any) -> bool:
    """Whether a stored value has the widget's type (combo membership is the server's check)."""
    kind = spec[0] if spec else None
    opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    if kind in ("INT", "FLOAT"):
        number = (int,) if kind == "INT" else (int, float)
        return (isinstance(value, number) and not isinstance(value, bool)
                and opts.get("min", value) <= value <= opts.get("max", value))
    if kind == "BOOLEAN":
        return isinstance(value, bool)
    if kind == "STRING":
        return isinstance(value, str)
    return True


def convert(workflow: dict, object_info: dict, report: ConversionReport | None = None,
            rng: random.Random | None = None) -> dict:
    """The API-format graph of a UI workflow, using the server's ``/object_info``.

    ``rng`` picks the options of dynamic prompts (``{a|b}`` in text widgets that allow them);
    unseeded by default, as in the UI.

    Raises ``MissingNodeTypes`` when active nodes have types the server lacks, and
    ``ConversionError`` for legacy group nodes or a malformed file.
    """
    report = report if report is not None else ConversionReport()
    if not is_ui_workflow(workflow):
        raise ConversionError("not a UI-format workflow (no 'nodes'/'links' lists)")
    groups = (workflow.get("extra") or {}).get("groupNodes")
    if groups:
        raise ConversionError(
            f"the workflow uses legacy group nodes ({', '.join(groups)}): in ComfyUI, right-click "
            "each group node > 'Convert to nodes' (or convert it to a subgraph) and save again")
    nodes = Flattener(workflow, report).run(workflow)
    resolver = _Resolver(nodes, report)

    missing: dict[str, list[str]] = {}
    prompt: dict[str, dict] = {}
    for node in nodes.values():
        if node.type in VIRTUAL_TYPES:
            continue
        if node.mode == MODE_MUTED:
            report.muted.append(node.id)
            continue
        if node.mode == MODE_BYPASS:
            report.bypassed.append(node.id)
            continue
        info = object_info.get(node.type)
        if info is None:
            missing.setdefault(node.type, []).append(node.id)
            continue
        inputs = _widget_values(node, info, report)
        for slot, ref in zip(node.inputs, node.input_refs):
            name = (slot.get("widget") or {}).get("name") or slot.get("name")
            src = resolver.resolve(ref, slot.get("type"))
            if isinstance(src, ValueRef):
                inputs[name] = _wrap(src.value)
            elif isinstance(src, NodeRef):
                inputs[name] = [src.node, src.slot]
        for name, value in inputs.items():
            spec = _input_spec(info, name)
            if isinstance(value, str) and len(spec) > 1 and (spec[1] or {}).get("dynamicPrompts"):
                inputs[name] = dynamic_prompts.expand(value, rng or random.Random())
        prompt[node.id] = {"inputs": inputs, "class_type": node.type,
                           "_meta": {"title": node.title or info.get("display_name") or node.type}}
    if missing:
        raise MissingNodeTypes(missing)
    # Links into nodes that were left out (an unknown virtual type, say) are dropped, as the
    # frontend does, so the server reports a missing input rather than a dangling reference.
    for api_node in prompt.values():
        for name, value in list(api_node["inputs"].items()):
            if _is_link(value) and value[0] not in prompt:
                del api_node["inputs"][name]
    for w in report.warnings:
        log.warning(w)
    return prompt


def _is_link(value: Any) -> bool:
    return (isinstance(value, list) and len(value) == 2 and isinstance(value[0], str)
            and isinstance(value[1], int))
