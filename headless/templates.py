"""Generate the pack's workflows: every Sora capability for every model family, each as a
UI-format graph (draggable into ComfyUI) and its API-format twin.

    python scripts/make_workflows.py [--out workflows/]

A workflow has a machine name ``<family>_<capability>`` (``embedded_t2v``) and a title
("Text to video - Embedded (CPU)", ``title``). Layout: ``workflows/TITLE.json`` (UI format) with
its card picture ``TITLE.jpg`` at the top, which ComfyUI lists in its templates browser under the
file name; ``workflows/api/NAME_api.json`` (the machine name, handy on a command line) and
``workflows/api/models.json`` (the models each workflow needs, and which UI file each API twin
belongs to) in a subfolder the browser does not list.

Both formats come from one graph description, so they cannot drift apart. ``NODE_SPECS``
lists each node type's sockets and widgets in ComfyUI's order; tests/test_workflows.py checks
it against a live server's /object_info. Sampling defaults are the official Wan configs'.
"""
from __future__ import annotations

import argparse
import functools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from ..model.embedded import config as EMB
from ..samplers.experts import WAN22_BOUNDARY
from ..samplers.presets import FEW_STEP_PRESETS
from .thumbnails import image_frame, video_frame, write_thumbnails

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

TEXT_ENCODER = "umt5_xxl_fp8_e4m3fn_scaled.safetensors"  # Comfy-Org repackaged file names
CLIP_VISION = "clip_vision_h.safetensors"
NEGATIVE = ("色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，"
            "JPEG压缩残留，丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，"
            "手指融合，静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走")
IMAGE_IN, CLIP_A, CLIP_B = "spacetime_start.png", "spacetime_clip_a.mp4", "spacetime_clip_b.mp4"

# family -> loader kind, files, and the official sampling defaults (Wan-Video/Wan2.1, Wan2.2 configs)
FAMILIES: dict[str, dict] = {
    "embedded": dict(kind="embedded", width=64, height=64, length=17, fps=8, steps=20, shift=2.0, cfg=4.0,
                     overlap=5, prompt="red ball right, navy background",
                     negative="", caps=["t2v", "i2v", "extend_forward", "extend_backward", "connect", "loop",
                                        "edit", "image", "t2v_4step"]),
    "wan21_t2v_1.3b": dict(kind="file", dit="wan2.1_t2v_1.3B_fp16.safetensors", vae="wan_2.1_vae.safetensors",
                           width=832, height=480, length=81, fps=16, steps=50, shift=5.0, cfg=5.0, overlap=17,
                           caps=["t2v", "i2v", "extend_forward", "extend_backward", "connect", "loop", "edit",
                                 "image"]),
    # "<cap>_4step": the family's step-distill LoRA(s) sampled with their few-step preset
    "wan21_t2v_14b": dict(kind="file", dit="wan2.1_t2v_14B_bf16.safetensors", vae="wan_2.1_vae.safetensors",
                          width=832, height=480, length=81, fps=16, steps=50, shift=5.0, cfg=5.0, overlap=17,
                          distill=dict(lora="wan2.1_t2v_14b_lora_rank64_lightx2v_4step.safetensors",
                                       preset="lightx2v_4step", needs=["lightx2v-wan2.1-t2v-14b-4step"]),
                          caps=["t2v_4step"]),
    "wan22_ti2v_5b": dict(kind="file", dit="wan2.2_ti2v_5B_fp16.safetensors", vae="wan2.2_vae.safetensors",
                          width=1280, height=704, length=121, fps=24, steps=50, shift=5.0, cfg=5.0, overlap=25,
                          caps=["t2v", "i2v", "extend_forward", "extend_backward", "connect", "loop", "edit",
                                "image"]),
    "wan21_i2v_14b": dict(kind="file", dit="wan2.1_i2v_480p_14B_fp16.safetensors", vae="wan_2.1_vae.safetensors",
                          width=832, height=480, length=81, fps=16, steps=40, shift=3.0, cfg=5.0, overlap=1,
                          clip_vision=True, caps=["i2v", "extend_forward"]),
    "wan21_flf2v_14b": dict(kind="file", dit="wan2.1_flf2v_720p_14B_fp16.safetensors", vae="wan_2.1_vae.safetensors",
                            width=1280, height=720, length=81, fps=16, steps=50, shift=16.0, cfg=5.0, overlap=1,
                            clip_vision=True, caps=["connect", "loop", "extend_backward"]),
    "wan22_t2v_a14b": dict(kind="file", dit="wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors",
                           low_dit="wan2.2_t2v_low_noise_14B_fp8_scaled.safetensors", vae="wan_2.1_vae.safetensors",
                           width=832, height=480, length=81, fps=16, steps=40, shift=12.0, cfg=4.0, low_cfg=3.0,
                           boundary=WAN22_BOUNDARY["t2v"], overlap=17, caps=["t2v", "t2v_4step"],
                           distill=dict(lora="wan2.2_t2v_lightx2v_4steps_lora_v1.1_high_noise.safetensors",
                                        low_lora="wan2.2_t2v_lightx2v_4steps_lora_v1.1_low_noise.safetensors",
                                        preset="lightx2v_wan22_4step",
                                        needs=["wan2.2-t2v-a14b-4step-lora-high", "wan2.2-t2v-a14b-4step-lora-low"])),
}
# catalog ids (model/weights/catalog.json) each family needs, for workflows/models.json
NEEDS = {
    "embedded": [],
    "wan21_t2v_1.3b": ["wan2.1-t2v-1.3b", "wan2.1-vae", "umt5-xxl-fp8"],
    "wan21_t2v_14b": ["wan2.1-t2v-14b", "wan2.1-vae", "umt5-xxl-fp8"],
    "wan22_ti2v_5b": ["wan2.2-ti2v-5b", "wan2.2-vae", "umt5-xxl-fp8"],
    "wan21_i2v_14b": ["wan2.1-i2v-480p-14b", "wan2.1-vae", "umt5-xxl-fp8", "clip-vision-h"],
    "wan21_flf2v_14b": ["wan2.1-flf2v-720p-14b", "wan2.1-vae", "umt5-xxl-fp8", "clip-vision-h"],
    "wan22_t2v_a14b": ["wan2.2-t2v-a14b-high", "wan2.2-t2v-a14b-low", "wan2.1-vae", "umt5-xxl-fp8"],
}
# A template card's title is its UI file's name: ComfyUI 0.3.75 lists a pack's workflows/*.json by
# file name, and its front end shows that name as the card's title and sorts by it. So the title is
# "<capability> - <model>", capability first: an alphabetical list groups by what a workflow does.
# Plain ASCII words, no character a URL or a file system treats specially.
CAPABILITIES = {  # capability of a machine name -> the words a user looks for
    "t2v": "Text to video", "t2v_4step": "Text to video 4-step", "i2v": "Image to video",
    "extend_forward": "Extend forward", "extend_backward": "Extend backward", "connect": "Connect two clips",
    "loop": "Loop", "edit": "Edit video", "image": "Text to image", "long_video": "Long video",
    "test_pattern": "Test pattern",
}
MODEL_LABELS = {
    "embedded": "Embedded (CPU)", "wan21_t2v_1.3b": "Wan 2.1 T2V 1.3B", "wan21_t2v_14b": "Wan 2.1 T2V 14B",
    "wan22_ti2v_5b": "Wan 2.2 TI2V 5B", "wan21_i2v_14b": "Wan 2.1 I2V 14B", "wan21_flf2v_14b": "Wan 2.1 FLF2V 14B",
    "wan22_t2v_a14b": "Wan 2.2 T2V A14B", "foundation": "No model",
}
TITLE_SEP = " - "


def split_name(name: str) -> tuple[str, str]:
    """``(family, capability)`` of a machine name ``<family>_<capability>``; KeyError if not one."""
    family = next((f for f in sorted(MODEL_LABELS, key=len, reverse=True) if name.startswith(f + "_")), None)
    cap = name[len(family) + 1:] if family else name
    if family is None or cap not in CAPABILITIES:
        raise KeyError(f"{name!r} is not <family>_<capability> of {sorted(MODEL_LABELS)} x {sorted(CAPABILITIES)}")
    return family, cap


def title(name: str) -> str:
    """The card title, and UI file name without ``.json``, of machine name ``name``."""
    family, cap = split_name(name)
    return f"{CAPABILITIES[cap]}{TITLE_SEP}{MODEL_LABELS[family]}"


def describe(title: str) -> tuple[str, str]:
    """(what it does, which model): the two halves of a title."""
    what, _, model = title.partition(TITLE_SEP)
    return what, model


def ui_file(name: str) -> str:
    """``workflows/<this>``: the UI workflow of machine name ``name``."""
    return f"{title(name)}.json"


DEFAULT_PROMPT = ("A red fox trots through fresh snow in a quiet birch forest at dawn, soft golden light, "
                  "the camera follows it slowly at eye level, cinematic, detailed fur.")


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


def _loaders(g: Graph, fam: dict, prompt: str, negative: str, task: str, distilled: bool = False):
    """-> model, vae, positive, negative (each a (Node, slot)), and the caption (or None)."""
    if fam["kind"] == "embedded":
        loader = g.add("SpacetimeEmbeddedLoader", shift=fam["shift"], distilled=distilled)
        # The Sora recipe: a short idea becomes the caption the model was trained on.
        expander = g.add("SpacetimePromptExpander", "Prompt", prompt=prompt, task=task,
                         model_family="embedded", seed=0, max_words=40)
        pos = g.add("SpacetimeTextEncode", "Positive prompt", text_encoder=(loader, 2), text=(expander, 0))
        neg = g.add("SpacetimeTextEncode", "Negative prompt", text_encoder=(loader, 2), text=negative)
        return (loader, 0), (loader, 1), (pos, 0), (neg, 0), (expander, 0)
    dit = g.add("SpacetimeDiTLoader", dit_name=fam["dit"], shift=fam["shift"],
                low_noise_dit_name=fam.get("low_dit", "none"))
    vae = g.add("SpacetimeVAELoader", vae_name=fam["vae"])
    clip = g.add("CLIPLoader", clip_name=TEXT_ENCODER, type="wan", device="default")
    pos = g.add("CLIPTextEncode", "Positive prompt", clip=(clip, 0), text=prompt)
    neg = g.add("CLIPTextEncode", "Negative prompt", clip=(clip, 0), text=negative)
    return (dit, 0), (vae, 0), (pos, 0), (neg, 0), None


def _clip(g: Graph, fam: dict, name: str):
    return g.add("SpacetimeLoadVideo", name.split(".")[0], video=name, start_frame=0, frame_count=0, stride=1,
                 width=fam["width"], height=fam["height"])


def build(family: str, cap: str) -> Graph:
    fam = FAMILIES[family]
    g = Graph()
    prefix = f"spacetime/{family}_{cap}"
    distilled = cap.endswith("_4step")   # the family's step-distill LoRA and few-step preset
    cap = cap.removesuffix("_4step")
    prompt = fam.get("prompt", DEFAULT_PROMPT)
    task = {"i2v": "i2v", "connect": "flf2v", "loop": "flf2v", "extend_forward": "extend",
            "extend_backward": "extend"}.get(cap, "t2v")
    embedded_distilled = distilled and fam["kind"] == "embedded"   # the LoRA is merged by the loader
    model, vae, pos, neg, caption = _loaders(g, fam, prompt, fam.get("negative", NEGATIVE), task, embedded_distilled)
    vision = g.add("CLIPVisionLoader", clip_name=CLIP_VISION) if fam.get("clip_vision") else None
    length = 1 if cap == "image" else fam["length"]
    n = fam["overlap"]
    sampler_in = dict(model=model, positive=pos, negative=neg, seed=42, steps=fam["steps"], cfg=fam["cfg"],
                      solver="unipc", shift=fam["shift"], denoise=1.0)
    if "low_dit" in fam:  # Wan 2.2 A14B: the loader's second output is the low-noise expert
        sampler_in.update(low_noise_model=(model[0], 1), boundary=fam["boundary"], low_noise_cfg=fam["low_cfg"])
    if embedded_distilled:
        sampler_in.update(steps=EMB.DISTILLED_STEPS, cfg=1.0, solver=EMB.DISTILLED_SOLVER)   # at the family's shift
    elif distilled:
        distill = fam["distill"]
        preset = FEW_STEP_PRESETS[distill["preset"]]
        model = (g.add("SpacetimeLoraLoader", "step-distill LoRA", model=model, lora_name=distill["lora"]), 0)
        if "low_lora" in distill:
            low = g.add("SpacetimeLoraLoader", "step-distill LoRA (low noise)", model=sampler_in["low_noise_model"],
                        lora_name=distill["low_lora"])
            sampler_in.update(low_noise_model=(low, 0), low_noise_cfg=preset.cfg)
        sigmas = g.add("SpacetimeScheduler", f"{preset.steps}-step preset", steps=preset.steps, shift=preset.shift,
                       preset=distill["preset"])
        sampler_in.update(model=model, steps=preset.steps, cfg=preset.cfg, solver=preset.solver, shift=preset.shift,
                          sigmas=(sigmas, 0))

    def place(latent, images, position, use, count, see=None):
        extra = {"clip_vision_output": see} if see else {}
        return g.add("SpacetimePlaceFrames", latent=latent, vae=vae, images=images, position=position, frame=0,
                     use=use, count=count, **extra)

    def seen(images):
        return (g.add("CLIPVisionEncode", clip_vision=(vision, 0), image=images, crop="none"), 0) if vision else None

    if cap == "edit":
        clip = g.add("SpacetimeLoadVideo", "clip to edit", video=CLIP_A, start_frame=0, frame_count=fam["length"],
                     stride=1, width=fam["width"], height=fam["height"])
        latent = (g.add("SpacetimeVAEEncode", images=(clip, 0), vae=vae, tile=0), 0)
        sampler_in["denoise"] = 0.7
    else:
        latent = (g.add("SpacetimeCanvas", vae=vae, model=model, width=fam["width"], height=fam["height"],
                        length=length, invalid_size="snap"), 0)
        if cap == "i2v":
            image = g.add("LoadImage", "start image", image=IMAGE_IN)
            latent = (place(latent, (image, 0), "start", "all", 1, seen((image, 0))), 0)
        elif cap in ("extend_forward", "extend_backward", "loop"):
            clip = _clip(g, fam, CLIP_A)
            position, use = {"extend_forward": ("start", "last"), "extend_backward": ("end", "first"),
                             "loop": ("start", "first")}[cap]
            first = place(latent, (clip, 0), position, use, n)
            latent = (first, 0)
            view = seen((first, 1))
            if cap == "loop":
                last = place(latent, (clip, 0), "end", "first", n, view)
                latent, view = (last, 0), seen((last, 1))
            if view:
                sampler_in["clip_vision_output"] = view
        elif cap == "connect":
            a, b = _clip(g, fam, CLIP_A), _clip(g, fam, CLIP_B)
            first = place(latent, (a, 0), "start", "last", n)
            last = place((first, 0), (b, 0), "end", "first", n, seen((first, 1)))
            latent = (last, 0)
            if vision:
                sampler_in["clip_vision_output"] = seen((last, 1))
    sampled = g.add("SpacetimeSampler", latent=latent, **sampler_in)
    frames = g.add("SpacetimeVAEDecode", samples=(sampled, 0), vae=vae, tile=0)
    if cap == "image":
        g.add("SaveImage", images=(frames, 0), filename_prefix=prefix)
    else:
        extra = {"caption": caption} if caption else {}
        g.add("SpacetimeSaveVideo", images=(frames, 0), fps=float(fam["fps"]), filename_prefix=prefix, format="mp4",
              **extra)
    return g


# Long video from a storyboard: a minute of one scene, segments of 4 s in a cycle of directions
LONG_FAMILIES = ("embedded", "wan21_t2v_1.3b", "wan22_ti2v_5b", "wan21_i2v_14b", "wan22_t2v_a14b")
LONG_SCENES = {"embedded": "a red circle {} on a black background",
               "file": "a red kite {} over a green meadow under a clear blue sky, steady camera"}
LONG_MOTIONS = ("moves to the right", "moves to the left", "stays still", "moves up", "moves down")


def long_storyboard(scene: str, seconds: float = 60.0, segment: float = 4.0) -> str:
    n = round(seconds / segment)
    return "\n".join(f"{segment:g}: " + scene.format(LONG_MOTIONS[i % len(LONG_MOTIONS)]) for i in range(n))


def build_long(family: str) -> Graph:
    fam = FAMILIES[family]
    g = Graph()
    text = {}
    if fam["kind"] == "embedded":
        loader = g.add("SpacetimeEmbeddedLoader", shift=fam["shift"], distilled=False)
        model, vae, text = (loader, 0), (loader, 1), {"text_encoder": (loader, 2)}
    else:
        dit = g.add("SpacetimeDiTLoader", dit_name=fam["dit"], shift=fam["shift"],
                    low_noise_dit_name=fam.get("low_dit", "none"))
        model = (dit, 0)
        vae = (g.add("SpacetimeVAELoader", vae_name=fam["vae"]), 0)
        text = {"clip": (g.add("CLIPLoader", clip_name=TEXT_ENCODER, type="wan", device="default"), 0)}
        if "low_dit" in fam:      # Wan 2.2 A14B: both experts in every window
            text.update(low_noise_model=(dit, 1), boundary=fam["boundary"], low_noise_cfg=fam["low_cfg"])
        if fam.get("clip_vision"):  # I2V: the clip starts from an image; each window from the last frame
            text.update(image=(g.add("LoadImage", "start image", image=IMAGE_IN), 0),
                        clip_vision=(g.add("CLIPVisionLoader", clip_name=CLIP_VISION), 0), reanchor=True)
    g.add("SpacetimeLongVideo", "Long video", model=model, vae=vae, **text,
          storyboard=long_storyboard(LONG_SCENES["embedded" if fam["kind"] == "embedded" else "file"]),
          negative=fam.get("negative", NEGATIVE), fps=float(fam["fps"]), seconds=5.0, width=fam["width"],
          height=fam["height"], window=fam["length"], overlap=1 if fam.get("clip_vision") else 2, continuity="pixels",
          anchor=0.5, blend=False,
          expand_prompts="off",
          seed=42, steps=fam["steps"], cfg=fam["cfg"], solver="unipc", shift=fam["shift"],
          filename_prefix=f"spacetime/{family}_long_video")
    return g


def all_workflows() -> dict[str, Graph]:
    graphs = {f"{family}_{cap}": build(family, cap) for family, fam in FAMILIES.items() for cap in fam["caps"]}
    graphs.update({f"{family}_long_video": build_long(family) for family in LONG_FAMILIES})
    return graphs


API_DIR = "api"   # subfolder of workflows/ for the API twins and models.json
MANIFEST_DOC = ("Which models each workflow in this folder needs. 'workflows' maps a UI workflow's file name (in "
                "workflows/) to a list of model ids from model/weights/catalog.json; 'api_twins' maps each API-format "
                "twin here to its UI file, whose entry it shares. `spacetime-video run` checks them against the "
                "server's model folders before queueing and prints the `spacetime-video models download ...` command "
                "for the missing ones. Workflows that need no downloaded model may be listed with an empty list.")


def api_path(out_dir: Path, name: str) -> Path:
    """Where the API twin of machine name ``name`` lives."""
    return out_dir / API_DIR / f"{name}_api.json"


def needs(name: str) -> list[str]:
    """Catalog ids (model/weights/catalog.json) the workflow of machine name ``name`` needs."""
    family, cap = split_name(name)
    fam = FAMILIES[family]
    return NEEDS[family] + (fam["distill"]["needs"] if cap.endswith("_4step") and "distill" in fam else [])


def write_manifest(out_dir: Path) -> Path:
    """workflows/api/models.json: this generator's workflows added to the entries of others; entries
    whose UI file is gone dropped; every API twin whose machine name titles a UI file here mapped to it."""
    path = out_dir / API_DIR / "models.json"
    data = json.loads(path.read_text()) if path.is_file() else {"format": 1, "workflows": {}}
    data["_doc"] = MANIFEST_DOC
    entries = {**data["workflows"], **{ui_file(name): needs(name) for name in all_workflows()}}
    data["workflows"] = {k: v for k, v in sorted(entries.items()) if (out_dir / k).is_file()}
    twins = {}
    for twin in sorted((out_dir / API_DIR).glob("*_api.json")):
        try:
            ui = ui_file(twin.name.removesuffix("_api.json"))
        except KeyError:       # an API graph not named <family>_<capability>
            continue
        if (out_dir / ui).is_file():
            twins[twin.name] = ui
    data["api_twins"] = twins
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path


def card_frames() -> dict[str, Callable[[], torch.Tensor]]:
    """The frame on each embedded workflow's card, by title: the embedded model's first frame for
    text to video / image, else the frame of the example input that the output starts with."""
    from ..model.example_inputs import EXAMPLE_INPUTS_DIR as X
    from ..model.prompt_expander import expand_prompt
    from ..pipeline import generate_embedded

    @functools.cache
    def generated() -> torch.Tensor:
        fam = FAMILIES["embedded"]
        video = generate_embedded(expand_prompt(fam["prompt"], model_family="embedded", seed=0, max_words=40), seed=42)
        return ((video[:, 0] + 1) / 2).permute(1, 2, 0)       # (H, W, 3) in 0..1

    placed = {"i2v": lambda: image_frame(X / IMAGE_IN), "extend_forward": lambda: video_frame(X / CLIP_A, -1),
              "connect": lambda: video_frame(X / CLIP_A, -1), "loop": lambda: video_frame(X / CLIP_A, 0),
              "extend_backward": lambda: video_frame(X / CLIP_A, 0), "edit": lambda: video_frame(X / CLIP_A, 0)}
    caps = [*FAMILIES["embedded"]["caps"], "long_video"]
    return {title(f"embedded_{cap}"): placed.get(cap, generated) for cap in caps}


def write(out_dir: Path, thumbnails: bool = True) -> list[Path]:
    (out_dir / API_DIR).mkdir(parents=True, exist_ok=True)
    written = []
    for name, graph in all_workflows().items():
        for path, data in ((out_dir / ui_file(name), graph.ui()), (api_path(out_dir, name), graph.api())):
            path.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")
            written.append(path)
    written.append(write_manifest(out_dir))
    if thumbnails:   # a card for every UI workflow at the top, the generator's and any other
        written += write_thumbnails(out_dir, card_frames(), describe)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "workflows")
    args = parser.parse_args(argv)
    paths = write(args.out)
    print(f"wrote {len(paths)} workflow files to {args.out}")  # noqa: T201 (a script's one line of output)
    return 0
