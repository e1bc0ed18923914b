"""`make demo`: render a video from a prompt with the embedded tiny model, through a real local
ComfyUI, headless: the workflow workflows/embedded_t2v.json (UI format, as users share it) is
converted, its "Prompt" node (the Prompt Expander) gets --prompt, and the MP4 lands in --out.

    python scripts/demo.py [--prompt "red ball right, navy background"] [--seed 42] [--out out]
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from spacetime_video.headless.cli import main as cli_main

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = ROOT / "workflows" / "embedded_t2v.json"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--prompt", default="", help="short idea; empty keeps the workflow's own prompt")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--workflow", default=str(WORKFLOW))
    p.add_argument("--out", default="out")
    args = p.parse_args(argv)
    cli = ["run", args.workflow, "--out", args.out, "--base-dir", str(ROOT / ".host" / "base")]
    if args.prompt:
        cli += ["--set", f"Prompt.prompt={args.prompt}"]
    if args.seed is not None:
        cli += ["--seed", str(args.seed)]
    t0 = time.monotonic()
    code = cli_main(cli)
    logging.getLogger("spacetime.demo").info("demo %s in %.1fs (outputs in %s/)",
                                             "finished" if code == 0 else f"failed (exit {code})",
                                             time.monotonic() - t0, args.out)
    return code


if __name__ == "__main__":
    sys.exit(main())
