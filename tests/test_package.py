"""The package imports without ComfyUI, and its layout is what ComfyUI and pip expect."""
from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_python(code: str) -> subprocess.CompletedProcess:
    # -I: isolated, so neither the cwd nor PYTHONPATH can bring ComfyUI in.
    return subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True,
                          cwd="/", timeout=120)


def test_imports_without_comfyui():
    code = (
        "import sys, importlib.util\n"
        f"spec = importlib.util.spec_from_file_location('spacetime_video', {str(ROOT / '__init__.py')!r},"
        f" submodule_search_locations=[{str(ROOT)!r}])\n"
        "m = importlib.util.module_from_spec(spec); sys.modules['spacetime_video'] = m\n"
        "spec.loader.exec_module(m)\n"
        "import spacetime_video.model, spacetime_video.samplers, spacetime_video.nodes.video_file\n"
        "assert importlib.util.find_spec('comfy') is None, 'ComfyUI must not be importable here'\n"
        "bad = [k for k in sys.modules if k.split('.')[0] in ('comfy', 'comfy_api', 'folder_paths')]\n"
        "assert not bad, bad\n"
        "assert callable(m.comfy_entrypoint)\n"
        "print('ok', m.__version__)\n"
    )
    r = run_python(code)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("ok ")


def test_installed_distribution_points_at_this_layout():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    project = meta["project"]
    assert project["name"] == "spacetime-video"
    deps = {d.split(">")[0].split("=")[0].split("<")[0].strip() for d in project["dependencies"]}
    assert {"einops", "safetensors", "huggingface_hub", "av", "torch"} <= deps
    assert not any(d.startswith("torch") and any(c in d for c in "=<>~") for d in project["dependencies"]), \
        "torch must never be pinned (a user's CUDA build must be kept)"
    comfy = meta["tool"]["comfy"]
    assert comfy["PublisherId"] and comfy["DisplayName"] and comfy["Icon"]
    assert project["scripts"]["spacetime-video"] == "spacetime_video.headless.cli:main"
    reqs = {line.split(">")[0].split("=")[0].strip()
            for line in (ROOT / "requirements.txt").read_text().splitlines()
            if line.strip() and not line.startswith("#")}
    assert reqs == deps - {"torch"}, "requirements.txt must list the same runtime dependencies"


def test_every_subpackage_is_packaged():
    """A non-editable install must carry every folder of the package."""
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    listed = set(meta["tool"]["setuptools"]["packages"])
    found = {"spacetime_video"}
    for init in ROOT.rglob("__init__.py"):
        rel = init.parent.relative_to(ROOT)
        if rel.parts and rel.parts[0] in ("model", "samplers", "long_video", "nodes", "headless", "training"):
            found.add(".".join(("spacetime_video", *rel.parts)))
    assert found == listed, f"missing: {sorted(found - listed)}, stale: {sorted(listed - found)}"


def test_wheel_contains_data_files(tmp_path):
    """System prompts, workflows and the model catalog must be inside a built wheel."""
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                        "-q", "-w", str(tmp_path), str(ROOT)], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    import zipfile
    names = zipfile.ZipFile(next(tmp_path.glob("*.whl"))).namelist()
    prompts = [n for n in names if n.startswith("spacetime_video/model/prompt_expander/prompts/")]
    assert prompts and any(n.endswith(".txt") for n in prompts)
    assert any(n.startswith("spacetime_video/workflows/") and n.endswith(".json") for n in names)
    assert "spacetime_video/workflows/api/models.json" in names
    assert "spacetime_video/workflows/inputs/spacetime_clip_a.mp4" in names
    assert "spacetime_video/workflows/Text to video - Embedded (CPU).jpg" in names
    assert "spacetime_video/web/spacetime.js" in names
    assert "spacetime_video/model/weights/catalog.json" in names
    assert not any("/tests/" in n or n.startswith("spacetime_video/.host") for n in names)


def _lint_imports(root: Path) -> subprocess.CompletedProcess:
    """``lint-imports`` (the contracts in pyproject.toml) on the package found at ``root``."""
    import os
    env = dict(os.environ, PYTHONPATH=str(root.parent))
    exe = Path(sys.executable).with_name("lint-imports")
    return subprocess.run([str(exe), "--no-cache", "--config", str(root / "pyproject.toml")], cwd=root,
                          capture_output=True, text=True, timeout=120, env=env)


def test_layering_contracts_hold_and_catch_a_violation(tmp_path):
    """ARCHITECTURE.md's layers are import-linter contracts: they hold for this checkout, and a
    model module importing the samplers, or a library module importing ComfyUI, breaks them."""
    import shutil
    copy = tmp_path / "spacetime_video"
    shutil.copytree(ROOT, copy, ignore=shutil.ignore_patterns(
        ".venv", ".host", ".git", "*.safetensors", "workflows", "tests", "bench", "__pycache__", "*.md"))
    ok = _lint_imports(copy)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "3 kept, 0 broken" in ok.stdout
    sizes = copy / "model" / "sizes.py"
    original = sizes.read_text()
    sizes.write_text(original + "\nfrom ..samplers import schedules  # noqa\n")
    bad = _lint_imports(copy)
    assert bad.returncode != 0 and "BROKEN" in bad.stdout and "spacetime_video.model.sizes" in bad.stdout
    sizes.write_text(original + "\nimport folder_paths  # noqa\n")
    bad = _lint_imports(copy)
    assert bad.returncode != 0 and "folder_paths" in bad.stdout
