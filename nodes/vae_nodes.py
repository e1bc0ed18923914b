"""VAE Encode / Decode for video: IMAGE frames <-> raw Wan LATENT, chunk by chunk along time
(and in spatial tiles when asked), with a progress bar and interrupt checks per chunk.
Any ComfyUI VAE works: ours streams (``comfy_vae.SpacetimeVAE``); a native one is called as
ComfyUI would."""
from __future__ import annotations

from comfy_api.latest import io

from .comfy_vae import SpacetimeVAE
from .errors import blamed_on
from .validation import SpacetimeNode


def _tile_input() -> io.Int.Input:
    """The spatial tiling input both VAE nodes share."""
    return io.Int.Input("tile", default=0, min=0, max=4096, step=32,
                        tooltip="spatial tile size in pixels (0 = whole frames)")


def _tile(tile: int) -> tuple[int, int] | None:
    return (tile, tile) if tile > 0 else None


class SpacetimeVAEEncode(SpacetimeNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SpacetimeVAEEncode",
            display_name="VAE Encode Video (Spacetime)",
            category="Spacetime/vae",
            description="Frames [N, H, W, 3] (N = 4k+1) -> a raw Wan latent [1, C, k+1, H/s, W/s].",
            inputs=[
                io.Image.Input("images", tooltip="frames [N, H, W, 3]; Wan's VAE takes 4k+1 of them"),
                io.Vae.Input("vae", tooltip="a Wan 2.1 / 2.2 VAE (ours or ComfyUI's)"),
                _tile_input(),
            ],
            outputs=[io.Latent.Output()],
        )

    @classmethod
    def execute(cls, images, vae, tile) -> io.NodeOutput:
        if not isinstance(vae, SpacetimeVAE):
            return io.NodeOutput({"samples": vae.encode(images[..., :3])})
        with blamed_on(cls, "images"):
            return io.NodeOutput({"samples": vae.encode_frames(images, _tile(tile))})


class SpacetimeVAEDecode(SpacetimeNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SpacetimeVAEDecode",
            display_name="VAE Decode Video (Spacetime)",
            category="Spacetime/vae",
            description="A raw Wan latent -> frames, streamed one latent frame at a time (peak "
                        "memory does not grow with clip length).",
            inputs=[
                io.Latent.Input("samples", tooltip="a latent video, e.g. from the Sampler"),
                io.Vae.Input("vae", tooltip="the VAE the latent was made with"),
                _tile_input(),
            ],
            outputs=[io.Image.Output()],
        )

    @classmethod
    def execute(cls, samples, vae, tile) -> io.NodeOutput:
        z = samples["samples"]
        if not isinstance(vae, SpacetimeVAE):
            images = vae.decode(z)
        else:
            with blamed_on(cls, "samples"):
                images = vae.decode(z, tile=_tile(tile))
        return io.NodeOutput(images.reshape(-1, *images.shape[-3:]))


NODES = [SpacetimeVAEEncode, SpacetimeVAEDecode]
