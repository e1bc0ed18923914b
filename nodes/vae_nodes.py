"""VAE Encode / Decode for video: IMAGE frames <-> raw Wan LATENT, chunk by chunk along time
(and in spatial tiles when asked), with a progress bar and interrupt checks per chunk.
Any ComfyUI VAE works: ours streams; a native one is called as ComfyUI would."""
from __future__ import annotations

import comfy.model_management as mm
import comfy.utils
import torch
from comfy_api.latest import io

from .comfy_vae import spacetime_vae
from .errors import node_error


def _tile_input() -> io.Int.Input:
    """The spatial tiling input both VAE nodes share."""
    return io.Int.Input("tile", default=0, min=0, max=4096, step=32,
                        tooltip="spatial tile size in pixels (0 = whole frames)")


def _tile(tile: int) -> tuple[int, int] | None:
    return (tile, tile) if tile > 0 else None


class SpacetimeVAEEncode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SpacetimeVAEEncode",
            display_name="VAE Encode Video (Spacetime)",
            category="Spacetime/vae",
            description="Frames [N, H, W, 3] (N = 4k+1) -> a raw Wan latent [1, C, k+1, H/s, W/s].",
            inputs=[
                io.Image.Input("images"),
                io.Vae.Input("vae"),
                _tile_input(),
            ],
            outputs=[io.Latent.Output()],
        )

    @classmethod
    def execute(cls, images, vae, tile) -> io.NodeOutput:
        ours = spacetime_vae(vae)
        if ours is None:
            return io.NodeOutput({"samples": vae.encode(images[..., :3])})
        video = images[..., :3].movedim(-1, 0).unsqueeze(0) * 2 - 1  # (1, 3, N, H, W) in [-1, 1]
        try:
            ours.check_video(video)
        except ValueError as e:
            raise node_error(cls, "images", str(e)) from None
        mm.load_models_gpu([vae.patcher], memory_required=vae.memory_used_encode(video.shape, ours.dtype))
        z = ours.encode(video.to(ours.device, ours.dtype), tile=_tile(tile))
        return io.NodeOutput({"samples": z.float().to(mm.intermediate_device())})


class SpacetimeVAEDecode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SpacetimeVAEDecode",
            display_name="VAE Decode Video (Spacetime)",
            category="Spacetime/vae",
            description="A raw Wan latent -> frames, streamed one latent frame at a time (peak "
                        "memory does not grow with clip length).",
            inputs=[
                io.Latent.Input("samples"),
                io.Vae.Input("vae"),
                _tile_input(),
            ],
            outputs=[io.Image.Output()],
        )

    @classmethod
    def execute(cls, samples, vae, tile) -> io.NodeOutput:
        z = samples["samples"]
        ours = spacetime_vae(vae)
        if ours is None:
            images = vae.decode(z)
            return io.NodeOutput(images.reshape(-1, *images.shape[-3:]))
        if z.ndim != 5 or z.shape[1] != ours.config.z_dim:
            raise node_error(cls, "samples", f"latent of shape {tuple(z.shape)} does not fit this Wan "
                             f"{ours.config.version} VAE ({ours.config.z_dim} channels): decode it with the "
                             "VAE it was made with")
        st = ours.config.stride[0]
        b, _, t, h, w = z.shape
        frames = 1 + st * (t - 1)
        out = torch.empty(b, frames, h * ours.config.stride[1], w * ours.config.stride[2], 3,
                          device=mm.intermediate_device())
        pbar = comfy.utils.ProgressBar(frames)

        def on_piece(piece: torch.Tensor, start: int) -> None:  # piece (B, 3, n, H, W) in [-1, 1]
            mm.throw_exception_if_processing_interrupted()
            n = piece.shape[2]
            out[:, start:start + n] = ((piece.float() + 1) / 2).clamp(0, 1).movedim(1, -1).to(out.device)
            pbar.update_absolute(start + n, frames)

        mm.load_models_gpu([vae.patcher], memory_required=vae.memory_used_decode(z.shape, ours.dtype))
        ours.decode(z.to(ours.device, ours.dtype), callback=on_piece, tile=_tile(tile))
        return io.NodeOutput(out.reshape(-1, *out.shape[2:]))


NODES = [SpacetimeVAEEncode, SpacetimeVAEDecode]
