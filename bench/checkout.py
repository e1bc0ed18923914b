"""``spacetime_video`` imported from this checkout (the repository root is the package), for
benchmarks run as ``python bench/<name>.py`` from any folder name."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def import_checkout() -> None:
    spec = importlib.util.spec_from_file_location("spacetime_video", ROOT / "__init__.py",
                                                  submodule_search_locations=[str(ROOT)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["spacetime_video"] = module
    spec.loader.exec_module(module)
