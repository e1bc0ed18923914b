"""Measure the embedded tiny model on held-out prompts (`--help` for the options).

    python scripts/eval_embedded.py --help
"""
import sys

from spacetime_video.training.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
