"""File names from workflows resolve only inside the given folders (nodes/files.py)."""
from __future__ import annotations

from spacetime_video.nodes.files import file_inside


def test_file_inside(tmp_path):
    a, b, outside = tmp_path / "a", tmp_path / "b", tmp_path / "secret.txt"
    (a / "sub").mkdir(parents=True)
    b.mkdir()
    outside.write_text("x")
    (a / "sub" / "clip.mp4").write_text("x")
    (b / "model.safetensors").write_text("x")
    (a / "link.txt").symlink_to(outside)
    roots = [str(a), str(b)]
    assert file_inside(roots, "sub/clip.mp4") == str((a / "sub" / "clip.mp4").resolve())
    assert file_inside(roots, "model.safetensors") == str((b / "model.safetensors").resolve())
    assert file_inside(roots, "../secret.txt") is None         # climbs out
    assert file_inside(roots, str(outside)) is None             # absolute path
    assert file_inside(roots, "link.txt") is None               # a link that leads out
    assert file_inside(roots, "missing.mp4") is None
    assert file_inside(roots, "sub") is None                    # a folder is not a file
