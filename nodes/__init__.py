"""ComfyUI nodes (V3). The only part of the pack that imports ComfyUI.

Every module in this folder that defines ``NODES`` (a list of ``io.ComfyNode`` classes)
contributes them; node ids are permanent API: prefix ``Spacetime``, never renamed.
Helper modules here that do not import ComfyUI (e.g. ``video_file``) stay importable
without it, so this file imports ComfyUI only when the node list is asked for.
"""
from __future__ import annotations

import importlib
import logging
import pkgutil

log = logging.getLogger("spacetime.nodes")


def all_nodes() -> list:
    """Every node class of the pack, checked for unique ``Spacetime*`` ids."""
    nodes = []
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        try:
            module = importlib.import_module(f"{__name__}.{info.name}")
        except Exception:  # one broken module must not take the whole pack down
            log.exception("Spacetime: nodes/%s.py failed to import; its nodes are missing", info.name)
            continue
        nodes.extend(getattr(module, "NODES", []))
    ids = [n.GET_SCHEMA().node_id for n in nodes]
    bad = [i for i in ids if not i.startswith("Spacetime")]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if bad or dupes:
        raise RuntimeError(f"Spacetime node ids must be unique and start with 'Spacetime': {bad or dupes}")
    return nodes


def install_example_inputs() -> None:
    """Copy the shipped example inputs into ComfyUI's input folder (never over a user's file)."""
    from ..model.example_inputs import install_example_inputs as install

    try:
        import folder_paths

        install(folder_paths.get_input_directory())
    except Exception:  # examples are a convenience: never stop the pack from loading
        log.warning("Spacetime: could not copy the example inputs into ComfyUI's input folder", exc_info=True)


def extension():
    """The pack as one ComfyUI V3 extension; copies the example inputs on load."""
    from comfy_api.latest import ComfyExtension

    install_example_inputs()

    class SpacetimeExtension(ComfyExtension):
        async def get_node_list(self) -> list:
            return all_nodes()

    return SpacetimeExtension()
