"""Does the prompt expander help the embedded model? `python scripts/eval_expander.py --help`."""
import sys

from spacetime_video.training.expander_eval import main

sys.exit(main())
