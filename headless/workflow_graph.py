"""One graph description, two formats: a workflow built as :class:`Graph` is written as the
UI-format file ComfyUI's front end opens (nodes laid out by column at the size the front end
gives them) and as the API-format prompt ``/prompt`` takes, so the two cannot drift apart.

``NODE_SPECS`` lists each node type's sockets and widgets in ComfyUI's order;
tests/test_workflows.py checks it against a live server's /object_info.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..samplers.experts import WAN22_BOUNDARY

# node type -> (input sockets [(name, type)], widget names in order, outputs [(name, type)]).
# "$control" marks the frontend's control_after_generate widget after a seed.
NODE_SPECS: dict[str, tuple[list, list, list]] = {
    "SpacetimeEmbeddedLoader": ([], ["shift", "distilled"], [("MODEL", "MODEL"), ("VAE", "VAE"),
                                                ("text_encoder", "SPACETIME_TEXT_ENCODER")]),
    "SpacetimeTextEncode": ([("text_encoder", "SPACETIME_TEXT_ENCODER")], ["text"], [("CONDITIONING", "CONDITIONING")]),
    "SpacetimeDiTLoader": ([], ["dit_name", "weight_dtype", "compute_dtype", "attention", "shift", "low_noise_dit_name"],
                           [("model", "MODEL"), ("low_noise_model", "MODEL")]),
    "SpacetimeVAELoader": ([], ["vae_name", "dtype"], [("VAE", "VAE")]),
    "SpacetimeLoraLoader": ([("model", "MODEL")], ["lora_name", "strength_model"], [("MODEL", "MODEL")]),
    "SpacetimeScheduler": ([], ["steps", "shift", "spacing", "denoise", "preset"], [("SIGMAS", "SIGMAS")]),
    "CLIPLoader": ([], ["clip_name", "type", "device"], [("CLIP", "CLIP")]),
    "CLIPTextEncode": ([("clip", "CLIP")], ["text"], [("CONDITIONING", "CONDITIONING")]),
    "CLIPVisionLoader": ([], ["clip_name"], [("CLIP_VISION", "CLIP_VISION")]),
    "CLIPVisionEncode": ([("clip_vision", "CLIP_VISION"), ("image", "IMAGE")], ["crop"],
                         [("CLIP_VISION_OUTPUT", "CLIP_VISION_OUTPUT")]),
    "LoadImage": ([], ["image", "$upload"], [("IMAGE", "IMAGE"), ("MASK", "MASK")]),
    "SpacetimeLoadVideo": ([], ["video", "start_frame", "frame_count", "stride", "width", "height", "allow_large"],
                           [("images", "IMAGE"), ("fps", "FLOAT"), ("frame_count", "INT"), ("video", "VIDEO")]),
    "SpacetimeCanvas": ([("vae", "VAE"), ("model", "MODEL")], ["width", "height", "length", "invalid_size",
                                                               "allow_large"], [("LATENT", "LATENT")]),
    "SpacetimePlaceFrames": ([("latent", "LATENT"), ("vae", "VAE"), ("images", "IMAGE"),
                              ("clip_vision_output", "CLIP_VISION_OUTPUT")],
                             ["position", "frame", "use", "count"], [("latent", "LATENT"), ("placed_frames", "IMAGE")]),
    "SpacetimeSampler": ([("model", "MODEL"), ("positive", "CONDITIONING"), ("negative", "CONDITIONING"),
                          ("latent", "LATENT"), ("sigmas", "SIGMAS"), ("low_noise_model", "MODEL"),
                          ("clip_vision_output", "CLIP_VISION_OUTPUT")],
                         ["seed", "$control", "steps", "cfg", "solver", "shift", "denoise", "boundary", "low_noise_cfg"],
                         [("LATENT", "LATENT")]),
    "SpacetimeVAEEncode": ([("images", "IMAGE"), ("vae", "VAE")], ["tile"], [("LATENT", "LATENT")]),
    "SpacetimeVAEDecode": ([("samples", "LATENT"), ("vae", "VAE")], ["tile"], [("IMAGE", "IMAGE")]),
    "SpacetimeSaveVideo": ([("images", "IMAGE"), ("video", "VIDEO"), ("caption", "STRING")],
                           ["fps", "filename_prefix", "format"], []),
    "SpacetimePromptExpander": ([("images", "IMAGE")],
                                ["prompt", "task", "model_family", "language", "seed", "$control", "max_words",
                                 "backend", "base_url", "model", "api_key_env", "on_error", "temperature"],
                                [("expanded", "STRING"), ("original", "STRING")]),
    "SaveImage": ([("images", "IMAGE")], ["filename_prefix"], []),
    "SpacetimeLongVideo": ([("model", "MODEL"), ("vae", "VAE"), ("text_encoder", "SPACETIME_TEXT_ENCODER"),
                            ("clip", "CLIP"), ("image", "IMAGE"), ("clip_vision", "CLIP_VISION"),
                            ("low_noise_model", "MODEL")],
                           ["storyboard", "negative", "fps", "seconds", "width", "height", "window", "overlap",
                            "continuity", "anchor", "blend", "expand_prompts", "seed", "$control", "steps", "cfg",
                            "solver", "shift", "filename_prefix", "reanchor", "boundary", "low_noise_cfg"],
                           [("video", "VIDEO"), ("run_folder", "STRING")]),
}
# values of widgets not set by a workflow (the frontend needs every widget's value)
WIDGET_DEFAULTS = {"allow_large": False, "$control": "fixed", "$upload": "image", "weight_dtype": "default", "compute_dtype": "auto",
                   "attention": "auto", "low_noise_dit_name": "none", "dtype": "auto", "device": "default",
                   "invalid_size": "snap", "frame": 0, "use": "all", "count": 1, "tile": 0, "boundary": WAN22_BOUNDARY["t2v"],
                   "low_noise_cfg": 3.0, "reanchor": True, "denoise": 1.0, "solver": "unipc", "start_frame": 0, "frame_count": 0,
                   "stride": 1, "width": 0, "height": 0, "format": "mp4", "crop": "none",
                   "language": "en", "max_words": 100, "backend": "rules", "base_url": "http://localhost:11434/v1",
                   "model": "", "api_key_env": "OPENAI_API_KEY", "on_error": "fallback", "temperature": 0.7,
                   "strength_model": 1.0, "spacing": "wan", "preset": "none", "distilled": False}


# widgets the front end draws as a text box (a taller widget): ("type", "widget")
MULTILINE = {("SpacetimeTextEncode", "text"), ("CLIPTextEncode", "text"), ("SpacetimePromptExpander", "prompt"),
             ("SpacetimeLongVideo", "storyboard"), ("SpacetimeLongVideo", "negative")}
# ComfyUI's front end (1.32.9) sizes a node body as: a margin, a row per input socket or output
# (whichever are more), a row per widget, a text box's minimum height, an image preview's.
BODY_MARGIN, SLOT_ROW, WIDGET_ROW, TEXT_BOX, IMAGE_PREVIEW = 14, 20, 24, 54, 224
NODE_WIDTH = 320                     # wider than any of these nodes' titles, sockets and widgets need


def node_size(node_type: str) -> list[int]:
    """[width, height] that shows every socket and widget of a node, as the front end computes it
    (``LGraphNode.computeSize``; tests/test_browser.py compares the two)."""
    sockets, widgets, outputs = NODE_SPECS[node_type]
    rows = [TEXT_BOX if (node_type, w) in MULTILINE else WIDGET_ROW for w in widgets]
    preview = IMAGE_PREVIEW if "$upload" in widgets else 0      # LoadImage shows the chosen image
    return [NODE_WIDTH, BODY_MARGIN + SLOT_ROW * max(len(sockets), len(outputs)) + sum(rows) + preview]


@dataclass
class Node:
    id: int
    type: str
    widgets: dict
    links: dict = field(default_factory=dict)   # input name -> (node, output slot)
    title: str | None = None


class Graph:
    def __init__(self) -> None:
        self.nodes: list[Node] = []

    def add(self, node_type: str, title: str | None = None, /, **inputs) -> Node:
        """Inputs that are ``(Node, slot)`` become links, the rest widget values."""
        links = {k: v for k, v in inputs.items() if isinstance(v, tuple) and isinstance(v[0], Node)}
        widgets = {k: v for k, v in inputs.items() if k not in links}
        node = Node(len(self.nodes) + 1, node_type, widgets, links, title)
        self.nodes.append(node)
        return node

    def api(self) -> dict:
        out = {}
        for n in self.nodes:
            names = [w for w in NODE_SPECS[n.type][1] if not w.startswith("$")]
            inputs = {w: n.widgets.get(w, WIDGET_DEFAULTS.get(w)) for w in names}
            inputs = {k: v for k, v in inputs.items() if v is not None}
            inputs.update({k: [str(src.id), slot] for k, (src, slot) in n.links.items()})
            out[str(n.id)] = {"class_type": n.type, "inputs": inputs, "_meta": {"title": n.title or n.type}}
        return out

    def ui(self) -> dict:
        links, depth = [], {}
        for n in self.nodes:  # nodes are added in dependency order
            depth[n.id] = 1 + max((depth[src.id] for src, _ in n.links.values()), default=-1)
        tops: dict[int, int] = {}     # column -> where its next node goes
        ui_nodes = []
        for n in self.nodes:
            sockets, widget_names, outputs = NODE_SPECS[n.type]
            inputs = []
            for name, typ in sockets:
                link = None
                if name in n.links:
                    src, slot = n.links[name]
                    link = len(links) + 1
                    links.append([link, src.id, slot, n.id, len(inputs), typ])
                inputs.append({"name": name, "type": typ, "link": link})
            for name in widget_names:
                if name in n.links:
                    src, slot = n.links[name]
                    typ = NODE_SPECS[src.type][2][slot][1]
                    link = len(links) + 1
                    links.append([link, src.id, slot, n.id, len(inputs), typ])
                    inputs.append({"name": name, "type": typ, "widget": {"name": name}, "link": link})
            unknown = set(n.widgets) - set(widget_names)
            if unknown:
                raise ValueError(f"{n.type}: no widget(s) {sorted(unknown)}")
            # a widget fed by a link keeps a placeholder value, as the frontend saves it
            values = [n.widgets.get(w, "" if w in n.links else WIDGET_DEFAULTS.get(w)) for w in widget_names]
            col, size = depth[n.id], node_size(n.type)
            top = tops.get(col, 40)
            tops[col] = top + size[1] + 60                      # the next node's title bar and a gap
            ui_nodes.append({
                "id": n.id, "type": n.type, "pos": [40 + 360 * col, top], "size": size,
                "flags": {}, "order": len(ui_nodes), "mode": 0, "inputs": inputs,
                "outputs": [{"name": name, "type": typ, "links": [], "slot_index": i} for i, (name, typ) in enumerate(outputs)],
                "properties": {"Node name for S&R": n.type}, "widgets_values": values,
                **({"title": n.title} if n.title else {}),
            })
        by_id = {u["id"]: u for u in ui_nodes}
        for link_id, src, slot, _dst, _dst_slot, _typ in links:
            by_id[src]["outputs"][slot]["links"].append(link_id)
        return {"last_node_id": len(ui_nodes), "last_link_id": len(links), "nodes": ui_nodes, "links": links,
                "groups": [], "config": {}, "extra": {}, "version": 0.4}
