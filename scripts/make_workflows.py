"""Write the pack's workflows (UI format, API twins) and workflows/models.json: `--help`."""
import sys

from spacetime_video.headless.templates import main

sys.exit(main())
