"""The shipped workflows: generated files are current, every workflow (UI and API format)
validates against a live /object_info, and the embedded ones run through /prompt on tiny
random weights written into the host's model folders (the real embedded weights, when
present, are not needed)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from nodes_helpers import error_message, run, saved_files, write_inputs, write_tiny_models
from spacetime_video.headless import templates as mw
from spacetime_video.headless import workflow_graph

WORKFLOWS = Path(__file__).resolve().parents[1] / "workflows"
API = WORKFLOWS / mw.API_DIR   # the API twins and models.json
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
FILE_INPUTS = {"dit_name", "vae_name", "clip_name", "image", "video", "low_noise_dit_name", "text_encoder_name",
               "lora_name"}


def _inputs(info: dict):
    """(name, type, options) of a node's inputs in ComfyUI's order."""
    for section in ("required", "optional"):
        for name in info.get("input_order", {}).get(section, []):
            spec = info["input"][section][name]
            typ = "COMBO" if isinstance(spec[0], list) else spec[0]
            opts = dict(spec[1]) if len(spec) > 1 and isinstance(spec[1], dict) else {}
            if isinstance(spec[0], list):
                opts["options"] = spec[0]
            yield name, typ, opts


def _widgets(info: dict) -> list[str]:
    names = []
    for name, typ, opts in _inputs(info):
        if typ in WIDGET_TYPES and not opts.get("forceInput"):  # forced inputs are sockets in the UI
            names.append(name)
            names += ["$control"] if opts.get("control_after_generate") else []
            names += ["$upload"] if opts.get("image_upload") else []
    return names


def _input_type(info: dict, name: str) -> str | None:
    return next((typ for n, typ, _ in _inputs(info) if n == name), None)


def test_generated_files_are_current():
    expected = {}
    for name, graph in mw.all_workflows().items():
        expected[WORKFLOWS / mw.ui_file(name)] = graph.ui()
        expected[mw.api_path(WORKFLOWS, name)] = graph.api()
    for path, data in expected.items():
        assert path.is_file(), f"{path.name} missing: run python scripts/make_workflows.py"
        assert json.loads(path.read_text()) == json.loads(json.dumps(data)), f"{path.name} is stale"
    manifest = json.loads((API / "models.json").read_text())
    assert {mw.ui_file(n): mw.needs(n) for n in mw.all_workflows()}.items() <= manifest["workflows"].items()
    assert {f"{n}_api.json": mw.ui_file(n) for n in mw.all_workflows()}.items() <= manifest["api_twins"].items()
    # every capability for the embedded model, and its long video from a storyboard
    caps = {mw.split_name(n)[1] for n in mw.all_workflows() if n.startswith("embedded_")}
    assert {*mw.FAMILIES["embedded"]["caps"], "long_video"} == caps


def test_templates_folder_holds_only_ui_workflows_each_with_a_card():
    """ComfyUI lists every workflows/*.json as a template card: each must open as a UI graph and
    have its TITLE.jpg picture; API twins and the catalog live in workflows/api/."""
    from PIL import Image

    tops = sorted(WORKFLOWS.glob("*.json"))
    assert len(tops) >= 29 and not [p.name for p in tops if p.name.endswith("_api.json") or p.name == "models.json"]
    for path in tops:
        data = json.loads(path.read_text())
        assert isinstance(data.get("nodes"), list) and "version" in data, f"{path.name} is not a UI workflow"
        card_path = path.parent / (path.name.removesuffix(".json") + ".jpg")
        assert card_path.is_file(), f"{path.name} has no card: run python scripts/make_workflows.py"
        card = Image.open(card_path)
        assert card.format == "JPEG" and card.size == (320, 240), path.name
    # every UI workflow has its API twin, and the manifest says which
    twins = json.loads((API / "models.json").read_text())["api_twins"]
    assert sorted(twins.values()) == [p.name for p in tops] and all((API / t).is_file() for t in twins)


def test_template_titles_say_capability_then_model_in_plain_safe_words():
    """The front end titles a pack's template card with its file name and sorts by it: each title is
    unique, ASCII, free of characters a URL or a file system treats specially, and starts with a
    capability, so an alphabetical list groups workflows by what they do."""
    titles = [p.name.removesuffix(".json") for p in WORKFLOWS.glob("*.json")]
    assert len(set(t.lower() for t in titles)) == len(titles)        # unique, also on case-blind disks
    for t in titles:
        assert t.isascii() and t.isprintable() and t == t.strip(), t
        assert not set(t) & set('/\\?#%&:*"<>|+'), t
        what, model = mw.describe(t)
        assert what in mw.CAPABILITIES.values() and model in mw.MODEL_LABELS.values(), t
    assert mw.title("embedded_t2v") == "Text to video - Embedded (CPU)"
    assert mw.title("wan21_t2v_1.3b_extend_forward") == "Extend forward - Wan 2.1 T2V 1.3B"
    assert mw.title("wan22_t2v_a14b_t2v_4step") == "Text to video 4-step - Wan 2.2 T2V A14B"
    # sorted by title, the workflows of one capability sit together
    order = [mw.describe(t)[0] for t in sorted(titles, key=str.lower)]
    assert [c for i, c in enumerate(order) if i == 0 or c != order[i - 1]] == sorted(set(order), key=str.lower)


@pytest.mark.host
def test_node_specs_match_object_info(object_info):
    for node_type, (sockets, widgets, outputs) in workflow_graph.NODE_SPECS.items():
        info = object_info.get(node_type)
        assert info is not None, f"{node_type} is not registered"
        assert widgets == _widgets(info), node_type
        assert [(n, t) for n, t, o in _inputs(info) if t not in WIDGET_TYPES or o.get("forceInput")] == sockets, \
            node_type
        assert [t for _, t in outputs] == list(info["output"]), node_type
        # the text boxes, which the node sizes in the UI files allow for
        assert {n for n, t, o in _inputs(info) if t == "STRING" and o.get("multiline")} == \
            {w for t, w in workflow_graph.MULTILINE if t == node_type}, node_type


def _check_api(name: str, graph: dict, object_info: dict) -> None:
    for nid, node in graph.items():
        info = object_info.get(node["class_type"])
        assert info is not None, f"{name}: node {nid} type {node['class_type']} unknown"
        known = {n: (t, o) for n, t, o in _inputs(info)}
        required = info.get("input_order", {}).get("required", [])
        assert set(required) <= set(node["inputs"]), f"{name}: node {nid} misses {set(required) - set(node['inputs'])}"
        for key, value in node["inputs"].items():
            assert key in known, f"{name}: node {nid} ({node['class_type']}) has no input {key!r}"
            typ, opts = known[key]
            if isinstance(value, list):
                src = graph[value[0]]
                out_type = object_info[src["class_type"]]["output"][value[1]]
                assert out_type == typ or "*" in (typ, out_type), f"{name}: {nid}.{key} {typ} <- {out_type}"
            elif typ == "COMBO" and key not in FILE_INPUTS:
                assert value in opts["options"], f"{name}: {nid}.{key}={value!r} not in {opts['options']}"


@pytest.mark.host
def test_every_workflow_validates_against_object_info(object_info):
    generated = list(mw.all_workflows())
    names = sorted([mw.ui_file(n) for n in generated] + [f"{n}_api.json" for n in generated])
    names += sorted(p.name for p in API.glob("*_api.json") if p.name not in names)  # others' API graphs
    twin_of = {ui: twin for twin, ui in json.loads((API / "models.json").read_text())["api_twins"].items()}
    assert len(generated) >= 29
    for fname in names:
        data = json.loads(((API if fname.endswith("_api.json") else WORKFLOWS) / fname).read_text())
        if fname.endswith("_api.json"):
            _check_api(fname, data, object_info)
            continue
        assert data["version"] == 0.4 and data["links"]
        nodes = {n["id"]: n for n in data["nodes"]}
        for link_id, src, slot, dst, dst_slot, typ in data["links"]:
            assert object_info[nodes[src]["type"]]["output"][slot] == typ, f"{fname}: link {link_id}"
            dst_input = nodes[dst]["inputs"][dst_slot]
            assert dst_input["link"] == link_id and dst_input["type"] in (typ, "*")
            assert _input_type(object_info[nodes[dst]["type"]], dst_input["name"]) in (typ, "*")
        for n in data["nodes"]:
            assert len(n["widgets_values"]) == len(_widgets(object_info[n["type"]])), f"{fname}: {n['type']}"
        twin = json.loads((API / twin_of[fname]).read_text())
        assert sorted(twin, key=int) == [str(i) for i in sorted(nodes)]
        for nid, node in twin.items():
            ui = nodes[int(nid)]
            values = dict(zip(_widgets(object_info[ui["type"]]), ui["widgets_values"]))
            for key, value in node["inputs"].items():
                if not isinstance(value, list):
                    assert values[key] == value, f"{fname}: node {nid} {key}"


# --- running the embedded workflows on tiny random weights --------------------------------------

def _with_tiny_loaders(graph: dict, names: dict) -> dict:
    """Replace the embedded loader by file loaders of tiny random weights; 2 sampling steps and
    9 frames instead of 17 (the VAE dominates the run time on a CPU)."""
    g = json.loads(json.dumps(graph))
    (lid,) = [k for k, v in g.items() if v["class_type"] == "SpacetimeEmbeddedLoader"]
    g[lid] = {"class_type": "SpacetimeDiTLoader", "inputs": {
        "dit_name": names["dit"], "weight_dtype": "default", "compute_dtype": "fp32", "attention": "auto",
        "shift": 2.0, "low_noise_dit_name": "none"}}
    g["901"] = {"class_type": "SpacetimeVAELoader", "inputs": {"vae_name": names["vae"], "dtype": "fp32"}}
    g["902"] = {"class_type": "SpacetimeTextEncoderLoader", "inputs": {"text_encoder_name": names["text"]}}
    for node in g.values():
        for key, value in node["inputs"].items():
            if isinstance(value, list) and value[0] == lid and value[1] > 0:
                node["inputs"][key] = ["901" if value[1] == 1 else "902", 0]
        if node["class_type"] == "SpacetimeSampler":
            node["inputs"]["steps"] = 2
        if node["class_type"] == "SpacetimeCanvas" and node["inputs"]["length"] > 1:
            node["inputs"]["length"] = 9
        if node["class_type"] == "SpacetimeLoadVideo" and node["inputs"]["frame_count"]:
            node["inputs"]["frame_count"] = 9
    return g


@pytest.fixture(scope="module")
def tiny(host):
    names = write_tiny_models(host.base_dir)
    write_inputs(host.base_dir)
    return names


@pytest.mark.host
@pytest.mark.parametrize("cap", mw.FAMILIES["embedded"]["caps"])
def test_embedded_workflow_runs(host, tiny, cap):
    from spacetime_video.nodes.video_file import read_video
    graph = _with_tiny_loaders(json.loads((API / f"embedded_{cap}_api.json").read_text()), tiny)
    h = run(host, graph, timeout=300)
    assert error_message(h) is None, error_message(h)
    (item,) = saved_files(h)
    path = host.base_dir / "output" / item["subfolder"] / item["filename"]
    if cap == "image":
        from PIL import Image
        assert Image.open(path).size == (64, 64)
        return
    frames, fps = read_video(path)
    assert frames.shape == (9, 64, 64, 3) and fps == pytest.approx(8.0, rel=0.05)
    if cap == "t2v":  # the graph, its seed and prompts travel in the file
        from spacetime_video.nodes.video_file import read_metadata
        metadata = read_metadata(path)
        meta = metadata["spacetime"]
        assert 42 in meta["seeds"].values() and mw.FAMILIES["embedded"]["prompt"] in meta["prompts"].values()
        # the expanded prompt (an output of the Prompt Expander, not in the graph) is recorded too
        from spacetime_video.model import expand_prompt
        short = mw.FAMILIES["embedded"]["prompt"]
        assert metadata["caption"] == expand_prompt(short, model_family="embedded", seed=0, max_words=40)
        assert metadata["caption"] != short


@pytest.mark.host
@pytest.mark.parametrize("name", ["embedded_t2v", "embedded_t2v_4step"])
def test_embedded_workflow_with_shipped_weights_or_a_clear_error(host, tiny, name):
    """Unmodified: runs when the shipped weights (and the 4-step LoRA) are present, else names the
    loader and what to do."""
    from spacetime_video.model.embedded import config as emb
    graph = json.loads((API / f"{name}_api.json").read_text())
    h = run(host, graph, timeout=600)
    files = (emb.DIT_FILE, emb.VAE_FILE, emb.TEXT_FILE) + ((emb.DISTILL_FILE,) if name.endswith("_4step") else ())
    if all((emb.WEIGHTS_DIR / f).is_file() for f in files):
        assert error_message(h) is None, error_message(h)
        (item,) = saved_files(h)
        from spacetime_video.nodes.video_file import read_video
        frames, _ = read_video(host.base_dir / "output" / item["subfolder"] / item["filename"])
        assert frames.shape == (17, 64, 64, 3)
    else:
        msg = error_message(h)
        assert msg and "SpacetimeEmbeddedLoader: input 'weights'" in msg and "missing" in msg, msg


def _with_tiny_files(graph: dict, names: dict, wan22: bool) -> dict:
    """A Wan workflow on tiny random files: the umT5 CLIPLoader/CLIPTextEncode pair becomes the
    tiny text encoder, the canvas 64x64x9, 2 steps."""
    g = json.loads(json.dumps(graph))
    for nid, node in g.items():
        t, inp = node["class_type"], node["inputs"]
        if t == "CLIPLoader":
            g[nid] = {"class_type": "SpacetimeTextEncoderLoader", "inputs": {"text_encoder_name": names["text"]}}
        elif t == "CLIPTextEncode":
            g[nid] = {"class_type": "SpacetimeTextEncode", "inputs": {"text_encoder": inp["clip"], "text": inp["text"]}}
        elif t == "SpacetimeDiTLoader":
            inp.update(dit_name=names["dit22" if wan22 else "dit"], compute_dtype="fp32")
            if inp.get("low_noise_dit_name", "none") != "none":    # Wan 2.2 A14B: two experts
                inp["low_noise_dit_name"] = inp["dit_name"]
        elif t == "SpacetimeVAELoader":
            inp.update(vae_name=names["vae22" if wan22 else "vae"], dtype="fp32")
        elif t == "SpacetimeLoraLoader":
            inp.update(lora_name=names["lora"])
        elif t == "SpacetimeCanvas":
            inp.update(width=64, height=64, length=9)
        elif t == "SpacetimeLoadVideo":
            inp.update(width=64, height=64)
        elif t == "SpacetimePlaceFrames":
            inp["count"] = min(inp["count"], 4)
        elif t == "SpacetimeSampler" and "sigmas" not in inp:
            inp["steps"] = 2
    return g


@pytest.mark.host
@pytest.mark.parametrize("name", ["wan22_ti2v_5b_i2v", "wan21_t2v_1.3b_connect", "wan21_t2v_14b_t2v_4step",
                                  "wan22_t2v_a14b_t2v_4step"])
def test_wan_workflow_runs_on_tiny_files(host, tiny, name):
    from spacetime_video.nodes.video_file import read_video
    graph = _with_tiny_files(json.loads((API / f"{name}_api.json").read_text()), tiny,
                             name.startswith("wan22_ti2v"))
    h = run(host, graph, timeout=300)
    assert error_message(h) is None, error_message(h)
    (item,) = saved_files(h)
    frames, _ = read_video(host.base_dir / "output" / item["subfolder"] / item["filename"])
    assert frames.shape == (9, 64, 64, 3)
