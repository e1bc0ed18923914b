"""`make demo`: render a video from a workflow in workflows/ through a real local ComfyUI.

Starts the project's ComfyUI host (installed by scripts/setup.sh) with .host/base as its base
directory, runs the workflow headless and writes the outputs to --out.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from spacetime_video.scripts.cli import RunFailed, load_workflow, run_graph
from spacetime_video.scripts.host import ComfyHost

ROOT = Path(__file__).resolve().parents[1]

DEFAULT_WORKFLOW = ROOT / "workflows" / "foundation_test_pattern_api.json"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workflow", default=str(DEFAULT_WORKFLOW))
    p.add_argument("--out", default="out")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    t0 = time.monotonic()
    graph = load_workflow(Path(args.workflow))
    try:
        with ComfyHost(ROOT / ".host" / "base") as host:
            files = run_graph(host.client, graph, Path(args.out))
    except RunFailed as e:
        logging.error("demo failed: %s", e)
        return e.code
    for f in files:
        logging.info("wrote %s", f)
    logging.info("demo finished in %.1fs", time.monotonic() - t0)
    return 0 if files else 1


if __name__ == "__main__":
    sys.exit(main())
