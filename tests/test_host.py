"""A real ComfyUI host loads the pack: every Spacetime node is listed, nothing failed to import."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.host

ROOT = Path(__file__).resolve().parents[1]


def declared_node_ids() -> set[str]:
    ids = set()
    for path in (ROOT / "nodes").glob("*.py"):
        ids |= set(re.findall(r'node_id\s*=\s*"(Spacetime\w+)"', path.read_text()))
    return ids


def test_every_node_is_listed(host, object_info):
    declared = declared_node_ids()
    assert declared, "no Spacetime nodes declared in nodes/"
    listed = {k for k in object_info if k.startswith("Spacetime")}
    assert declared <= listed, f"missing from /object_info: {sorted(declared - listed)}"
    assert not host.pack_import_failed(), host.log_tail(80)
    assert f"custom_nodes/{host.pack_link}" in host.log_text()  # the check above looked at our line


def test_node_ids_are_permanent_api(object_info):
    for node_id, info in object_info.items():
        if node_id.startswith("Spacetime"):
            assert re.fullmatch(r"Spacetime[A-Z][A-Za-z0-9]*", node_id), node_id
            assert info["category"].startswith("Spacetime"), (node_id, info["category"])


def test_pack_loads_under_another_folder_name(tmp_path):
    """Cloned into custom_nodes/ under any name (here with dashes) it still loads."""
    from spacetime_video.headless.host import ComfyHost

    with ComfyHost(tmp_path / "base", pack_link="ComfyUI-Spacetime-main") as server:
        assert [p.name for p in (server.base_dir / "custom_nodes").iterdir()] == ["ComfyUI-Spacetime-main"]
        info = server.client.object_info()
    assert declared_node_ids() <= set(info)
    assert not server.pack_import_failed(), server.log_tail(80)


def test_import_failure_of_the_pack_is_detected(tmp_path):
    """The check used above really reads ComfyUI's failure line for our folder."""
    from spacetime_video.headless.host import ComfyHost

    server = ComfyHost(tmp_path / "base")  # not started: only its log is examined
    folder = server.base_dir / "custom_nodes" / "spacetime"
    server.log_path.write_text(f"Import times for custom nodes:\n   0.1 seconds (IMPORT FAILED): {folder}\n")
    assert server.pack_import_failed()
    server.log_path.write_text(f"Import times for custom nodes:\n   0.1 seconds: {folder}\n"
                               "IMPORT FAILED: nodes_audio.py\n")
    assert not server.pack_import_failed()


def test_failed_start_is_reported_and_cleaned_up(tmp_path):
    """A server that dies while starting: the error carries its log, nothing is left running."""
    from spacetime_video.headless.host import ComfyHost, HostError

    fake = tmp_path / "ComfyUI"
    (fake / "comfy").mkdir(parents=True)
    (fake / "main.py").write_text("import sys\nprint('boom: missing dependency')\nsys.exit(3)\n")
    server = ComfyHost(tmp_path / "base", comfy_dir=fake)
    with pytest.raises(HostError, match="code 3") as err:
        server.start(timeout=30)
    assert "boom: missing dependency" in str(err.value)
    assert server.proc is None and server._log_file.closed


def test_base_dir_is_absolute_so_a_relative_one_works(tmp_path, monkeypatch):
    from spacetime_video.headless.host import prepare_base_dir
    monkeypatch.chdir(tmp_path)
    base = prepare_base_dir("relative/base")
    assert base.is_absolute() and base == tmp_path / "relative" / "base"
    assert (base / "custom_nodes" / "spacetime").is_symlink()
