"""Does the prompt expander help the embedded model? `python scripts/eval_expander.py --help`."""
import sys

from spacetime_video.training.evaluate import expander_main

sys.exit(expander_main())
