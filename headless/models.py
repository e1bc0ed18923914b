"""The models a workflow needs (``workflows/api/models.json`` and the catalog files its graph names),
checked against a server or a models folder; the catalog itself is ``model.weights.catalog``."""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Iterable

from ..model.weights.catalog import ModelEntry, ModelError

log = logging.getLogger("spacetime.models")

PACK_ROOT = Path(__file__).resolve().parents[1]
MANIFEST_PATH = PACK_ROOT / "workflows" / "api" / "models.json"


def load_manifest(path: str | os.PathLike = MANIFEST_PATH) -> dict[str, list[str]]:
    """``workflows/api/models.json``: ``{"workflows": {"<file>.json": ["<catalog id>", ...]},
    "api_twins": {"<name>_api.json": "<file>.json"}}``.

    ``workflows`` keys are UI workflow file names in ``workflows/``; an API twin (in ``workflows/api/``)
    shares the entry of the UI file ``api_twins`` names, or else of ``X.json`` for ``X_api.json``,
    unless it has its own. Returns file name -> catalog ids, the twins included.
    """
    data = _read_manifest(path)
    entries = {k: list(v) for k, v in (data.get("workflows") or {}).items()}
    for twin, ui in api_twins(path).items():
        entries.setdefault(twin, entries.get(ui, []))
    return entries


def api_twins(path: str | os.PathLike = MANIFEST_PATH) -> dict[str, str]:
    """API twin file name (in ``workflows/api/``) -> the UI workflow file (in ``workflows/``) it is the API form of."""
    return dict(_read_manifest(path).get("api_twins") or {})


def _read_manifest(path: str | os.PathLike) -> dict:
    p = Path(path)
    if not p.exists():
        return {}
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise ModelError(f"{p} is not valid JSON: {e}") from e


def needed_ids(workflow_path: str | os.PathLike, graph: dict, catalog: dict[str, ModelEntry],
               manifest_path: str | os.PathLike = MANIFEST_PATH) -> list[str]:
    """Catalog ids a workflow needs: its manifest entry, then any catalog file its graph names."""
    ids = manifest_ids(workflow_path, load_manifest(manifest_path))
    return ids + [i for i in referenced_ids(graph, catalog) if i not in ids]


def manifest_ids(workflow_path: str | os.PathLike, manifest: dict[str, list[str]]) -> list[str]:
    name = Path(workflow_path).name
    if name in manifest:
        return manifest[name]
    if name.endswith("_api.json"):
        return manifest.get(name[: -len("_api.json")] + ".json", [])
    return []


def referenced_ids(graph: dict, catalog: dict[str, ModelEntry]) -> list[str]:
    """Catalog ids whose file name is an input value of an API-format graph or a widget value
    of a UI workflow (a loader's ``unet_name``, ``vae_name``...), so any workflow gets its
    models checked, listed in the manifest or not."""
    by_name = {e.filename: e.id for e in catalog.values()}
    if isinstance(graph.get("nodes"), list):  # UI format, subgraphs included
        nodes = list(graph["nodes"])
        for sg in (graph.get("definitions") or {}).get("subgraphs") or []:
            nodes += sg.get("nodes", [])
        values = [v for n in nodes if n.get("mode", 0) not in (2, 4)
                  for v in (n.get("widgets_values") or [])
                  if not isinstance(n.get("widgets_values"), dict)]
    else:
        values = [v for n in graph.values() for v in (n.get("inputs") or {}).values()]
    found = []
    for value in values:
        if isinstance(value, str) and value in by_name and by_name[value] not in found:
            found.append(by_name[value])
    return found


def download_command(ids: Iterable[str], models_dir: str | os.PathLike | None = None) -> str:
    where = f" --models-dir {models_dir}" if models_dir else ""
    return f"spacetime-video models download {' '.join(ids)}{where}"


def missing_local(entries: Iterable[ModelEntry], models_dir: str | os.PathLike) -> list[ModelEntry]:
    return [e for e in entries if not e.destination(models_dir).is_file()]


def missing_on_server(entries: Iterable[ModelEntry], client: Any) -> list[ModelEntry]:
    """Entries the server's model folders lack, asked through ``GET /models/<folder>``."""
    listing: dict[str, set[str]] = {}
    out = []
    for e in entries:
        if e.folder not in listing:
            try:
                names = client.get_json(f"/models/{e.folder}")
            except Exception as err:  # noqa: BLE001 - an old server without the route
                log.warning("could not list the server's %s folder: %s", e.folder, err)
                names = None
            listing[e.folder] = None if names is None else {Path(n).name for n in names}
        if listing[e.folder] is not None and e.filename not in listing[e.folder]:
            out.append(e)
    return out


def default_models_dir(comfyui: str | os.PathLike | None = None) -> Path:
    """``<ComfyUI>/models`` for an explicit or auto-detected ComfyUI folder."""
    from .host import find_comfyui

    return find_comfyui(comfyui) / "models"
