"""The blocking hub download runs in a child process that a stop request or a deadline ends
within a poll (0.1 s): the node honours ComfyUI's cancel button. The child is a stand-in that
hangs, succeeds or fails; no network is used."""
from __future__ import annotations

import os
import sys
import threading
import time

import pytest

from spacetime_video.model.weights import catalog as M

from test_models_catalog import tiny_safetensors

HANG = "import os, sys, time\nopen(sys.argv[1], 'w').write(str(os.getpid()))\ntime.sleep(120)\n"


@pytest.fixture()
def online(tmp_path, monkeypatch):
    """An empty hub cache and no offline flag: download_to goes to the (stand-in) network."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    (entry,) = M.lookup(["wan2.1-vae"])
    return entry


def child(monkeypatch, code: str, *extra: str) -> None:
    """Make the download child run ``code`` with argv [repo, file, local_dir, result, *extra]."""
    monkeypatch.setattr(M, "_download_command", lambda repo, filename, local_dir, result: [
        sys.executable, "-c", code, *extra, repo, filename, str(local_dir), str(result)])


def gone(pidfile) -> bool:
    """The stand-in child that wrote ``pidfile`` no longer runs (or was ended before it did)."""
    if not pidfile.exists():
        return True
    try:
        os.kill(int(pidfile.read_text()), 0)
    except ProcessLookupError:
        return True
    return False


def test_stop_ends_a_hanging_download_within_a_second(online, tmp_path, monkeypatch):
    pidfile = tmp_path / "pid"
    child(monkeypatch, HANG, str(pidfile))
    t0 = time.monotonic()
    with pytest.raises(M.DownloadStopped, match="wan_2.1_vae.safetensors.*resume"):
        M.download_to(online, tmp_path / "vae" / online.filename, should_stop=lambda: time.monotonic() - t0 > 0.3)
    took = time.monotonic() - t0
    assert took < 1.0, f"took {took:.2f} s to stop"
    assert gone(pidfile)  # killed and reaped
    assert not (tmp_path / "vae" / online.filename).exists()


def test_deadline_ends_a_hanging_download_with_a_clear_error(online, tmp_path, monkeypatch):
    pidfile = tmp_path / "pid"
    child(monkeypatch, HANG, str(pidfile))
    t0 = time.monotonic()
    with pytest.raises(M.DownloadTimedOut) as err:
        M.download_to(online, tmp_path / "vae" / online.filename, deadline=t0 + 0.3)
    assert time.monotonic() - t0 < 1.0
    msg = str(err.value)
    assert online.repo in msg and online.path in msg and "deadline" in msg and "resume" in msg, msg
    assert gone(pidfile)


def test_a_finished_child_download_is_moved_into_place_and_verified(online, tmp_path, monkeypatch):
    data = tmp_path / "payload"
    data.write_bytes(tiny_safetensors())
    code = ("import json, shutil, sys, pathlib\nsrc, repo, name, local, result = sys.argv[1:6]\n"
            "out = pathlib.Path(local) / name\nout.parent.mkdir(parents=True, exist_ok=True)\n"
            "shutil.copy(src, out)\njson.dump({'path': str(out)}, open(result, 'w'))\n")
    child(monkeypatch, code, str(data))
    dest = M.download_to(online, tmp_path / "vae" / online.filename, should_stop=lambda: False,
                         deadline=time.monotonic() + 60)
    assert dest.read_bytes() == data.read_bytes()
    staging = tmp_path / "vae" / M.DOWNLOAD_SUBDIR
    assert not list(staging.glob(".result-*"))  # the outcome file is cleaned up


def test_child_failures_name_the_file(online, tmp_path, monkeypatch):
    code = "import json, sys\njson.dump({'error': 'HTTPError', 'message': '401 gated'}, open(sys.argv[4], 'w'))\n"
    child(monkeypatch, code)
    with pytest.raises(M.ModelError, match=r"Comfy-Org/Wan_2.1_ComfyUI_repackaged.*HTTPError: 401 gated"):
        M.download_to(online, tmp_path / "vae" / online.filename)
    child(monkeypatch, "import os\nos._exit(3)\n")
    with pytest.raises(M.ModelError, match=r"exit code 3\) without a result"):
        M.download_to(online, tmp_path / "vae" / online.filename)


def test_the_real_child_reports_the_hub_error(online, tmp_path, monkeypatch):
    """The child that calls hf_hub_download, offline in the child only: its error comes back."""
    monkeypatch.setattr(M, "offline", lambda: False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(M.ModelError) as err:
        M.download_to(online, tmp_path / "vae" / online.filename)
    msg = str(err.value)
    assert online.repo in msg and ("Offline" in msg or "LocalEntryNotFound" in msg), msg


# ------------------------------------------------------------------------------- the node

@pytest.fixture()
def node(comfy, online, tmp_path, monkeypatch):
    import folder_paths

    from spacetime_video.nodes import download_nodes
    models = tmp_path / "models" / "vae"
    models.mkdir(parents=True)
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "vae",
                        ([str(models)], folder_paths.supported_pt_extensions))
    folder_paths.filename_list_cache.pop("vae", None)
    return download_nodes.SpacetimeModelDownload.PREPARE_CLASS_CLONE({})


def test_node_honours_the_cancel_button_within_a_second(node, comfy, tmp_path, monkeypatch):
    import comfy.model_management as mm
    child(monkeypatch, HANG, str(tmp_path / "pid"))
    timer = threading.Timer(0.3, mm.interrupt_current_processing, (True,))
    t0 = time.monotonic()
    timer.start()
    try:
        with pytest.raises(mm.InterruptProcessingException):
            node.execute("wan2.1-vae")
    finally:
        timer.cancel()
        mm.interrupt_current_processing(False)
    took = time.monotonic() - t0
    assert 0.3 <= took < 1.0, f"took {took:.2f} s"
    assert gone(tmp_path / "pid")


def test_node_deadline_is_a_node_error(node, tmp_path, monkeypatch):
    from spacetime_video.nodes.errors import SpacetimeNodeError
    child(monkeypatch, HANG, str(tmp_path / "pid"))
    monkeypatch.setenv("SPACETIME_DOWNLOAD_TIMEOUT", "0.3")
    with pytest.raises(SpacetimeNodeError, match=r"SpacetimeModelDownload: input 'model': cannot download .*"
                                                 r"deadline.*SPACETIME_DOWNLOAD_TIMEOUT=0.3"):
        node.execute("wan2.1-vae")
    assert gone(tmp_path / "pid")


def test_a_damaged_download_is_removed_and_nothing_is_put_in_place(online, tmp_path, monkeypatch):
    code = ("import json, sys, pathlib\nrepo, name, local, result = sys.argv[1:5]\n"
            "out = pathlib.Path(local) / name\nout.parent.mkdir(parents=True, exist_ok=True)\n"
            "out.write_bytes(b'<html>rate limited</html>')\njson.dump({'path': str(out)}, open(result, 'w'))\n")
    child(monkeypatch, code)
    with pytest.raises(M.ModelError, match="damaged.*removed.*run again") as err:
        M.download_to(online, tmp_path / "vae" / online.filename)
    assert "not a safetensors file" in str(err.value)
    folder = tmp_path / "vae"
    assert not (folder / online.filename).exists()
    assert not [p for p in (folder / M.DOWNLOAD_SUBDIR).rglob("*") if p.is_file()]


def test_a_full_disk_while_copying_from_the_hub_cache_leaves_nothing(online, tmp_path, monkeypatch):
    """The hub cache on another disk (no hard link): the copy fails half-way with ENOSPC."""
    import errno
    import huggingface_hub

    cached = tmp_path / "cache.safetensors"
    cached.write_bytes(tiny_safetensors())
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda *a, **k: str(cached))

    def no_link(src, dst):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    def half_copy(src, dst):
        with open(dst, "wb") as f:
            f.write(b"x" * 100)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(M.os, "link", no_link)
    monkeypatch.setattr(M.shutil, "copyfile", half_copy)
    folder = tmp_path / "vae"
    with pytest.raises(M.ModelError, match="No space left on device. Nothing was put there"):
        M.download_to(online, folder / online.filename)
    assert list(folder.iterdir()) == []  # neither the file nor a temporary one
