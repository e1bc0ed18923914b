"""UI -> API conversion: the rules on small hand-made graphs, the pack's own UI/API twins, and
the ComfyUI workflow templates (a corpus nobody here wrote) validated by the real server."""
from __future__ import annotations

import collections
import json
from pathlib import Path

import pytest

from spacetime_video.headless import ui_to_api as U

from fifo_gate import FifoGate

ROOT = Path(__file__).resolve().parents[1]

# A tiny /object_info: enough input definitions for the rule tests.
INFO = {
    "Gen": {"input": {"required": {"seed": ["INT", {"control_after_generate": True}],
                                   "steps": ["INT", {"min": 1, "max": 100}],
                                   "model": ["MODEL", {}]},
                      "optional": {"note": ["STRING", {"multiline": True}]}},
            "input_order": {"required": ["seed", "steps", "model"], "optional": ["note"]},
            "output": ["IMAGE"]},
    "Load": {"input": {"required": {"name": [["a.safetensors", "b.safetensors"], {}]}},
             "output": ["MODEL"]},
    "Pic": {"input": {"required": {"image": [["x.png"], {"image_upload": True}]}}, "output": ["IMAGE", "MASK"]},
    "Filter": {"input": {"required": {"mask": ["MASK", {}], "image": ["IMAGE", {}],
                                      "amount": ["FLOAT", {}]}},
               "input_order": {"required": ["mask", "image", "amount"]}, "output": ["IMAGE"]},
    "Sink": {"input": {"required": {"images": ["IMAGE", {}],
                                    "value": ["INT", {"forceInput": True}]}}, "output": []},
}


def node(id_, type_, widgets=(), inputs=(), outputs=(), mode=0, title=None, **extra):
    n = {"id": id_, "type": type_, "mode": mode, "widgets_values": list(widgets),
         "inputs": [dict(i) for i in inputs], "outputs": [dict(o) for o in outputs], **extra}
    if title:
        n["title"] = title
    return n


def inp(name, type_, link=None, widget=None):
    d = {"name": name, "type": type_, "link": link}
    if widget:
        d["widget"] = {"name": widget}
    return d


def test_widgets_links_control_values_and_upload_extras():
    wf = {"nodes": [node(1, "Load", ["b.safetensors"], outputs=[{"type": "MODEL"}]),
                    node(2, "Gen", [7, "randomize", 20, "hi"], [inp("model", "MODEL", 1)], title="Main"),
                    node(3, "Pic", ["x.png", "image"])],
          "links": [[1, 1, 0, 2, 2, "MODEL"]]}
    api = U.convert(wf, INFO)
    assert api["2"]["inputs"] == {"seed": 7, "steps": 20, "note": "hi", "model": ["1", 0]}
    assert api["2"]["_meta"]["title"] == "Main"
    assert api["1"]["inputs"] == {"name": "b.safetensors"}
    assert api["3"]["inputs"] == {"image": "x.png"}  # the upload button's value is not sent


def test_converted_widget_primitive_and_reroute():
    wf = {"nodes": [node(1, "Load", ["a.safetensors"]),
                    node(5, "Reroute", inputs=[inp("", "*", 1)], outputs=[{"type": "MODEL"}]),
                    node(6, "PrimitiveNode", [42, "fixed"], outputs=[{"type": "INT", "widget": {"name": "seed"}}]),
                    node(2, "Gen", [7, "fixed", 20, ""], [inp("model", "MODEL", 2),
                                                         inp("seed", "INT", 3, widget="seed")])],
          "links": [[1, 1, 0, 5, 0, "MODEL"], [2, 5, 0, 2, 0, "MODEL"], [3, 6, 0, 2, 1, "INT"]]}
    api = U.convert(wf, INFO)
    assert set(api) == {"1", "2"}  # Reroute and PrimitiveNode are editor-only
    assert api["2"]["inputs"]["model"] == ["1", 0]
    assert api["2"]["inputs"]["seed"] == 42


def test_muted_and_bypassed_nodes():
    # Pic(IMAGE, MASK) -> Filter(bypassed) -> Sink; the bypass must pick the IMAGE input even
    # though the MASK input sits at the output's slot index.
    wf = {"nodes": [node(1, "Pic", ["x.png", "image"], outputs=[{"type": "IMAGE"}, {"type": "MASK"}]),
                    node(2, "Filter", [0.5], [inp("mask", "MASK", 2), inp("image", "IMAGE", 1)],
                         outputs=[{"type": "IMAGE"}], mode=U.MODE_BYPASS),
                    node(3, "Sink", [], [inp("images", "IMAGE", 3), inp("value", "INT", 4)]),
                    node(4, "Gen", [1, "fixed", 2, ""], outputs=[{"type": "INT"}], mode=U.MODE_MUTED)],
          "links": [[1, 1, 0, 2, 1, "IMAGE"], [2, 1, 1, 2, 0, "MASK"], [3, 2, 0, 3, 0, "IMAGE"],
                    [4, 4, 0, 3, 1, "INT"]]}
    report = U.ConversionReport()
    api = U.convert(wf, INFO, report)
    assert set(api) == {"1", "3"}
    assert api["3"]["inputs"] == {"images": ["1", 0]}  # the link from the muted node is gone
    assert report.bypassed == ["2"] and report.muted == ["4"]


def _subgraph_workflow(proxy: bool) -> dict:
    sg = {"id": "sg-1", "name": "Inner",
          "inputs": [{"name": "model", "type": "MODEL", "linkIds": [10]},
                     {"name": "steps", "type": "INT", "linkIds": [11]}],
          "outputs": [{"name": "IMAGE", "type": "IMAGE", "linkIds": [12]}],
          "nodes": [node(1, "Gen", [5, "fixed", 3, "inner"], [inp("model", "MODEL", 10),
                                                             inp("steps", "INT", 11, widget="steps")],
                         outputs=[{"type": "IMAGE"}])],
          "links": [{"id": 10, "origin_id": -10, "origin_slot": 0, "target_id": 1, "target_slot": 0, "type": "MODEL"},
                    {"id": 11, "origin_id": -10, "origin_slot": 1, "target_id": 1, "target_slot": 1, "type": "INT"},
                    {"id": 12, "origin_id": 1, "origin_slot": 0, "target_id": -20, "target_slot": 0, "type": "IMAGE"}]}
    if proxy:
        inst = node(7, "sg-1", [33, 99], [inp("model", "MODEL", 1)], outputs=[{"type": "IMAGE"}],
                    properties={"proxyWidgets": [["-1", "steps"], ["1", "seed"]]})
    else:
        inst = node(7, "sg-1", [33], [inp("model", "MODEL", 1), inp("steps", "INT", None, widget="steps")],
                    outputs=[{"type": "IMAGE"}])
    return {"nodes": [node(1, "Load", ["a.safetensors"]), inst,
                      node(9, "Sink", [], [inp("images", "IMAGE", 2)])],
            "links": [[1, 1, 0, 7, 0, "MODEL"], [2, 7, 0, 9, 0, "IMAGE"]],
            "definitions": {"subgraphs": [sg]}}


@pytest.mark.parametrize("proxy", [True, False])
def test_subgraph_is_flattened_with_promoted_widgets(proxy):
    report = U.ConversionReport()
    api = U.convert(_subgraph_workflow(proxy), INFO, report)
    assert set(api) == {"1", "7:1", "9"}
    inner = api["7:1"]["inputs"]
    assert inner["model"] == ["1", 0] and inner["steps"] == 33
    assert inner["seed"] == (99 if proxy else 5)
    assert api["9"]["inputs"]["images"] == ["7:1", 0]
    assert report.subgraphs == ["Inner (node 7)"]


def test_missing_types_and_group_nodes_are_refused_clearly():
    with pytest.raises(U.MissingNodeTypes, match=r"NoSuchNode \(node 3\)"):
        U.convert({"nodes": [node(3, "NoSuchNode", [1])], "links": []}, INFO)
    # muted unknown nodes do not matter
    assert U.convert({"nodes": [node(3, "NoSuchNode", [1], mode=2)], "links": []}, INFO) == {}
    with pytest.raises(U.ConversionError, match="group nodes"):
        U.convert({"nodes": [], "links": [], "extra": {"groupNodes": {"G": {}}}}, INFO)


def test_seed_control_value_follows_the_definition():
    info = {"A": {"input": {"required": {"seed": ["INT", {}], "n": ["INT", {}]}}},      # legacy name rule
            "B": {"input": {"required": {"seed": ["INT", {"control_after_generate": False}],
                                         "n": ["INT", {}]}}},
            "C": {"input": {"required": {"pick": [["x", "y"], {"control_after_generate": True}],
                                         "n": ["INT", {}]}}}}                            # + filter text
    wf = {"nodes": [node(1, "A", [5, "fixed", 2]), node(2, "B", [5, 2]), node(3, "C", ["y", "fixed", "", 2])],
          "links": []}
    api = U.convert(wf, info)
    assert [api[i]["inputs"] for i in "123"] == [{"seed": 5, "n": 2}, {"seed": 5, "n": 2}, {"pick": "y", "n": 2}]


def test_list_widget_values_are_wrapped_and_muted_sources_drop_the_input():
    info = {"L": {"input": {"required": {"points": ["STRING", {}], "n": ["INT", {}]}}, "output": ["INT"]},
            "M": {"input": {"required": {}}, "output": ["INT"]}}
    wf = {"nodes": [node(1, "L", [[1, 2], 3], [inp("n", "INT", 1, widget="n")]),
                    node(2, "M", [], outputs=[{"type": "INT"}], mode=U.MODE_MUTED)],
          "links": [[1, 2, 0, 1, 0, "INT"]]}
    # The frontend sends the link, then removes links to nodes it left out: the widget value
    # of a converted widget fed by a muted node is not sent either.
    assert U.convert(wf, info)["1"]["inputs"] == {"points": {"__value__": [1, 2]}}


def test_bypass_passes_the_same_slot_to_a_wildcard_consumer():
    info = {"Two": {"input": {"required": {"a": ["IMAGE", {}], "b": ["IMAGE", {}]}}, "output": ["IMAGE", "IMAGE"]},
            "Src": {"input": {"required": {}}, "output": ["IMAGE"]},
            "Any": {"input": {"required": {"x": ["*", {}]}}, "output": []}}
    wf = {"nodes": [node(1, "Src"), node(2, "Src"),
                    node(3, "Two", [], [inp("a", "IMAGE", 1), inp("b", "IMAGE", 2)],
                         outputs=[{"type": "IMAGE"}, {"type": "IMAGE"}], mode=U.MODE_BYPASS),
                    node(4, "Any", [], [inp("x", "*", 3)])],
          "links": [[1, 1, 0, 3, 0, "IMAGE"], [2, 2, 0, 3, 1, "IMAGE"], [3, 3, 1, 4, 0, "IMAGE"]]}
    assert U.convert(wf, info)["4"]["inputs"] == {"x": ["2", 0]}


def test_dynamic_prompts_are_expanded_reproducibly_where_allowed():
    import random

    from spacetime_video.headless.dynamic_prompts import expand

    text = "a {red|{dark|light} blue} fox /* note */ \\{not a group\\} // tail"
    outs = {expand(text, random.Random(s)) for s in range(40)}
    assert outs == {"a red fox  {not a group} ", "a dark blue fox  {not a group} ",
                    "a light blue fox  {not a group} "}
    assert expand(text, random.Random(3)) == expand(text, random.Random(3))
    info = {"Enc": {"input": {"required": {"text": ["STRING", {"dynamicPrompts": True}],
                                           "raw": ["STRING", {}]}}}}
    wf = {"nodes": [node(1, "Enc", ["{cat|cat}", "{dog|dog}"])], "links": []}
    assert U.convert(wf, info, rng=random.Random(0))["1"]["inputs"] == {"text": "cat", "raw": "{dog|dog}"}


def test_stale_widget_values_are_reported():
    report = U.ConversionReport()
    U.convert({"nodes": [node(2, "Gen", [7, "fixed", "randomize", ""])], "links": []}, INFO, report)
    assert any("steps" in w for w in report.warnings)


# ------------------------------------------------------------------ the pack's own workflows

def _twins() -> list[tuple[Path, Path]]:
    """(UI workflow, its API twin) as ``workflows/api/models.json`` pairs them."""
    from spacetime_video.headless.models import api_twins
    return [(ROOT / "workflows" / ui, ROOT / "workflows" / "api" / twin) for twin, ui in sorted(api_twins().items())]


def test_every_ui_workflow_has_its_api_twin():
    pairs = _twins()
    assert all(ui.is_file() and api.is_file() for ui, api in pairs)
    assert sorted(ui for ui, _ in pairs) == sorted((ROOT / "workflows").glob("*.json"))
    assert (ROOT / "workflows/Test pattern - No model.json",
            ROOT / "workflows/api/foundation_test_pattern_api.json") in pairs


@pytest.mark.host
@pytest.mark.parametrize("ui,api", _twins(), ids=lambda p: p.name)
def test_pack_workflow_converts_to_its_api_twin(ui, api, object_info):
    converted = U.convert(json.loads(ui.read_text()), object_info)
    expected = json.loads(api.read_text())
    strip = lambda g: {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in g.items()}  # noqa: E731
    assert strip(converted) == strip(expected)


# ------------------------------------------------------------------ the template corpus

def _template_files() -> list[Path]:
    files = []
    for pkg in ("media_api", "media_image", "media_other", "media_video"):
        try:
            mod = __import__(f"comfyui_workflow_templates_{pkg}", fromlist=["_"])
        except ImportError:
            continue
        files += sorted((Path(mod.__file__).parent / "templates").glob("*.json"))
    return [f for f in files if not f.name.startswith("index")]


MODEL_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin", ".gguf", ".sft", ".onnx")


def classify(error: dict, class_type: str) -> str:
    """Why the server refused one input of a converted template."""
    extra = error.get("extra_info") or {}
    value = str(extra.get("received_value", ""))
    if error["type"] == "value_not_in_list" and value.lower().endswith(MODEL_SUFFIXES):
        return "missing model file"
    details = error.get("details", "")
    if error["type"] == "custom_validation_failed" and ("Invalid image file" in details
                                                        or "Invalid video file" in details):
        return "missing input media (the templates package ships none)"
    return f"OTHER: {class_type}.{extra.get('input_name')}: {error['type']}: {details[:120]}"


def _model_widgets_misplaced(wf: dict, api: dict) -> tuple[int, list[str]]:
    """Cross-check of the widget mapping: a loader whose node properties list the model files
    it uses (``properties.models[].name``) must have that name as one of its converted inputs."""
    checked, bad = 0, []
    levels = [("", wf)] + [(None, sg) for sg in (wf.get("definitions") or {}).get("subgraphs") or []]
    for prefix, graph in levels:
        for n in graph.get("nodes", []):
            names = {m.get("name") for m in (n.get("properties") or {}).get("models") or []}
            if not names or n.get("mode", 0) in (U.MODE_MUTED, U.MODE_BYPASS):
                continue
            ids = [str(n["id"])] if prefix == "" else [k for k in api if k.endswith(f":{n['id']}")]
            for nid in ids:
                if nid in api and api[nid]["class_type"] == n["type"]:
                    checked += 1
                    values = {v for v in api[nid]["inputs"].values() if isinstance(v, str)}
                    if not names & values:
                        bad.append(f"node {nid} ({n['type']}): model {sorted(names)} not among "
                                   f"its inputs {api[nid]['inputs']}")
    return checked, bad


@pytest.mark.host
@pytest.mark.slow
def test_workflow_templates_convert_and_pass_server_validation(host, object_info, capsys):
    files = _template_files()
    if not files:
        pytest.fail("comfyui-workflow-templates is not installed: pip install -c "
                    "scripts/constraints.txt -r scripts/requirements-host.txt")
    client = host.client
    gate = FifoGate(host.base_dir / "input")
    status, body = client.queue(gate.graph())
    assert status == 200, body
    gate_id = body["prompt_id"]
    gate.wait_running(client, gate_id)
    counts = collections.Counter()
    reasons = collections.Counter()
    others = []
    try:
        for f in files:
            report = U.ConversionReport()
            try:
                api = U.convert(json.loads(f.read_text()), object_info, report)
            except U.MissingNodeTypes as e:
                counts["node types this host lacks"] += 1
                reasons.update(f"missing node type {t}" for t in e.types)
                continue
            counts["converted"] += 1
            counts["with subgraphs"] += bool(report.subgraphs)
            mismatched = _model_widgets_misplaced(json.loads(f.read_text()), api)
            counts["loader nodes checked against their 'models' property"] += mismatched[0]
            others += [f"{f.name}: {m}" for m in mismatched[1]]
            stale = [w for w in report.warnings if "do not fit" in w]
            status, body = client.queue(api)
            if status == 200:
                client.post_json("/queue", {"delete": [body["prompt_id"]]})  # never run it
            errors = {(nid, classify(e, ne.get("class_type", "?")))
                      for nid, ne in (body.get("node_errors") or {}).items() for e in ne["errors"]}
            if status != 200 and not body.get("node_errors"):
                errors.add(("-", f"OTHER: {body.get('error')}"))
            if not errors:
                counts["validated"] += 1
                continue
            counts["refused (classified)"] += 1
            for nid, why in errors:
                if why.startswith("OTHER") and stale:
                    why = "stale template: widget values do not fit this server's node definition"
                reasons[why] += 1
                if why.startswith("OTHER"):
                    others.append(f"{f.name}: node {nid}: {why}")
    finally:
        gate.release(client, gate_id)
    assert client.get_json("/queue")["queue_pending"] == []  # nothing of the corpus ran
    with capsys.disabled():
        print(f"\nworkflow templates: {len(files)} files; " +
              ", ".join(f"{k}: {v}" for k, v in counts.items()))
        for why, n in reasons.most_common():
            print(f"  {n:4d} x {why}")
    assert counts["converted"] >= 150
    assert counts["with subgraphs"] >= 10
    assert counts["loader nodes checked against their 'models' property"] >= 100
    assert not others, "\n".join(others)
