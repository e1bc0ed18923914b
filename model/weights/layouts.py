"""Checkpoint layouts: the one place where key names are translated.

Our modules are named after the official Wan checkpoint keys, so the official layout loads
as-is. Other layouts (ComfyUI's ``model.diffusion_model.`` prefix, diffusers' names) are
mapped onto it here, by ordered regex rules, one table per model kind.
"""
from __future__ import annotations

import re
from typing import Iterable, Mapping

import torch

Rule = tuple[str, str]  # (regex on the foreign key, replacement giving the official key)

# Prefixes that wrap the official names in the files users have (ComfyUI saves, merges).
KNOWN_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "first_stage_model.", "vae.", "model.")


def strip_prefix(sd: Mapping[str, torch.Tensor], markers: Iterable[str]) -> dict[str, torch.Tensor]:
    """Remove a common wrapper prefix if every key carrying one of ``markers`` has it.

    ``markers`` are official key stems (e.g. ``"blocks.0."``) used to tell which prefix, if
    any, the file uses.
    """
    markers = tuple(markers)
    for prefix in KNOWN_PREFIXES:
        if any(k.startswith(prefix) and k[len(prefix):].startswith(markers) for k in sd):
            return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    return dict(sd)


def rename(sd: Mapping[str, torch.Tensor], rules: Iterable[Rule]) -> dict[str, torch.Tensor]:
    """Apply the first matching rule to each key (``re.fullmatch``); unmatched keys are kept."""
    compiled = [(re.compile(p), r) for p, r in rules]
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        for pattern, repl in compiled:
            m = pattern.fullmatch(key)
            if m:
                key = m.expand(repl)
                break
        out[key] = value
    return out


# --------------------------------------------------------------------------------------------
# Wan video VAE (2.1 and 2.2): diffusers' AutoencoderKLWan names -> official Wan names.
# Official: encoder.conv1, encoder.downsamples.*, encoder.middle.{0,1,2}, encoder.head.{0,2},
# conv1 / conv2 (the quant convs), the same for the decoder with upsamples.*. In 2.1 the
# levels are one flat Sequential (decoder: nrb + 1 residual blocks then one resample per level,
# so level i starts at index i * (nrb + 2)); in 2.2 each level is its own block with an inner
# Sequential. Residual blocks: residual.0 norm1, residual.2 conv1, residual.3 norm2,
# residual.6 conv2, shortcut.

# Keys that end with one of these mark where the VAE's own names start (after any prefix).
VAE_ANCHORS = ("decoder.conv1.weight", "decoder.conv_in.weight", "encoder.conv1.weight",
               "encoder.conv_in.weight")

_RES = r"(.*\.(?:resnets|down_blocks)\.\d+)"   # a diffusers residual block (2.1 encoder: flat)
VAE_DIFFUSERS_RESNET_RULES: list[Rule] = [
    (_RES + r"\.norm1\.gamma", r"\1.residual.0.gamma"),
    (_RES + r"\.conv1\.(weight|bias)", r"\1.residual.2.\2"),
    (_RES + r"\.norm2\.gamma", r"\1.residual.3.gamma"),
    (_RES + r"\.conv2\.(weight|bias)", r"\1.residual.6.\2"),
    (_RES + r"\.conv_shortcut\.(weight|bias)", r"\1.shortcut.\2"),
]
VAE_DIFFUSERS_FIXED_RULES: list[Rule] = [
    (r"(encoder|decoder)\.conv_in\.(weight|bias)", r"\1.conv1.\2"),
    (r"(encoder|decoder)\.mid_block\.resnets\.0\.(.+)", r"\1.middle.0.\2"),
    (r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)", r"\1.middle.1.\2"),
    (r"(encoder|decoder)\.mid_block\.resnets\.1\.(.+)", r"\1.middle.2.\2"),
    (r"(encoder|decoder)\.norm_out\.gamma", r"\1.head.0.gamma"),
    (r"(encoder|decoder)\.conv_out\.(weight|bias)", r"\1.head.2.\2"),
    (r"quant_conv\.(weight|bias)", r"conv1.\1"),
    (r"post_quant_conv\.(weight|bias)", r"conv2.\1"),
]


def vae_diffusers_level_rules(levels: int, num_res_blocks: int, residual: bool) -> list[Rule]:
    """Rules for the down/up levels, which depend on the architecture (``residual``: 2.2)."""
    nrb = num_res_blocks
    if residual:
        return [
            (r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", r"encoder.downsamples.\1.downsamples.\2.\3"),
            (r"encoder\.down_blocks\.(\d+)\.downsampler\.(.+)", rf"encoder.downsamples.\1.downsamples.{nrb}.\2"),
            (r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", r"decoder.upsamples.\1.upsamples.\2.\3"),
            (r"decoder\.up_blocks\.(\d+)\.upsampler\.(.+)", rf"decoder.upsamples.\1.upsamples.{nrb + 1}.\2"),
        ]
    rules: list[Rule] = [(r"encoder\.down_blocks\.(\d+)\.(.+)", r"encoder.downsamples.\1.\2")]
    per_level = nrb + 2
    for i in range(levels):
        for j in range(nrb + 1):
            rules.append((rf"decoder\.up_blocks\.{i}\.resnets\.{j}\.(.+)", rf"decoder.upsamples.{i * per_level + j}.\1"))
        rules.append((rf"decoder\.up_blocks\.{i}\.upsamplers\.0\.(.+)",
                      rf"decoder.upsamples.{i * per_level + nrb + 1}.\1"))
    return rules


def vae_strip_prefix(sd: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], str]:
    """Drop whatever prefix wraps the VAE's keys (``first_stage_model.``, ``vae.``, ...);
    returns the state dict and the prefix found ("" if none)."""
    for anchor in VAE_ANCHORS:
        for key in sd:
            if key.endswith(anchor) and (key == anchor or key[-len(anchor) - 1] == "."):
                prefix = key[: -len(anchor)]
                return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}, prefix
    return dict(sd), ""


def wan_vae_to_official(sd: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], str]:
    """A Wan VAE state dict in official key names, and the layout it came in:
    "official", "prefixed" (official under a prefix) or "diffusers" (AutoencoderKLWan)."""
    sd, prefix = vae_strip_prefix(sd)
    if not any(k.startswith(("encoder.mid_block.", "decoder.mid_block.", "decoder.conv_in.")) for k in sd):
        return sd, "prefixed" if prefix else "official"
    up = [re.match(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.", k) for k in sd]
    up = [(int(m[1]), int(m[2])) for m in up if m]
    levels = 1 + max((i for i, _ in up), default=0)
    num_res_blocks = max((j for i, j in up if i == 0), default=0)  # the decoder has nrb + 1
    residual = any(re.match(r"encoder\.down_blocks\.\d+\.resnets\.", k) for k in sd)
    sd = rename(sd, VAE_DIFFUSERS_RESNET_RULES)
    sd = rename(sd, VAE_DIFFUSERS_FIXED_RULES + vae_diffusers_level_rules(levels, num_res_blocks, residual))
    return sd, "diffusers"

# --- DiT (Wan 2.1 / 2.2 transformer) ------------------------------------------------------
# Official names are ours. Diffusers' ``WanTransformer3DModel`` names map back by these rules
# (the inverse of diffusers' ``convert_wan_transformer_to_diffusers``). The trailing group keeps
# any tensor suffix: weight, bias, and the fp8 scales (scale_weight, weight_scale, scale_input).
DIT_MARKERS = ("patch_embedding.", "blocks.0.", "condition_embedder.", "head.", "proj_out.")
_S = r"(\.\w+)"
DIT_DIFFUSERS_RULES: list[Rule] = [
    (rf"condition_embedder\.time_embedder\.linear_1{_S}", r"time_embedding.0\1"),
    (rf"condition_embedder\.time_embedder\.linear_2{_S}", r"time_embedding.2\1"),
    (rf"condition_embedder\.time_proj{_S}", r"time_projection.1\1"),
    (rf"condition_embedder\.text_embedder\.linear_1{_S}", r"text_embedding.0\1"),
    (rf"condition_embedder\.text_embedder\.linear_2{_S}", r"text_embedding.2\1"),
    (rf"condition_embedder\.image_embedder\.norm1{_S}", r"img_emb.proj.0\1"),
    (rf"condition_embedder\.image_embedder\.ff\.net\.0\.proj{_S}", r"img_emb.proj.1\1"),
    (rf"condition_embedder\.image_embedder\.ff\.net\.2{_S}", r"img_emb.proj.3\1"),
    (rf"condition_embedder\.image_embedder\.norm2{_S}", r"img_emb.proj.4\1"),
    (r"condition_embedder\.image_embedder\.pos_embed", r"img_emb.emb_pos"),
    (rf"blocks\.(\d+)\.attn1\.to_(q|k|v){_S}", r"blocks.\1.self_attn.\2\3"),
    (rf"blocks\.(\d+)\.attn1\.to_out\.0{_S}", r"blocks.\1.self_attn.o\2"),
    (rf"blocks\.(\d+)\.attn1\.norm_(q|k){_S}", r"blocks.\1.self_attn.norm_\2\3"),
    (rf"blocks\.(\d+)\.attn2\.to_(q|k|v){_S}", r"blocks.\1.cross_attn.\2\3"),
    (rf"blocks\.(\d+)\.attn2\.to_out\.0{_S}", r"blocks.\1.cross_attn.o\2"),
    (rf"blocks\.(\d+)\.attn2\.norm_(q|k){_S}", r"blocks.\1.cross_attn.norm_\2\3"),
    (rf"blocks\.(\d+)\.attn2\.add_(k|v)_proj{_S}", r"blocks.\1.cross_attn.\2_img\3"),
    (rf"blocks\.(\d+)\.attn2\.norm_added_k{_S}", r"blocks.\1.cross_attn.norm_k_img\2"),
    (rf"blocks\.(\d+)\.norm2{_S}", r"blocks.\1.norm3\2"),  # diffusers' norm2 is the cross-attn norm
    (rf"blocks\.(\d+)\.ffn\.net\.0\.proj{_S}", r"blocks.\1.ffn.0\2"),
    (rf"blocks\.(\d+)\.ffn\.net\.2{_S}", r"blocks.\1.ffn.2\2"),
    (r"blocks\.(\d+)\.scale_shift_table", r"blocks.\1.modulation"),
    (r"scale_shift_table", r"head.modulation"),
    (rf"proj_out{_S}", r"head.head\1"),
]
# Keys some files carry that hold no weights of the model (ComfyUI's scaled-fp8 marker,
# diffusers' unused ``norm_added_q``).
DIT_IGNORED = re.compile(r"scaled_fp8|.*\.norm_added_q\.\w+|.*\.(scale_input|input_scale)")


def dit_official_names(keys: Iterable[str]) -> dict[str, str]:
    """Map each key of a DiT file in any supported layout to its official name.

    Returns {official_name: key_in_file}; ignorable keys (fp8 markers) are dropped. Official,
    ComfyUI-prefixed (``model.diffusion_model.``) and diffusers layouts are recognised.
    """
    names = strip_prefix({k: k for k in keys}, DIT_MARKERS)  # stripped name -> file key
    diffusers_marks = ("condition_embedder.", "scale_shift_table", "proj_out.")
    if any(k.startswith(diffusers_marks) or ".attn1." in k or ".attn2." in k for k in names):
        renamed = rename({k: k for k in names}, DIT_DIFFUSERS_RULES)  # official -> stripped
        names = {new: names[old] for new, old in renamed.items()}
    return {k: v for k, v in names.items() if not DIT_IGNORED.fullmatch(k)}



# LoRA files name a module, then one tensor of the adapter (``<module>.lora_A.weight``, ``.alpha``).
LORA_DIFFUSERS_PREFIX = "transformer."
_DIT_DIFFUSERS_COMPILED = [(re.compile(p), r) for p, r in DIT_DIFFUSERS_RULES]


def _official_module(module: str) -> str | None:
    """The official name of a module (or parameter) given in diffusers' names, or None."""
    for name, suffix in ((module + ".weight", ".weight"), (module, "")):
        for pattern, repl in _DIT_DIFFUSERS_COMPILED:
            m = pattern.fullmatch(name)
            if m:
                out = m.expand(repl)
                return out[: -len(suffix)] if suffix else out
    return None


def dit_lora_official_names(keys: Iterable[str]) -> dict[str, str]:
    """{name under ``diffusion_model.`` in official module names: key in the file} for a Wan
    DiT LoRA saved by diffusers (``transformer.blocks.0.attn1.to_q.lora_A.weight`` becomes
    ``diffusion_model.blocks.0.self_attn.q.lora_A.weight``), by the DiT rules above; a module
    with the same name in both layouts (``patch_embedding``) keeps it. Keys without the
    ``transformer.`` prefix (the official, ComfyUI and kohya layouts) are kept as they are."""
    out = {}
    for key in keys:
        if not key.startswith(LORA_DIFFUSERS_PREFIX):
            out[key] = key
            continue
        rest = key[len(LORA_DIFFUSERS_PREFIX):]
        new = rest
        # the module is the longest dotted prefix a rule knows: try each split, shortest first
        cuts = [i for i, c in enumerate(rest) if c == "."]
        for i in cuts:
            official = _official_module(rest[:i])
            if official is not None:
                new = official + rest[i:]
                break
        out["diffusion_model." + new] = key
    return out
