"""Generate the pack's workflows: every Sora capability for every model family, each as a
UI-format graph (draggable into ComfyUI) and its API-format twin.

    python scripts/make_workflows.py [--out workflows/]

A workflow has a machine name ``<family>_<capability>`` (``embedded_t2v``) and a title
("Text to video - Embedded (CPU)", ``title``). Layout: ``workflows/TITLE.json`` (UI format) with
its card picture ``TITLE.jpg`` at the top, which ComfyUI lists in its templates browser under the
file name; ``workflows/api/NAME_api.json`` (the machine name, handy on a command line) and
``workflows/api/models.json`` (the models each workflow needs, and which UI file each API twin
belongs to) in a subfolder the browser does not list.

Both formats come from one graph description (``workflow_graph``), so they cannot drift apart.
Sampling defaults are the official Wan configs'.
"""
from __future__ import annotations

import argparse
import functools
import json
from pathlib import Path
from typing import Callable

import torch

from ..model.embedded import config as EMB
from ..samplers.experts import WAN22_BOUNDARY
from ..samplers.presets import FEW_STEP_PRESETS
from .thumbnails import image_frame, video_frame, write_thumbnails
from .workflow_graph import Graph

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


# Long video from a storyboard: a minute of one scene in 4 s segments, in a cycle of directions, each
# window keeping the last five frames of the one before (overlap 2) so that motion carries across
# joints; I2V windows start from the last frame (overlap 1). The embedded model samples its long
# videos at its own long-video guidance (bench/RESULTS.md).
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
          height=fam["height"], window=fam["length"],
          overlap=1 if fam.get("clip_vision") else 2, continuity="pixels",
          anchor=0.5, blend=False,
          expand_prompts="off",
          seed=42, steps=fam["steps"], cfg=EMB.LONG_GUIDANCE if fam["kind"] == "embedded" else fam["cfg"],
          solver="unipc", shift=fam["shift"], filename_prefix=f"spacetime/{family}_long_video")
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
