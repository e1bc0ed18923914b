"""Train the embedded tiny model, stage by stage: `python scripts/train_embedded.py --help`."""
import sys

from spacetime_video.training.recipe import main

sys.exit(main())
