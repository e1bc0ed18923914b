"""Untrusted requests against the video nodes: a save never leaves a partial file nor replaces
an output, a full disk is a clear error, names out of the output folder are refused; a load
blames the right input, keeps only the frames asked for and refuses a clip too big for memory
before decoding it."""
from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap
import tracemalloc
from pathlib import Path

import pytest
import torch

from spacetime_video.nodes import video_file

ROOT = Path(__file__).resolve().parents[1]


def _ramp(n=9, h=16, w=24) -> torch.Tensor:
    return torch.linspace(0.05, 0.95, n).view(n, 1, 1, 1).expand(n, h, w, 3).contiguous()


# ------------------------------------------------------------------------------- writing

@pytest.mark.parametrize("fmt", ["mp4", "webm", "gif"])
def test_file_size_limit_is_a_clear_error_and_leaves_nothing(tmp_path, fmt):
    """In a child process limited to 20 kB per file (RLIMIT_FSIZE: writes fail with EFBIG): a
    new file leaves no trace, and an existing file of the same name is not lost."""
    out = tmp_path / "out"
    out.mkdir()
    (out / f"kept.{fmt}").write_bytes(b"finished work")
    code = textwrap.dedent(f"""
        import importlib.util, resource, sys
        spec = importlib.util.spec_from_file_location('spacetime_video', {str(ROOT / '__init__.py')!r},
                                                      submodule_search_locations=[{str(ROOT)!r}])
        m = importlib.util.module_from_spec(spec); sys.modules['spacetime_video'] = m; spec.loader.exec_module(m)
        import torch
        from spacetime_video.nodes import video_file
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))
        frames = torch.rand(24, 64, 64, 3)
        for name in ('new.{fmt}', 'kept.{fmt}'):
            try:
                video_file.write_video({str(out)!r} + '/' + name, frames, 8.0, {{'note': 'x'}})
                print('WROTE', name)
            except video_file.VideoWriteError as e:
                print('ERROR', e)
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith("ERROR") for line in lines), r.stdout
    assert "file-size limit" in lines[0] and "new." + fmt in lines[0] and "nothing was written" in lines[0]
    assert sorted(p.name for p in out.iterdir()) == [f"kept.{fmt}"]  # no partial or temporary file
    assert (out / f"kept.{fmt}").read_bytes() == b"finished work"


def test_partial_file_is_never_visible_under_the_final_name(tmp_path, monkeypatch):
    encode, seen = video_file._encode, []

    def watching(path, *args):
        encode(path, *args)
        seen.append((path.name, sorted(p.name for p in tmp_path.iterdir())))

    monkeypatch.setattr(video_file, "_encode", watching)
    dest = video_file.write_video(tmp_path / "v.mp4", _ramp(), 8.0)
    (temp, listing), = seen
    assert listing == [temp] and temp.startswith(".")  # encoded under a hidden name only
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.mp4"] and dest == tmp_path / "v.mp4"


def test_write_new_video_takes_the_next_free_name(tmp_path):
    (tmp_path / "clip_00001_.mp4").write_bytes(b"first")
    names = (f"clip_{c:05}_.mp4" for c in range(1, 10**9))
    path = video_file.write_new_video(tmp_path, names, _ramp(), 8.0)
    assert path.name == "clip_00002_.mp4" and video_file.read_video(path)[0].shape[0] == 9
    assert (tmp_path / "clip_00001_.mp4").read_bytes() == b"first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip_00001_.mp4", "clip_00002_.mp4"]


# ------------------------------------------------------------------------------- the nodes

@pytest.fixture()
def vio(comfy, tmp_path, monkeypatch):
    import folder_paths

    from spacetime_video.nodes import video_io
    for kind in ("output", "input"):
        (tmp_path / kind).mkdir()
    monkeypatch.setattr(folder_paths, "output_directory", str(tmp_path / "output"))
    monkeypatch.setattr(folder_paths, "input_directory", str(tmp_path / "input"))
    return video_io


def save(vio, prefix="spacetime/v", fmt="mp4"):
    node = vio.SpacetimeSaveVideo.PREPARE_CLASS_CLONE({})
    return node.execute(fps=8.0, filename_prefix=prefix, format=fmt, images=_ramp())


def test_save_refuses_prefixes_out_of_the_output_folder(vio, tmp_path):
    from spacetime_video.nodes.errors import SpacetimeNodeError
    for prefix in ("../x", "a/../../x", str(tmp_path / "abs" / "x"), "/tmp/x", ""):
        with pytest.raises(SpacetimeNodeError, match=r"SpacetimeSaveVideo: input 'filename_prefix'"):
            save(vio, prefix)
    assert list(tmp_path.rglob("*.mp4")) == []


def test_save_never_replaces_an_output_that_appeared(vio, tmp_path, monkeypatch):
    import folder_paths
    first = save(vio).ui.as_dict()["images"][0]
    assert first["filename"] == "v_00001_.mp4"
    real = folder_paths.get_save_image_path
    # a race: the counter ComfyUI gives is taken by the time the file is complete
    monkeypatch.setattr(folder_paths, "get_save_image_path", lambda *a: (*real(*a)[:2], 1, *real(*a)[3:]))
    second = save(vio).ui.as_dict()["images"][0]
    assert second["filename"] == "v_00002_.mp4"
    folder = tmp_path / "output" / "spacetime"
    assert sorted(p.name for p in folder.iterdir()) == ["v_00001_.mp4", "v_00002_.mp4"]


def test_save_on_a_full_disk_is_a_node_error_and_leaves_nothing(vio, tmp_path, monkeypatch):
    from spacetime_video.nodes.errors import SpacetimeNodeError

    def full(path, *args):
        path.write_bytes(b"half a vid")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(video_file, "_encode", full)
    with pytest.raises(SpacetimeNodeError, match="input 'filename_prefix'.*disk is full.*nothing was written"):
        save(vio)
    assert list((tmp_path / "output" / "spacetime").iterdir()) == []


def test_save_takes_only_a_dict_of_extra_pnginfo(vio, tmp_path):
    """extra_pnginfo comes straight from the request body: text or a list is left out of the
    metadata (it used to be a bare ValueError / TypeError); the web UI's dict goes in."""
    from comfy_api.latest import io
    for extra in ("abc", [1, 2], {1: "x"}, {"workflow": {"marker": "kept-1234"}}):
        node = vio.SpacetimeSaveVideo.PREPARE_CLASS_CLONE({io.Hidden.extra_pnginfo: extra})
        node.execute(fps=8.0, filename_prefix="extra/v", format="mp4", images=_ramp())
    files = sorted((tmp_path / "output" / "extra").iterdir())
    assert len(files) == 4
    assert b"kept-1234" in files[-1].read_bytes() and not any(b"kept-1234" in f.read_bytes() for f in files[:3])


def load(vio, video, **kw):
    args = dict(video=video, start_frame=0, frame_count=0, stride=1, width=0, height=0) | kw
    return vio.SpacetimeLoadVideo.PREPARE_CLASS_CLONE({}).execute(**args)


def test_load_blames_video_for_a_junk_file_and_start_frame_beyond_the_end(vio, tmp_path):
    from spacetime_video.nodes.errors import SpacetimeNodeError
    (tmp_path / "input" / "junk.mp4").write_bytes(b"<html>not a video</html>" * 100)
    (tmp_path / "input" / "junk.gif").write_bytes(b"GIF89a" + os.urandom(200))
    for name in ("junk.mp4", "junk.gif"):
        with pytest.raises(SpacetimeNodeError, match=rf"input 'video': {name} is not a video that can be read"):
            load(vio, name)
    video_file.write_video(tmp_path / "input" / "clip.mp4", _ramp(), 8.0)
    with pytest.raises(SpacetimeNodeError, match=r"input 'start_frame': .*start frame 50.*has 9 frames"):
        load(vio, "clip.mp4", start_frame=50)


def test_load_refuses_a_64_gb_clip_before_decoding(vio, tmp_path, monkeypatch):
    import psutil

    from spacetime_video.nodes.errors import SpacetimeNodeError
    video_file.write_video(tmp_path / "input" / "clip.mp4", _ramp(20), 8.0)

    def no_decoding(*_):
        raise AssertionError("decoded before the memory check")

    with monkeypatch.context() as m:
        m.setattr(video_file, "_frames", no_decoding)
        m.setattr(psutil, "virtual_memory", lambda: type("VM", (), {"available": 16 * 2**30})())
        # 20 frames x 16384 x 16384 x 3 x 4 bytes = 64 GB
        with pytest.raises(SpacetimeNodeError, match=r"input 'width/height/frame_count': the decoded clip "
                                                     r"needs about 60\.\d GiB.*allow_large"):
            load(vio, "clip.mp4", width=16384, height=16384)
    # allow_large lets a clip through that the (here: tiny) free memory would refuse
    monkeypatch.setattr(psutil, "virtual_memory", lambda: type("VM", (), {"available": 1000})())
    with pytest.raises(SpacetimeNodeError, match="decoded clip"):
        load(vio, "clip.mp4", width=16, height=8)
    frames = load(vio, "clip.mp4", width=16, height=8, allow_large=True).result[0]
    assert frames.shape == (20, 8, 16, 3)


# ------------------------------------------------------------------------------- reading

def test_read_stops_after_the_last_kept_frame_and_converts_only_those(tmp_path, monkeypatch):
    path = video_file.write_video(tmp_path / "long.mp4", _ramp(60), 8.0)
    frames, seen = video_file._frames, []

    def counting(p, keep):
        for index, rgb in frames(p, keep):
            seen.append((index, rgb is not None))
            yield index, rgb

    monkeypatch.setattr(video_file, "_frames", counting)
    out, fps = video_file.read_video(path, start=5, count=3, stride=4, size=(12, 8))
    assert out.shape == (3, 8, 12, 3) and fps == pytest.approx(2.0, rel=0.05)
    assert [i for i, converted in seen if converted] == [5, 9, 13] and seen[-1][0] == 13


def test_read_holds_the_output_not_the_file(tmp_path):
    """numpy buffers (the decoded frames) are traced: a few kept frames of a 200-frame clip
    never hold the clip."""
    path = video_file.write_video(tmp_path / "long.mp4", torch.rand(200, 128, 128, 3), 25.0)
    clip_bytes = 200 * 128 * 128 * 3
    tracemalloc.start()
    try:
        out, _ = video_file.read_video(path, start=10, count=4, stride=5)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert out.shape == (4, 128, 128, 3)
    assert peak < clip_bytes / 10, f"peak {peak} bytes while reading 4 of 200 frames ({clip_bytes} bytes)"


def test_read_checks_memory_again_when_the_file_holds_more_frames_than_it_says(tmp_path, monkeypatch):
    path = video_file.write_video(tmp_path / "v.mp4", _ramp(40), 8.0)
    # a file whose header says 2 frames but holds 40: each doubling of the count is asked about
    monkeypatch.setattr(video_file, "probe_video", lambda p: video_file.VideoInfo(24, 16, 8.0, 2))
    asked = []
    out, _ = video_file.read_video(path, check=asked.append)
    assert out.shape[0] == 40
    frame = 16 * 24 * 3 * 4
    assert asked == [2 * frame, 16 * frame, 32 * frame, 64 * frame]
