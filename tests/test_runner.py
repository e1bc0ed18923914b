"""The headless runner against a real host: a workflow renders a file; errors are reported."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import av
import pytest

pytestmark = pytest.mark.host

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = ROOT / "workflows" / "api" / "foundation_test_pattern_api.json"


def cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the CLI of *this* checkout (imported the way the tests import the package)."""
    code = ("import sys; sys.path.insert(0, %r); import conftest; "
            "from spacetime_video.headless.cli import main; sys.exit(main(sys.argv[1:]))"
            % str(Path(__file__).parent))
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def frames_in(path: Path) -> tuple[int, int, int]:
    with av.open(str(path)) as c:
        frames = [f for f in c.decode(video=0)]
    return len(frames), frames[0].height, frames[0].width


def test_workflow_renders_a_file(host, tmp_path):
    r = cli("run", str(WORKFLOW), "--out", str(tmp_path), "--server", host.url)
    assert r.returncode == 0, r.stderr
    files = [Path(line) for line in r.stdout.split()]
    assert len(files) == 1 and files[0].suffix == ".mp4" and files[0].parent == tmp_path
    graph = json.loads(WORKFLOW.read_text())
    image = graph["1"]["inputs"]
    assert frames_in(files[0]) == (image["batch_size"], image["height"], image["width"])


def test_validation_error_names_node_and_input(host, tmp_path):
    graph = json.loads(WORKFLOW.read_text())
    graph["2"]["inputs"]["fps"] = 500.0  # the node allows 1..120
    bad = tmp_path / "bad_api.json"
    bad.write_text(json.dumps(graph))
    r = cli("run", str(bad), "--out", str(tmp_path / "o"), "--server", host.url)
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "node 2 (SpacetimeSaveVideo)" in r.stderr and "'fps'" in r.stderr, r.stderr
    assert "120" in r.stderr, r.stderr  # the valid maximum is named
    # the server still serves the next prompt
    ok = cli("run", str(WORKFLOW), "--out", str(tmp_path / "ok"), "--server", host.url)
    assert ok.returncode == 0, ok.stderr


def test_execution_error_names_node(host, tmp_path):
    graph = json.loads(WORKFLOW.read_text())
    graph["2"]["inputs"]["filename_prefix"] = "../../outside"  # refused by ComfyUI at run time
    bad = tmp_path / "bad_api.json"
    bad.write_text(json.dumps(graph))
    r = cli("run", str(bad), "--out", str(tmp_path / "o"), "--server", host.url)
    assert r.returncode == 3, (r.returncode, r.stderr)
    assert "node 2 (SpacetimeSaveVideo) failed" in r.stderr, r.stderr
    ok = cli("run", str(WORKFLOW), "--out", str(tmp_path / "ok"), "--server", host.url)
    assert ok.returncode == 0, ok.stderr


def test_runner_starts_its_own_host(tmp_path):
    r = cli("run", str(WORKFLOW), "--out", str(tmp_path / "o"), "--base-dir", str(tmp_path / "base"))
    assert r.returncode == 0, r.stderr
    assert len(list((tmp_path / "o").glob("*.mp4"))) == 1
    assert "ComfyUI ready" in r.stderr
