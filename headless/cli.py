"""``spacetime-video``: run any ComfyUI workflow headless, and manage the models it needs.

    spacetime-video run WORKFLOW.json [--out DIR] [--set NODE.INPUT=VALUE ...] [--seed N]
                                      [--server URL | --comfyui DIR] [--no-progress]
    spacetime-video convert WORKFLOW.json [--server URL]     # UI format -> API format on stdout
    spacetime-video models list
    spacetime-video models check WORKFLOW.json [--comfyui DIR | --models-dir DIR]
    spacetime-video models download ID... [--comfyui DIR | --models-dir DIR]

WORKFLOW may be in the web UI's format (what "Save" writes) or the API format. Without
``--server`` a local ComfyUI is started on a free loopback port for the run (the one this pack
is installed in, or the project's ``.host/ComfyUI``) and stopped afterwards.

Exit codes: 0 done, 1 host/usage problem, 2 the graph was refused before running (conversion,
``--set``, missing models, the server's validation), 3 a node failed while running,
4 interrupted (Ctrl-C stops the server's job too).
"""
from __future__ import annotations

import argparse
import json
import logging
import random
import sys
import tempfile
from pathlib import Path

from ..model.example_inputs import install_example_inputs
from ..model.weights.catalog import ModelError, download, load_catalog, lookup
from . import models as M
from .host import ComfyClient, ComfyHost, HostError
from .overrides import OverrideError, apply_overrides, set_seed
from .runner import (EXIT_EXECUTION, EXIT_HOST, EXIT_INTERRUPTED, EXIT_OK,  # noqa: F401
                     EXIT_VALIDATION, RunFailed, run_graph)
from .ui_to_api import ConversionError, ConversionReport, convert, is_ui_workflow

log = logging.getLogger("spacetime.cli")


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise RunFailed(EXIT_HOST, f"workflow file not found: {path}")
    except json.JSONDecodeError as e:
        raise RunFailed(EXIT_HOST, f"{path} is not valid JSON: {e}")


def to_api(data: dict, path: Path, object_info: dict | None, seed: int | None = None) -> dict:
    """An API-format graph from either format (UI conversion needs the server's object_info);
    ``seed`` also fixes the choices of dynamic prompts."""
    if is_ui_workflow(data):
        if object_info is None:
            raise RunFailed(EXIT_HOST, f"{path} is in the UI format: converting it needs a server")
        report = ConversionReport()
        try:
            rng = random.Random(seed) if seed is not None else None
            graph = convert(data, object_info, report, rng)
        except ConversionError as e:
            raise RunFailed(EXIT_VALIDATION, f"{path}: {e}")
        for sg in report.subgraphs:
            log.info("flattened subgraph %s", sg)
        return graph
    if isinstance(data, dict) and data and all(isinstance(v, dict) and "class_type" in v
                                               for v in data.values()):
        return data
    raise RunFailed(EXIT_HOST, f"{path} is neither a UI workflow (nodes/links) nor an API-format "
                               "graph (node id -> {class_type, inputs})")


def check_models(graph: dict, workflow: Path, client: ComfyClient, manifest_path: Path,
                 models_dir: str | None = None) -> None:
    """Refuse to queue when the manifest's or the graph's catalog models are not on the server."""
    catalog = load_catalog()
    ids = M.needed_ids(workflow, graph, catalog, manifest_path)
    if not ids:
        return
    missing = M.missing_on_server(lookup(ids, catalog), client)
    if missing:
        lines = [f"  {e.id}: {e.folder}/{e.filename}" for e in missing]
        raise RunFailed(EXIT_VALIDATION, f"{workflow.name} needs models the server does not have:\n"
                        + "\n".join(lines) + "\nDownload them with:\n  "
                        + M.download_command([e.id for e in missing], models_dir))


def prepare(args: argparse.Namespace, client: ComfyClient) -> dict:
    path = Path(args.workflow)
    data = read_json(path)
    info = client.object_info() if is_ui_workflow(data) or args.set else None
    graph = to_api(data, path, info, args.seed)
    try:
        if args.set:
            apply_overrides(graph, args.set, info)
        if args.seed is not None:
            if not set_seed(graph, args.seed):
                log.warning("--seed: the workflow has no seed/noise_seed input")
    except OverrideError as e:
        raise RunFailed(EXIT_VALIDATION, str(e))
    if not args.skip_model_check:
        check_models(graph, path, client, Path(args.manifest),
                     None if args.server else args.models_dir)
    return graph


def with_client(args: argparse.Namespace, go):
    """``go(client)`` against ``--server``, or against a local host started for the call."""
    if args.server:
        return go(ComfyClient(args.server))
    base = Path(args.base_dir).resolve() if getattr(args, "base_dir", None) else Path(
        tempfile.mkdtemp(prefix="spacetime-host-"))
    extra = model_paths_args(base, args) if hasattr(args, "models_dir") else ()
    install_example_inputs(base / "input")   # the inputs the shipped workflows name
    with ComfyHost(base, comfy_dir=args.comfyui, cpu=not getattr(args, "gpu", False), extra_args=extra) as host:
        return go(host.client)


def cmd_run(args: argparse.Namespace) -> int:
    out = Path(args.out)

    def go(client: ComfyClient) -> list[Path]:
        graph = prepare(args, client)
        return run_graph(client, graph, out, args.timeout, progress=not args.no_progress)

    files = with_client(args, go)
    for f in files:
        print(f)
    if not files:
        log.warning("the workflow finished but produced no output files")
    return EXIT_OK


def model_paths_args(base: Path, args: argparse.Namespace) -> tuple[str, ...]:
    """Let a started host (whose --base-directory is a scratch folder) see the user's models:
    ``--models-dir``, else ``<ComfyUI>/models``, through an extra_model_paths file."""
    try:
        root = Path(args.models_dir) if args.models_dir else M.default_models_dir(args.comfyui)
    except HostError:
        return ()
    if not root.is_dir() or (Path(base) / "models").resolve() == root.resolve():
        return ()
    folders = {f: f for f in ("checkpoints", "diffusion_models", "unet", "vae", "text_encoders",
                              "clip", "clip_vision", "loras", "upscale_models", "embeddings")}
    lines = ["spacetime_models:", f"    base_path: {json.dumps(str(root.resolve()))}"]
    lines += [f"    {k}: {v}/" for k, v in folders.items()]
    cfg = Path(base) / "spacetime_model_paths.yaml"
    Path(base).mkdir(parents=True, exist_ok=True)
    cfg.write_text("\n".join(lines) + "\n")
    log.info("models from %s", root)
    return ("--extra-model-paths-config", str(cfg))


def cmd_convert(args: argparse.Namespace) -> int:
    path = Path(args.workflow)
    data = read_json(path)

    def go(client: ComfyClient) -> dict:
        return to_api(data, path, client.object_info() if is_ui_workflow(data) else None)

    graph = with_client(args, go)
    json.dump(graph, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return EXIT_OK


def models_dir(args: argparse.Namespace) -> Path:
    try:
        return Path(args.models_dir) if args.models_dir else M.default_models_dir(args.comfyui)
    except HostError as e:
        raise RunFailed(EXIT_HOST, f"{e} (or pass --models-dir DIR)")


def cmd_models(args: argparse.Namespace) -> int:
    catalog = load_catalog()
    if args.action == "list":
        for e in catalog.values():
            size = f"{e.size / 2**30:.1f} GiB" if e.size else "size ?"
            print(f"{e.id:28} {e.folder + '/' + e.filename:70} {size:>10}  {e.description}")
        return EXIT_OK
    root = models_dir(args)
    if args.action == "check":
        if len(args.targets) != 1:
            raise RunFailed(EXIT_HOST, "models check takes one workflow file")
        path = Path(args.targets[0])
        data = read_json(path)
        ids = M.needed_ids(path, data, catalog, args.manifest)
        missing = M.missing_local(lookup(ids, catalog), root)
        for e in lookup(ids, catalog):
            print(f"{'MISSING' if e in missing else 'ok':8} {e.id:28} {e.destination(root)}")
        if missing:
            print(M.download_command([e.id for e in missing], args.models_dir), file=sys.stderr)
            return EXIT_VALIDATION
        return EXIT_OK
    try:
        for e in lookup(args.targets, catalog):
            print(download(e, root, force=args.force))
    except ModelError as e:
        raise RunFailed(EXIT_HOST, str(e))
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="spacetime-video", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def host_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--server", help="URL of a running ComfyUI (default: start a local one)")
        p.add_argument("--comfyui", help="ComfyUI folder (default: autodetect)")

    run = sub.add_parser("run", help="queue a workflow, wait, download its outputs")
    run.add_argument("workflow", help="workflow JSON, UI or API format")
    run.add_argument("--out", default="out", help="folder for the outputs (default: out)")
    host_args(run)
    run.add_argument("--set", action="append", default=[], metavar="NODE.INPUT=VALUE",
                     help="override an input; NODE is a node id or title (repeatable)")
    run.add_argument("--seed", type=int, help="set every seed / noise_seed input")
    run.add_argument("--base-dir", help="ComfyUI --base-directory for a started host "
                                        "(models, input, output); default: a temporary folder")
    run.add_argument("--models-dir", help="models/ folder for a started host "
                                          "(default: <ComfyUI>/models)")
    run.add_argument("--gpu", action="store_true", help="start the local host without --cpu")
    run.add_argument("--timeout", type=float, default=3600, help="seconds to wait for the run")
    run.add_argument("--no-progress", action="store_true", help="poll instead of the websocket")
    run.add_argument("--manifest", default=str(M.MANIFEST_PATH), help=argparse.SUPPRESS)
    run.add_argument("--skip-model-check", action="store_true",
                     help="queue even if catalog models seem missing")

    conv = sub.add_parser("convert", help="print the API format of a UI workflow")
    conv.add_argument("workflow")
    host_args(conv)

    mod = sub.add_parser("models", help="list, check or download catalog models")
    mod.add_argument("action", choices=["list", "check", "download"])
    mod.add_argument("targets", nargs="*", help="check: a workflow file; download: catalog ids")
    where = mod.add_mutually_exclusive_group()
    where.add_argument("--comfyui", help="ComfyUI folder whose models/ to use")
    where.add_argument("--models-dir", help="a ComfyUI models/ folder")
    mod.add_argument("--force", action="store_true", help="download even if present")
    mod.add_argument("--manifest", default=str(M.MANIFEST_PATH), help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    handlers = {"run": cmd_run, "convert": cmd_convert, "models": cmd_models}
    try:
        return handlers[args.command](args)
    except RunFailed as e:
        print(f"spacetime-video: {e}", file=sys.stderr)
        return e.code
    except (HostError, ModelError) as e:
        print(f"spacetime-video: {e}", file=sys.stderr)
        return EXIT_HOST
    except KeyboardInterrupt:
        print("spacetime-video: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
