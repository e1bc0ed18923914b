"""Write the pack's workflows (UI format and API twins) and workflows/models.json.

    python scripts/make_workflows.py --help
"""
import sys

from spacetime_video.headless.templates import main

if __name__ == "__main__":
    sys.exit(main())
