"""``spacetime-video``: run a ComfyUI workflow headless and collect its outputs.

    spacetime-video run WORKFLOW_API.json --out DIR [--server URL]

Without ``--server`` a local ComfyUI is started on a free loopback port for the run (the one
this pack is installed in, or the project's ``.host/ComfyUI``) and stopped afterwards.

Exit codes: 0 done, 1 host/usage problem, 2 the server refused the graph (validation),
3 a node failed while running, 4 interrupted.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from .host import ComfyClient, ComfyHost, HostError

log = logging.getLogger("spacetime.cli")

EXIT_OK, EXIT_HOST, EXIT_VALIDATION, EXIT_EXECUTION, EXIT_INTERRUPTED = 0, 1, 2, 3, 4


class RunFailed(Exception):
    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


def load_workflow(path: Path) -> dict:
    try:
        graph = json.loads(path.read_text())
    except FileNotFoundError:
        raise RunFailed(EXIT_HOST, f"workflow file not found: {path}")
    except json.JSONDecodeError as e:
        raise RunFailed(EXIT_HOST, f"{path} is not valid JSON: {e}")
    if isinstance(graph, dict) and "nodes" in graph and "links" in graph:
        raise RunFailed(EXIT_HOST, f"{path} is in ComfyUI's UI format; export it with "
                                   "'Save (API Format)' or use its *_api.json twin")
    if not isinstance(graph, dict) or not all(isinstance(v, dict) and "class_type" in v
                                              for v in graph.values()):
        raise RunFailed(EXIT_HOST, f"{path} is not an API-format workflow "
                                   "(a JSON object of node id -> {class_type, inputs})")
    return graph


def format_validation_error(body: Any) -> str:
    """Turn a 400 from ``/prompt`` into lines that name each node, input and reason."""
    if not isinstance(body, dict):
        return f"the server refused the workflow: {body}"
    lines = []
    err = body.get("error") or {}
    if isinstance(err, dict) and err.get("message"):
        lines.append(f"{err.get('message')}: {err.get('details', '')}".rstrip(": "))
    for node_id, info in (body.get("node_errors") or {}).items():
        cls = info.get("class_type", "?")
        for e in info.get("errors", []):
            extra = e.get("extra_info") or {}
            name = extra.get("input_name")
            where = f"node {node_id} ({cls})" + (f", input '{name}'" if name else "")
            lines.append(f"{where}: {e.get('message', '')}: {e.get('details', '')}".rstrip(": "))
    return "\n".join(lines) or json.dumps(body)


def execution_error(history: dict) -> str | None:
    for kind, data in history.get("status", {}).get("messages", []):
        if kind == "execution_error":
            return (f"node {data.get('node_id')} ({data.get('node_type')}) failed: "
                    f"{data.get('exception_type', 'Error')}: {data.get('exception_message', '').strip()}")
        if kind == "execution_interrupted":
            return "interrupted"
    return None


def wait_for(client: ComfyClient, prompt_id: str, timeout: float, poll: float = 0.25) -> dict:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        h = client.history(prompt_id)
        if h and h.get("status", {}).get("completed") is not None and (
                h["status"].get("completed") or h["status"].get("status_str") == "error"):
            return h
        time.sleep(poll)
    raise RunFailed(EXIT_HOST, f"prompt {prompt_id} did not finish within {timeout:.0f}s")


def collect_outputs(client: ComfyClient, history: dict, out: Path) -> list[Path]:
    """Download every file the graph's output nodes report into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for node_out in history.get("outputs", {}).values():
        for items in node_out.values():
            if not isinstance(items, list):
                continue
            for item in items:
                if isinstance(item, dict) and "filename" in item and item.get("type") == "output":
                    data = client.download(item["filename"], item.get("subfolder", ""), "output")
                    dest = out / Path(item["filename"]).name
                    dest.write_bytes(data)
                    written.append(dest)
    return written


def run_graph(client: ComfyClient, graph: dict, out: Path, timeout: float = 3600) -> list[Path]:
    status, body = client.queue(graph, client_id=uuid.uuid4().hex)
    if status != 200:
        raise RunFailed(EXIT_VALIDATION, format_validation_error(body))
    prompt_id = body["prompt_id"]
    log.info("queued prompt %s", prompt_id)
    try:
        history = wait_for(client, prompt_id, timeout)
    except KeyboardInterrupt:
        client.interrupt()
        raise RunFailed(EXIT_INTERRUPTED, "interrupted: the server's job was stopped")
    err = execution_error(history)
    if err == "interrupted":
        raise RunFailed(EXIT_INTERRUPTED, "the run was interrupted on the server")
    if err or history.get("status", {}).get("status_str") == "error":
        raise RunFailed(EXIT_EXECUTION, err or "the run failed (no error message from the server)")
    return collect_outputs(client, history, out)


def cmd_run(args: argparse.Namespace) -> int:
    graph = load_workflow(Path(args.workflow))
    out = Path(args.out)
    if args.server:
        files = run_graph(ComfyClient(args.server), graph, out, args.timeout)
    else:
        base = args.base_dir or tempfile.mkdtemp(prefix="spacetime-host-")
        with ComfyHost(base, comfy_dir=args.comfyui, cpu=not args.gpu) as host:
            files = run_graph(host.client, graph, out, args.timeout)
    for f in files:
        print(f)
    if not files:
        log.warning("the workflow finished but produced no output files")
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="spacetime-video", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="queue a workflow, wait, download its outputs")
    run.add_argument("workflow", help="API-format workflow JSON")
    run.add_argument("--out", default="out", help="folder for the outputs (default: out)")
    run.add_argument("--server", help="URL of a running ComfyUI (default: start a local one)")
    run.add_argument("--comfyui", help="ComfyUI folder to start (default: autodetect)")
    run.add_argument("--base-dir", help="ComfyUI --base-directory for a started host "
                                        "(models, input, output); default: a temporary folder")
    run.add_argument("--gpu", action="store_true", help="start the local host without --cpu")
    run.add_argument("--timeout", type=float, default=3600, help="seconds to wait for the run")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        return {"run": cmd_run}[args.command](args)
    except RunFailed as e:
        print(f"spacetime-video: {e}", file=sys.stderr)
        return e.code
    except HostError as e:
        print(f"spacetime-video: {e}", file=sys.stderr)
        return EXIT_HOST


if __name__ == "__main__":
    sys.exit(main())
