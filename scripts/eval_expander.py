"""Does the prompt expander help the embedded model? Raw against expanded short prompts.

    python scripts/eval_expander.py --help
"""
import sys

from spacetime_video.training.expander_eval import main

if __name__ == "__main__":
    sys.exit(main())
