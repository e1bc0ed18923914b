"""Measure the embedded tiny model on held-out prompts: `python scripts/eval_embedded.py --help`."""
import sys

from spacetime_video.training.evaluate import main

sys.exit(main())
