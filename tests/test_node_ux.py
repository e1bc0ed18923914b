"""What the web UI shows of the pack's nodes (read from a live /object_info): one Spacetime/
category tree, a tooltip on every input, output names that say what they carry."""
from __future__ import annotations

import pytest

pytestmark = pytest.mark.host

def _ours(object_info: dict) -> dict:
    nodes = {k: v for k, v in object_info.items() if k.startswith("Spacetime")}
    assert len(nodes) >= 15
    return nodes


def test_every_node_sits_under_one_spacetime_category_tree(object_info):
    assert [k for k, v in _ours(object_info).items() if not v["category"].startswith("Spacetime/")] == []
    assert all("(Spacetime" in v["display_name"] for v in _ours(object_info).values())


def test_every_input_has_a_tooltip(object_info):
    missing = []
    for node_id, info in _ours(object_info).items():
        for section in ("required", "optional"):
            for name, spec in info["input"].get(section, {}).items():
                if len(spec) < 2 or not spec[1].get("tooltip"):
                    missing.append(f"{node_id}.{name}")
    assert missing == []


def test_outputs_are_named_for_what_they_carry(object_info):
    """A socket's name is what a user reads on the node: not our internal type names, and a plain
    value (text, number) says what it is rather than "STRING"; two outputs of a node never share one."""
    nodes = _ours(object_info)
    bad = [f"{k}: {n}" for k, v in nodes.items() for n in v.get("output_name", []) if n.startswith("SPACETIME_")]
    assert bad == []
    plain = {"STRING", "INT", "FLOAT", "BOOLEAN"}
    bad = [f"{k}: {n}" for k, v in nodes.items() for t, n in zip(v["output"], v.get("output_name", []))
           if t in plain and n == t]
    assert bad == []
    assert [k for k, v in nodes.items() if len(set(v["output_name"])) < len(v["output_name"])] == []
    assert nodes["SpacetimeEmbeddedLoader"]["output_name"] == ["MODEL", "VAE", "text_encoder"]
    assert nodes["SpacetimeLoadVideo"]["output_name"] == ["images", "fps", "frame_count", "video"]
    assert nodes["SpacetimeModelDownload"]["output_name"] == ["file_name", "model_folder"]
    assert nodes["SpacetimeLongVideo"]["output_name"] == ["video", "run_folder"]
