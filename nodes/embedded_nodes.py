"""The embedded tiny model as nodes: its loader (MODEL, VAE, text encoder from the weights
shipped in model/embedded/weights), a loader for a tiny text encoder file in
models/text_encoders, and Text Encode (caption -> ComfyUI CONDITIONING)."""
from __future__ import annotations

import folder_paths
import torch
from comfy_api.latest import io

from ..model.embedded import config as emb
from ..model.embedded import load_embedded, load_text_encoder
from ..model.embedded.text_encoder import TinyTextEncoder
from ..model.weights import WeightsError
from .comfy_model import latent_format_for, wrap_dit
from .comfy_vae import wrap_vae
from .errors import blamed_on, node_error
from .loaders import model_file
from .validation import SpacetimeNode

TextEncoder = io.Custom("SPACETIME_TEXT_ENCODER")


def _conditioning(encoder: TinyTextEncoder, text: str) -> list:
    with torch.no_grad():
        ctx = encoder.encode([text]).float()  # (1, max_len, text_dim)
    return [[ctx, {}]]


class SpacetimeEmbeddedLoader(SpacetimeNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SpacetimeEmbeddedLoader",
            display_name="Load Embedded Tiny Model (Spacetime)",
            category="Spacetime/loaders",
            description="The tiny model shipped with the pack (64x64, 17 frames, synthetic world of "
                        "coloured shapes): runs on a CPU in seconds; `distilled` gives its 4-step version.",
            inputs=[io.Float.Input("shift", default=emb.DEFAULT_SHIFT, min=0.1, max=100.0, step=0.1,
                                   tooltip="schedule shift the MODEL samples with (the model was trained at this default)"),
                    io.Boolean.Input("distilled", default=False, optional=True,
                                     tooltip=f"the DiT with its {emb.DISTILLED_STEPS}-step distilled LoRA merged "
                                             f"in: sample it with {emb.DISTILLED_STEPS} steps at shift "
                                             f"{emb.DEFAULT_SHIFT:g}, cfg 1, solver {emb.DISTILLED_SOLVER} "
                                             "(1 DiT evaluation a step instead of 2)")],
            outputs=[io.Model.Output(), io.Vae.Output(), TextEncoder.Output("text_encoder", display_name="text_encoder")],
        )

    @classmethod
    def execute(cls, shift, distilled=False) -> io.NodeOutput:
        try:
            m = load_embedded(distilled=distilled)
        except (WeightsError, OSError) as e:
            raise node_error(cls, "weights", f"{e} (they ship in {emb.WEIGHTS_DIR})") from None
        fmt = latent_format_for(m.vae.config.z_dim, m.vae.latent_mean.flatten(), m.vae.latent_std.flatten(),
                                rgb=(emb.LATENT_RGB_FACTORS, emb.LATENT_RGB_BIAS))
        model = wrap_dit(m.dit, shift=shift, per_token=True, latent_format=fmt, name="embedded")
        return io.NodeOutput(model, wrap_vae(m.vae), m.text_encoder)


class SpacetimeTextEncoderLoader(SpacetimeNode):
    FOLDERS = {"text_encoder_name": "text_encoders"}

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SpacetimeTextEncoderLoader",
            display_name="Load Tiny Text Encoder (Spacetime)",
            category="Spacetime/loaders",
            description="A Spacetime tiny text encoder from models/text_encoders (Wan's umT5 loads "
                        "with ComfyUI's own CLIPLoader, type wan).",
            inputs=[io.Combo.Input("text_encoder_name", options=folder_paths.get_filename_list("text_encoders"),
                                   tooltip="a Spacetime text encoder file in models/text_encoders")],
            outputs=[TextEncoder.Output("text_encoder", display_name="text_encoder")],
        )

    @classmethod
    def execute(cls, text_encoder_name) -> io.NodeOutput:
        path = model_file("text_encoders", text_encoder_name)
        if path is None:
            raise node_error(cls, "text_encoder_name", f"{text_encoder_name!r} is not in models/text_encoders")
        with blamed_on(cls, "text_encoder_name", RuntimeError):  # RuntimeError: tensors of other shapes
            return io.NodeOutput(load_text_encoder(path))


class SpacetimeTextEncode(SpacetimeNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SpacetimeTextEncode",
            display_name="Text Encode (Spacetime tiny)",
            category="Spacetime/conditioning",
            description="A caption -> CONDITIONING with the embedded model's text encoder.",
            inputs=[TextEncoder.Input("text_encoder", tooltip="from the embedded loader or the Text Encoder loader"),
                    io.String.Input("text", multiline=True, default="",
                                    tooltip="the caption, in the embedded model's words (a Prompt Expander writes them)")],
            outputs=[io.Conditioning.Output()],
        )

    @classmethod
    def execute(cls, text_encoder, text) -> io.NodeOutput:
        return io.NodeOutput(_conditioning(text_encoder, text))


NODES = [SpacetimeEmbeddedLoader, SpacetimeTextEncoderLoader, SpacetimeTextEncode]
