"""Flatten a UI workflow's graph: subgraph instances expanded, every input's link source found.

Part of the UI -> API conversion (``ui_to_api.py``). Node ids inside a subgraph instance
become ``"<instance id>:<inner id>"`` (nested: ``"a:b:c"``), as ComfyUI's frontend numbers
them. A link from a subgraph's input node (id -10) continues at the instance's input in the
outer graph, or at the widget promoted to the instance; a link into the output node (id -20)
is what the instance's output carries.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

MODE_MUTED, MODE_BYPASS = 2, 4
SUBGRAPH_INPUT_NODE, SUBGRAPH_OUTPUT_NODE = -10, -20


class ConversionError(ValueError):
    """The UI workflow cannot be turned into an API graph; the message says why and what to do."""


@dataclass
class ConversionReport:
    """What the conversion did besides the plain mapping, for logs and tests."""
    subgraphs: list[str] = field(default_factory=list)       # names of flattened subgraphs
    muted: list[str] = field(default_factory=list)           # node ids left out (mode 2)
    bypassed: list[str] = field(default_factory=list)        # node ids passed through (mode 4)
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class NodeRef:
    node: str   # flat node id
    slot: int


@dataclass(frozen=True)
class ValueRef:
    value: Any


Ref = NodeRef | ValueRef | None


@dataclass
class FlatNode:
    id: str
    type: str
    mode: int
    title: str | None
    widgets_values: list | dict
    inputs: list[dict]                  # the UI's input slots (name, type, widget)
    input_refs: list[Ref]               # where each input slot's link comes from
    outputs: list[dict]
    overrides: dict[str, Any] = field(default_factory=dict)  # promoted widget values


def _links(raw: list) -> dict[int, tuple[int, int, int, int, str]]:
    """link id -> (origin id, origin slot, target id, target slot, type), either storage form."""
    table = {}
    for link in raw or []:
        if isinstance(link, dict):
            table[link["id"]] = (link["origin_id"], link["origin_slot"], link["target_id"],
                                 link["target_slot"], link.get("type"))
        elif link:
            table[link[0]] = (link[1], link[2], link[3], link[4], link[5] if len(link) > 5 else None)
    return table


class Flattener:
    """Collects the flat nodes of a workflow: ``Flattener(wf, report).run()``."""

    def __init__(self, workflow: dict, report: ConversionReport):
        self.defs = {sg["id"]: sg for sg in (workflow.get("definitions") or {}).get("subgraphs") or []}
        self.report = report
        self.nodes: dict[str, FlatNode] = {}

    def level(self, graph: dict, prefix: str, parent_inputs: list[Ref],
              overrides: dict[str, dict[str, Any]], depth: int = 0) -> list[Ref]:
        """Flatten one graph level; returns the refs feeding its subgraph outputs (if any)."""
        if depth > 32:
            raise ConversionError("subgraphs nested more than 32 deep (a subgraph containing itself?)")
        links = _links(graph.get("links"))
        by_id = {n["id"]: n for n in graph.get("nodes", [])}
        instance_outputs: dict[int, list[Ref]] = {}

        def ref_of(origin_id: int, origin_slot: int) -> Ref:
            if origin_id == SUBGRAPH_INPUT_NODE:
                return parent_inputs[origin_slot] if origin_slot < len(parent_inputs) else None
            node = by_id.get(origin_id)
            if node is None:
                return None
            if node["type"] in self.defs:
                if origin_id not in instance_outputs:
                    instance_outputs[origin_id] = self.instance(node, prefix, ref_of, links, depth)
                outs = instance_outputs[origin_id]
                return outs[origin_slot] if origin_slot < len(outs) else None
            return NodeRef(f"{prefix}{origin_id}", origin_slot)

        def input_refs(node: dict) -> list[Ref]:
            refs = []
            for slot in node.get("inputs") or []:
                link = links.get(slot.get("link")) if slot.get("link") is not None else None
                refs.append(ref_of(link[0], link[1]) if link else None)
            return refs

        for node in graph.get("nodes", []):
            if node["type"] in self.defs:
                if node["id"] not in instance_outputs:
                    instance_outputs[node["id"]] = self.instance(node, prefix, ref_of, links, depth)
                continue
            fid = f"{prefix}{node['id']}"
            self.nodes[fid] = FlatNode(
                id=fid, type=node["type"], mode=node.get("mode", 0), title=node.get("title"),
                widgets_values=node.get("widgets_values") or [], inputs=node.get("inputs") or [],
                input_refs=input_refs(node), outputs=node.get("outputs") or [],
                overrides=overrides.get(str(node["id"]), {}))

        outputs: list[Ref] = []
        for out in graph.get("outputs") or []:
            ref = None
            for link_id in out.get("linkIds") or []:
                link = links.get(link_id)
                if link and link[2] == SUBGRAPH_OUTPUT_NODE:
                    ref = ref_of(link[0], link[1])
            outputs.append(ref)
        return outputs

    def instance(self, node: dict, prefix: str, ref_of: Callable[[int, int], "Ref"],
                 links: dict, depth: int) -> list[Ref]:
        """Flatten one subgraph instance; returns the refs of its outputs in the outer graph."""
        sg = self.defs[node["type"]]
        fid = f"{prefix}{node['id']}"
        sg_inputs = sg.get("inputs") or []
        outer: dict[str, Ref] = {}
        for slot in node.get("inputs") or []:
            link = links.get(slot.get("link")) if slot.get("link") is not None else None
            if link:
                outer[slot["name"]] = ref_of(link[0], link[1])
        mode = node.get("mode", 0)
        if mode == MODE_MUTED:
            self.report.muted.append(fid)
            return [None] * len(sg.get("outputs") or [])
        if mode == MODE_BYPASS:
            self.report.bypassed.append(fid)
            by_type = [(i["type"], outer.get(i["name"])) for i in sg_inputs]
            return [next((r for t, r in by_type if t == o.get("type") and r is not None), None)
                    for o in sg.get("outputs") or []]
        # Widgets promoted to the instance: to a subgraph input ("-1") or to an inner widget.
        values = node.get("widgets_values") or []
        promoted: dict[str, Any] = {}
        inner: dict[str, dict[str, Any]] = {}
        proxy = (node.get("properties") or {}).get("proxyWidgets")
        if proxy:
            for (target, widget), value in zip(proxy, values):
                if str(target) == "-1":
                    promoted[widget] = value
                else:
                    inner.setdefault(str(target), {})[widget] = value
        else:
            widget_inputs = [s for s in node.get("inputs") or [] if s.get("widget")]
            for slot, value in zip(widget_inputs, values):
                promoted[slot["name"]] = value
        parent_inputs: list[Ref] = []
        for i in sg_inputs:
            if i["name"] in outer and outer[i["name"]] is not None:
                parent_inputs.append(outer[i["name"]])
            elif i["name"] in promoted:
                parent_inputs.append(ValueRef(promoted[i["name"]]))
            else:
                parent_inputs.append(None)
        self.report.subgraphs.append(f"{sg.get('name', sg['id'])} (node {fid})")
        return self.level(sg, f"{fid}:", parent_inputs, inner, depth + 1)

    def run(self, workflow: dict) -> dict[str, FlatNode]:
        self.level(workflow, "", [], {})
        return self.nodes
