"""The shipped example inputs: what the workflows name, small, decodable; copied into an input
folder without ever overwriting a user's file or following a link; present in a fresh host's
input folder; and a shipped workflow that starts from clips runs unmodified through the CLI."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from spacetime_video.headless.templates import CLIP_A, CLIP_B, IMAGE_IN
from spacetime_video.model.example_inputs import EXAMPLE_INPUTS_DIR, example_inputs, install_example_inputs

ROOT = Path(__file__).resolve().parents[1]
NAMES = {IMAGE_IN, CLIP_A, CLIP_B}


def _named_inputs() -> set[str]:
    """Every image or video file name the shipped UI workflows put in a widget."""
    names = set()
    for path in (ROOT / "workflows").glob("*.json"):
        for node in json.loads(path.read_text()).get("nodes", []):
            names |= {v for v in node.get("widgets_values") or []
                      if isinstance(v, str) and v.endswith((".png", ".jpg", ".mp4", ".webm"))}
    return names


def test_the_shipped_examples_are_the_inputs_the_workflows_name():
    assert {p.name for p in example_inputs()} == NAMES
    assert _named_inputs() <= NAMES, _named_inputs() - NAMES


def test_the_shipped_examples_are_small_and_decode():
    from PIL import Image

    from spacetime_video.nodes.video_file import read_video
    for p in example_inputs():
        assert p.stat().st_size < 16_000, p
    assert Image.open(EXAMPLE_INPUTS_DIR / IMAGE_IN).size == (64, 64)
    for name in (CLIP_A, CLIP_B):
        frames, fps = read_video(EXAMPLE_INPUTS_DIR / name)
        assert frames.shape == (17, 64, 64, 3) and fps == pytest.approx(8.0)
    a, _ = read_video(EXAMPLE_INPUTS_DIR / CLIP_A)
    # the clip moves: its first and last frames differ where the ball was
    assert (a[0] - a[-1]).abs().max() > 0.5


def test_copies_into_an_empty_folder_and_a_second_call_writes_nothing(tmp_path):
    written = install_example_inputs(tmp_path / "input")
    assert {p.name for p in written} == NAMES
    for p in written:
        assert p.read_bytes() == (EXAMPLE_INPUTS_DIR / p.name).read_bytes()
    assert install_example_inputs(tmp_path / "input") == []
    assert sorted(os.listdir(tmp_path / "input")) == sorted(NAMES)   # no temporary files left


def test_a_users_file_of_the_same_name_is_never_overwritten(tmp_path):
    folder = tmp_path / "input"
    folder.mkdir()
    (folder / CLIP_A).write_bytes(b"mine")
    written = install_example_inputs(folder)
    assert (folder / CLIP_A).read_bytes() == b"mine"
    assert {p.name for p in written} == NAMES - {CLIP_A}


def test_a_link_in_the_input_folder_is_not_followed(tmp_path):
    folder, outside = tmp_path / "input", tmp_path / "outside"
    folder.mkdir()
    outside.mkdir()
    (folder / IMAGE_IN).symlink_to(outside / "target.png")            # dangling, pointing out
    (folder / CLIP_B).symlink_to(outside)                               # a folder elsewhere
    install_example_inputs(folder)
    assert os.listdir(outside) == []
    assert (folder / IMAGE_IN).is_symlink() and not (folder / IMAGE_IN).exists()


def test_only_plain_regular_files_of_the_source_are_copied(tmp_path):
    src, folder = tmp_path / "src", tmp_path / "input"
    src.mkdir()
    (src / "ok.png").write_bytes(b"png")
    (src / "notes.txt").write_text("not media")
    (src / ".hidden.png").write_bytes(b"x")
    (tmp_path / "secret.png").write_bytes(b"secret")
    (src / "link.png").symlink_to(tmp_path / "secret.png")
    assert [p.name for p in install_example_inputs(folder, source=src)] == ["ok.png"]
    assert sorted(os.listdir(folder)) == ["ok.png"]


def test_an_input_path_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "input").write_text("a file")
    with pytest.raises((NotADirectoryError, FileExistsError)):
        install_example_inputs(tmp_path / "input")


@pytest.mark.host
def test_the_pack_copies_the_examples_into_a_hosts_input_folder_on_load(host):
    for name in NAMES:
        assert (host.base_dir / "input" / name).is_file(), name


@pytest.mark.host
@pytest.mark.slow
def test_a_clip_workflow_runs_unmodified_from_a_fresh_host_through_the_cli(tmp_path):
    """What a newcomer types: the shipped API twin, a host started for the run, no files added."""
    from test_cli import cli
    base = tmp_path / "base"
    r = cli("run", str(ROOT / "workflows" / "api" / "embedded_connect_api.json"), "--out", str(tmp_path / "out"),
            "--base-dir", str(base), "--no-progress")
    assert r.returncode == 0, r.stderr[-3000:]
    (out,) = [Path(line) for line in r.stdout.splitlines() if line.strip()]
    from spacetime_video.nodes.video_file import read_video
    frames, _ = read_video(out)
    assert frames.shape == (17, 64, 64, 3)


def _twins() -> list[Path]:
    return sorted((ROOT / "workflows" / "api").glob("*_api.json"))


@pytest.mark.parametrize("twin", _twins(), ids=lambda p: p.name)
def test_every_shipped_workflow_runs_or_names_its_missing_models(twin, tmp_path, capsys):
    """From a fresh checkout: a workflow either needs nothing beyond the pack (the embedded model
    and the example inputs) or `models check` names every missing model and the download command
    (`run` makes the same check before queueing)."""
    from spacetime_video.headless.cli import main
    from spacetime_video.headless.models import load_manifest
    from spacetime_video.model.weights.catalog import load_catalog
    needs = load_manifest()[twin.name]   # a twin shares its UI workflow's entry
    code = main(["models", "check", str(twin), "--models-dir", str(tmp_path / "models")])
    out, err = capsys.readouterr()
    if not needs:
        assert code == 0 and "MISSING" not in out
        return
    catalog = load_catalog()
    assert code == 2
    for mid in needs:
        assert f"MISSING  {mid}" in out and catalog[mid].filename in out
    assert "spacetime-video models download " + " ".join(needs) in err
