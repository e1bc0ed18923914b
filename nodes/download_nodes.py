"""Model download node: a catalog id in, the file in ComfyUI's model folder, its name out."""
from __future__ import annotations

import math
import os
import time
from pathlib import Path

import comfy.model_management
import folder_paths
from comfy_api.latest import io

from ..model.weights import catalog as M
from .errors import node_error
from .validation import SpacetimeNode

TIMEOUT_ENV = "SPACETIME_DOWNLOAD_TIMEOUT"  # seconds one download may take (default 6 hours)
DEFAULT_TIMEOUT_S = 6 * 3600.0


def download_timeout() -> float:
    """The time limit of one download in seconds, from ``SPACETIME_DOWNLOAD_TIMEOUT`` (0 or
    less: none)."""
    raw = os.environ.get(TIMEOUT_ENV, "").strip()
    try:
        value = float(raw) if raw else DEFAULT_TIMEOUT_S
    except ValueError:
        raise M.ModelError(f"{TIMEOUT_ENV}={raw!r} is not a number of seconds") from None
    return value if math.isfinite(value) and value > 0 else math.inf


def _catalog_ids() -> list[str]:
    try:
        return sorted(M.load_catalog())
    except M.ModelError:
        return []


class SpacetimeModelDownload(SpacetimeNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        ids = _catalog_ids()
        return io.Schema(
            node_id="SpacetimeModelDownload",
            display_name="Download Model (Spacetime)",
            category="Spacetime/models",
            description="Downloads a model of the Spacetime catalog from Hugging Face into "
                        "ComfyUI's model folder (resumes partial downloads; uses the local hub "
                        "cache without network) and outputs its file name for a loader.",
            inputs=[io.Combo.Input("model", options=ids, default=ids[0] if ids else None,
                                   tooltip="catalog id (spacetime-video models list)")],
            outputs=[io.String.Output("file_name", display_name="file_name",
                                      tooltip="the file's name inside its model folder, for a loader's file input"),
                     io.String.Output("folder", display_name="model_folder",
                                      tooltip="the ComfyUI model folder it went to (diffusion_models, vae, ...)")],
        )

    @classmethod
    def fingerprint_inputs(cls, model: str) -> str:
        # Run again when the file disappears; otherwise the cached result stands.
        entry = M.load_catalog().get(model)
        if entry is None:
            return model
        path = folder_paths.get_full_path(entry.folder, entry.filename)
        return f"{model}:{path}"

    @classmethod
    def execute(cls, model: str) -> io.NodeOutput:
        try:
            (entry,) = M.lookup([model])
            existing = folder_paths.get_full_path(entry.folder, entry.filename)
            if existing:
                return io.NodeOutput(entry.filename, entry.folder)
            folders = folder_paths.get_folder_paths(entry.folder)
            if not folders:
                raise M.ModelError(f"ComfyUI has no '{entry.folder}' model folder configured "
                                   "(check extra_model_paths.yaml)")
            # 0.3.75 lists models/unet before models/diffusion_models: prefer the catalog's name.
            dest_dir = next((f for f in folders if Path(f).name == entry.folder), folders[0])
            limit = download_timeout()
            # the hub download blocks: it runs in a child process that the cancel button ends
            M.download_to(entry, Path(dest_dir) / entry.filename,
                          should_stop=comfy.model_management.processing_interrupted,
                          deadline=time.monotonic() + limit if math.isfinite(limit) else None)
        except M.DownloadStopped:
            comfy.model_management.throw_exception_if_processing_interrupted()  # resets the flag
            raise comfy.model_management.InterruptProcessingException() from None
        except M.DownloadTimedOut as e:
            raise node_error(cls, "model", f"{e} (the limit is {TIMEOUT_ENV}={limit:g} seconds)") from None
        except M.ModelError as e:
            raise node_error(cls, "model", str(e)) from None
        except OSError as e:  # e.g. a models folder that cannot be created or written
            raise node_error(cls, "model", f"cannot write the file of {model!r} into ComfyUI's models folder: {e}") from None
        return io.NodeOutput(entry.filename, entry.folder)


NODES = [SpacetimeModelDownload]
