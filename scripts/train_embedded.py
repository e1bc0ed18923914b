"""Train the embedded tiny model, stage by stage (`--help` lists the stages and options).

    python scripts/train_embedded.py --help
"""
import sys

from spacetime_video.training.stages import main

if __name__ == "__main__":
    sys.exit(main())
