"""Shared fixtures: the package from *this* checkout, ComfyUI in-process, and a real host."""
from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]


def _import_checkout_as_package() -> None:
    """Make ``import spacetime_video`` load this checkout, whatever is pip-installed.

    The repository root is the package (so that it also works cloned into custom_nodes/);
    tests in a git worktree must test that worktree, not the editable install of another.
    """
    spec = importlib.util.find_spec("spacetime_video")
    here = spec and spec.submodule_search_locations and Path(list(spec.submodule_search_locations)[0])
    if here and here.resolve() == ROOT:
        return
    spec = importlib.util.spec_from_file_location(
        "spacetime_video", ROOT / "__init__.py", submodule_search_locations=[str(ROOT)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["spacetime_video"] = module
    spec.loader.exec_module(module)


_import_checkout_as_package()

COMFY_DIR = Path(os.environ.get("SPACETIME_COMFYUI", ROOT / ".host" / "ComfyUI"))


def _require_host_install() -> None:
    if not (COMFY_DIR / "main.py").is_file():
        pytest.fail(f"the ComfyUI test host is not installed at {COMFY_DIR}: run `make setup`")


@pytest.fixture(scope="session")
def comfy():
    """ComfyUI's own ``comfy`` package from the test host, imported in this process on CPU.

    For parity tests against ComfyUI's native Wan (``comfy.ldm.wan``). Returns the module.
    """
    _require_host_install()
    if str(COMFY_DIR) not in sys.path:
        sys.path.insert(0, str(COMFY_DIR))
    import comfy.cli_args

    comfy.cli_args.args.cpu = True  # must precede any import of comfy.model_management
    import comfy.model_management  # noqa: F401
    import comfy.ops  # noqa: F401

    return comfy


@pytest.fixture(scope="session")
def host(tmp_path_factory):
    """One real ComfyUI server per test session, on a free loopback port, with this checkout
    linked into its custom_nodes/. Always stopped at the end."""
    _require_host_install()
    from spacetime_video.headless.host import ComfyHost

    with ComfyHost(tmp_path_factory.mktemp("comfy-base"), comfy_dir=COMFY_DIR) as server:
        yield server


@pytest.fixture(scope="session")
def object_info(host):
    return host.client.object_info()


def pytest_configure(config) -> None:
    config.addinivalue_line("markers", "browser: drives ComfyUI's web UI in Chromium (tests/test_browser.py); "
                                       "skipped where Playwright, Chromium or the front end is absent, except in CI")
