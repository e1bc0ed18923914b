"""Spacetime: Sora-style video generation (Wan 2.1 / 2.2) as ComfyUI nodes.

Importable two ways:
  * as the installed package ``spacetime_video`` (``pip install -e .``), with no ComfyUI;
  * as a ComfyUI custom node folder, under any folder name: ComfyUI calls
    ``comfy_entrypoint`` and only then are the nodes (and ``comfy``) imported.

The public Python API: ``load_vae``, ``load_dit``, ``generate``, ``generate_latent``, ``generate_embedded``,
``generate_long``, ``generate_long_embedded``, ``expand_prompt``, and the ``model``, ``samplers`` and
``long_video`` packages (README, "Python API").
"""
if __package__:  # pytest may import this file bare (no package) when collecting tests/
    from . import long_video, model, samplers
    from .long_video import generate_long, generate_long_embedded
    from .model import expand_prompt, load_dit, load_vae
    from .pipeline import Known, generate, generate_embedded, generate_latent

__version__ = "0.1.0"

# ComfyUI serves this folder to the web UI: web/spacetime.js shows the text a node reports
# (the prompt expander's caption and notes, the canvas readout) on the node.
WEB_DIRECTORY = "./web"


async def comfy_entrypoint():
    """ComfyUI V3 entry point: the pack's nodes as one extension."""
    from .nodes import extension

    return extension()


__all__ = ["model", "samplers", "long_video", "load_vae", "load_dit", "generate", "generate_latent",
           "generate_embedded", "generate_long", "generate_long_embedded", "Known", "expand_prompt",
           "comfy_entrypoint", "__version__", "WEB_DIRECTORY"]
