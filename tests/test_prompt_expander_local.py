"""The local HF backend's waits and memory, without the network: the download child is ended by
should_stop within a second and by its deadline; a repo or folder whose weights exceed the
available RAM is refused (before downloading, before loading); one model stays loaded at a time."""
from __future__ import annotations

import json
import os
import sys
import textwrap
import time
import types

import pytest
import torch

import spacetime_video as st
from spacetime_video.model import prompt_expander as pe
from spacetime_video.model.prompt_expander.backends import hf_local, hf_models

REPO = "someone/Big-Model"


@pytest.fixture(autouse=True)
def fresh(tmp_path, monkeypatch):
    pe.clear_memory_cache()
    monkeypatch.setattr(hf_local, "_LOADED", {})
    monkeypatch.setattr(hf_models, "MEMINFO", str(tmp_path / "meminfo"))
    monkeypatch.delenv(hf_models.DOWNLOAD_TIMEOUT_ENV, raising=False)
    meminfo(tmp_path, 64 * 2**20)


def meminfo(tmp_path, available_kib: int) -> None:
    (tmp_path / "meminfo").write_text(f"MemTotal:       {2 * available_kib} kB\nMemFree:  1 kB\n"
                                      f"MemAvailable:   {available_kib} kB\nBuffers: 0 kB\n")


@pytest.fixture
def sleeping_child(tmp_path, monkeypatch):
    """The download child replaced by one that writes its pid and sleeps a minute."""
    pid_file = tmp_path / "child.pid"

    def command(repo_id, folder, result, max_bytes):
        script = "import os, sys, time; open(sys.argv[1], 'w').write(str(os.getpid())); time.sleep(60)"
        return [sys.executable, "-c", script, str(pid_file)]
    monkeypatch.setattr(hf_models, "_download_command", command)
    return pid_file


def expand(tmp_path, **kw):
    kw.setdefault("cache", False)
    return st.model.expand_prompt("a red fox", backend="hf", model=REPO, models_dir=tmp_path / "LLM", **kw)


def assert_ended(pid_file) -> None:
    pid = int(pid_file.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # killed and reaped


def test_should_stop_ends_the_download_within_a_second(tmp_path, sleeping_child):
    t0 = time.monotonic()
    with pytest.raises(pe.Interrupted, match=f"while downloading {REPO}.*resumes next time"):
        expand(tmp_path, on_error="fallback", should_stop=lambda: time.monotonic() - t0 >= 0.5)
    latency = time.monotonic() - t0 - 0.5
    assert latency < 1.0, f"Interrupted came {latency:.2f}s after should_stop turned True"
    assert_ended(sleeping_child)


def test_the_deadline_ends_the_download(tmp_path, sleeping_child, monkeypatch):
    monkeypatch.setenv(hf_models.DOWNLOAD_TIMEOUT_ENV, "0.6")
    t0 = time.monotonic()
    with pytest.raises(pe.DownloadTimedOut) as err:
        expand(tmp_path, on_error="raise")
    assert 0.6 <= time.monotonic() - t0 < 1.6
    msg = str(err.value)
    assert REPO in msg and "within 0.6s" in msg and "resumes when run again" in msg
    assert hf_models.DOWNLOAD_TIMEOUT_ENV in msg and "huggingface-cli download" in msg
    assert isinstance(err.value, pe.ServerTimeout) and not err.value.retryable
    assert_ended(sleeping_child)
    assert expand(tmp_path, on_error="fallback", seed=3) == st.model.expand_prompt("a red fox", seed=3)
    assert_ended(sleeping_child)


def test_a_bad_download_timeout_is_named(tmp_path, sleeping_child, monkeypatch):
    monkeypatch.setenv(hf_models.DOWNLOAD_TIMEOUT_ENV, "soon")
    with pytest.raises(ValueError, match="SPACETIME_DOWNLOAD_TIMEOUT='soon' is not a number of seconds"):
        expand(tmp_path, on_error="fallback")


@pytest.fixture
def fake_hub(tmp_path, monkeypatch):
    """A ``huggingface_hub`` package for the real download child (found first through PYTHONPATH):
    the repo lists 3 GiB of safetensors; ``snapshot_download`` records its arguments and writes a
    small model."""
    pkg = tmp_path / "fakehub" / "huggingface_hub"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(textwrap.dedent("""
        import json, os, pathlib, types

        class HfApi:
            def model_info(self, repo, files_metadata=False):
                assert files_metadata
                return types.SimpleNamespace(siblings=[
                    types.SimpleNamespace(rfilename="model-00001-of-00002.safetensors", size=2 * 2**30),
                    types.SimpleNamespace(rfilename="model-00002-of-00002.safetensors", size=2**30),
                    types.SimpleNamespace(rfilename="config.json", size=700),
                    types.SimpleNamespace(rfilename="pytorch_model.bin", size=3 * 2**30)])

        def snapshot_download(repo_id, local_dir, allow_patterns):
            pathlib.Path(os.environ["FAKE_HUB_LOG"]).write_text(json.dumps([repo_id, local_dir, allow_patterns]))
            d = pathlib.Path(local_dir)
            d.mkdir(parents=True, exist_ok=True)
            (d / "config.json").write_text("{}")
            (d / "model.safetensors").write_bytes(b"")
            return local_dir
    """))
    monkeypatch.setenv("PYTHONPATH", str(pkg.parent))
    monkeypatch.setenv("FAKE_HUB_LOG", str(tmp_path / "hub.log"))
    return tmp_path / "hub.log"


def test_a_repo_larger_than_the_ram_is_not_downloaded(tmp_path, fake_hub):
    meminfo(tmp_path, 2 * 2**20)  # 2 GiB available; the repo has 3 GiB of safetensors (the .bin is not fetched)
    with pytest.raises(pe.BackendUnavailable) as err:
        expand(tmp_path, on_error="raise")
    msg = str(err.value)
    assert REPO in msg and "3.0 GiB of weights" in msg and "only 2.0 GiB of RAM" in msg and "not downloaded" in msg
    assert not fake_hub.exists()  # snapshot_download never ran


def test_the_real_child_downloads_only_safetensors_and_tokenizer_files(tmp_path, fake_hub):
    folder = hf_models.ensure_downloaded(*hf_models.resolve(REPO, tmp_path / "LLM", vision=False))
    repo_id, local_dir, patterns = json.loads(fake_hub.read_text())
    assert (repo_id, local_dir, folder) == (REPO, str(tmp_path / "LLM" / "Big-Model"), tmp_path / "LLM" / "Big-Model")
    assert patterns == hf_models.ALLOW_PATTERNS
    assert not any(p.endswith((".bin", ".pt", ".pth", ".pkl", ".py")) or p in ("*", "*.*") for p in patterns)
    assert (folder / hf_models.REPO_MARKER).read_text().strip() == REPO


def _folder(tmp_path, name: str, gib: float = 0, stored: str = "bfloat16"):
    folder = tmp_path / "LLM" / name
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "qwen2", "torch_dtype": stored}))
    with open(folder / "model.safetensors", "wb") as f:
        f.truncate(int(gib * 2**30))  # sparse: takes no disk
    return folder


def test_a_model_larger_than_the_available_ram_is_refused_before_loading(tmp_path, monkeypatch):
    folder = _folder(tmp_path, "big", gib=3)
    meminfo(tmp_path, 4 * 2**20)  # 4 GiB available

    def no_loading():
        raise AssertionError("transformers was asked to load a model that does not fit")
    monkeypatch.setattr(hf_local, "_transformers", no_loading)
    with pytest.raises(pe.BackendUnavailable) as err:
        hf_local.load(folder, vision=False, dtype=torch.float32)  # bf16 weights as float32: 6 GiB
    msg = str(err.value)
    assert "local model big needs about 6.0 GiB of RAM" in msg and "only 4.0 GiB is available" in msg
    hf_local.check_memory(folder, torch.bfloat16)  # as stored: 3 GiB fits
    with pytest.raises(pe.BackendUnavailable, match="needs about 6.0 GiB"):  # through the library call
        st.model.expand_prompt("a fox", backend="hf", model="big", models_dir=tmp_path / "LLM", on_error="raise",
                               cache=False)
    meminfo(tmp_path, 1 * 2**20)
    with pytest.raises(pe.BackendUnavailable, match="needs about 3.0 GiB.*only 1.0 GiB"):
        hf_local.check_memory(folder, torch.bfloat16)
    monkeypatch.setattr(hf_models, "MEMINFO", str(tmp_path / "missing"))  # unreadable: no check
    hf_local.check_memory(folder, torch.float32)
    assert hf_local.mem_available() is None


class _FakeModel:
    def __init__(self, folder):
        self.folder = folder

    def eval(self):
        return self


def test_only_one_local_model_stays_loaded(tmp_path, monkeypatch):
    loads = []

    def from_pretrained(path, **kw):
        loads.append(path)
        return _FakeModel(path)
    fake = types.SimpleNamespace(AutoTokenizer=types.SimpleNamespace(from_pretrained=from_pretrained),
                                 AutoModelForCausalLM=types.SimpleNamespace(from_pretrained=from_pretrained))
    monkeypatch.setattr(hf_local, "_transformers", lambda: fake)
    a, b = _folder(tmp_path, "a"), _folder(tmp_path, "b")
    first_a = hf_local.load(a, vision=False)
    assert hf_local.load(a, vision=False) is first_a and len(loads) == 2  # reused: tokenizer + model once
    first_b = hf_local.load(b, vision=False)
    assert list(hf_local._LOADED.values()) == [first_b]                  # a was dropped
    assert hf_local.load(b, vision=False) is first_b
    again_a = hf_local.load(a, vision=False)
    assert again_a is not first_a and list(hf_local._LOADED.values()) == [again_a] and len(loads) == 6


# --- local models load only from inside models_dir -----------------------------------------

@pytest.fixture
def models(tmp_path):
    root = tmp_path / "LLM"
    (root / "mine").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    (root / "link-out").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (root / "link-in").symlink_to(root / "mine", target_is_directory=True)
    return root


def test_local_folders_inside_models_dir_are_used(models):
    assert hf_models.resolve("mine", models, vision=False) == (None, models / "mine")
    assert hf_models.resolve(str(models / "mine"), models, vision=False) == (None, models / "mine")
    assert hf_models.resolve("link-in", models, vision=False) == (None, models / "mine")
    assert hf_models.resolve("Qwen/Qwen2.5-7B-Instruct", models, vision=False) == \
        ("Qwen/Qwen2.5-7B-Instruct", models / "Qwen2.5-7B-Instruct")
    default = models / "Qwen2.5-VL-3B-Instruct"
    assert hf_models.resolve("", models, vision=True) == (hf_models.DEFAULT_VISION_MODEL, default)


@pytest.mark.parametrize("model, words", [
    ("../elsewhere", "may not contain '..'"),
    ("mine/../../elsewhere", "may not contain '..'"),
    ("Qwen/..", "may not contain '..'"),
    ("link-out", "outside the models folder"),
    ("{tmp}/elsewhere", "outside the models folder"),
    ("/etc", "outside the models folder"),
    ("~", "outside the models folder"),
    (".", "models folder .* itself"),
    ("a/b/c", "neither a model folder inside"),
    ("owner/name with space", "neither a model folder inside"),
])
def test_paths_out_of_models_dir_are_refused(models, tmp_path, model, words):
    model = model.replace("{tmp}", str(tmp_path))
    with pytest.raises(ValueError, match=words):
        hf_models.resolve(model, models, vision=False)
    with pytest.raises(ValueError, match=words):  # through the library call, fallback or not
        st.model.expand_prompt("a fox", backend="hf", model=model, models_dir=models, on_error="fallback", cache=False)


def test_a_repo_folder_is_not_taken_over_by_another_owner(models):
    folder = models / "Qwen2.5-3B-Instruct"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"")
    (folder / hf_models.REPO_MARKER).write_text("Qwen/Qwen2.5-3B-Instruct\n")
    assert hf_models.ensure_downloaded("Qwen/Qwen2.5-3B-Instruct", folder) == folder
    with pytest.raises(pe.BackendUnavailable, match="holds Qwen/Qwen2.5-3B-Instruct, not evil/Qwen2.5-3B-Instruct"):
        hf_models.ensure_downloaded("evil/Qwen2.5-3B-Instruct", folder)


def test_a_repo_id_downloads_into_models_dir_and_records_its_origin(models, monkeypatch):
    calls = []

    def fake_command(repo_id, folder, result, max_bytes):  # the download child, without the network
        calls.append((repo_id, folder))
        script = ("import json, pathlib, sys; d = pathlib.Path(sys.argv[1]); d.mkdir(parents=True); "
                  "(d / 'config.json').write_text('{}'); (d / 'model.safetensors').write_bytes(b''); "
                  "pathlib.Path(sys.argv[2]).write_text(json.dumps({'path': str(d)}))")
        return [sys.executable, "-c", script, str(folder), str(result)]
    monkeypatch.setattr(hf_models, "_download_command", fake_command)
    repo_id, folder = hf_models.resolve("Qwen2.5_7B", models, vision=False)
    assert hf_models.ensure_downloaded(repo_id, folder) == models / "Qwen2.5-7B-Instruct"
    assert calls == [("Qwen/Qwen2.5-7B-Instruct", models / "Qwen2.5-7B-Instruct")]
    assert (folder / hf_models.REPO_MARKER).read_text().strip() == "Qwen/Qwen2.5-7B-Instruct"
    with pytest.raises(pe.BackendUnavailable, match="not other/Qwen2.5-7B-Instruct"):
        hf_models.ensure_downloaded(*hf_models.resolve("other/Qwen2.5-7B-Instruct", models, vision=False))
    assert len(calls) == 1


def test_local_backend_checks_should_stop(models):
    with pytest.raises(pe.Interrupted, match="before loading"):
        st.model.expand_prompt("a fox", backend="hf", model="mine", models_dir=models, on_error="fallback",
                               cache=False, should_stop=lambda: True)
