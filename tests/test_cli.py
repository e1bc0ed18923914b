"""``spacetime-video run``: overrides, progress, exit codes (2 validation, 3 execution,
4 interrupted), the manifest check. The CLI runs as a subprocess against the session's host."""
from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from spacetime_video.headless import progress as P
from spacetime_video.headless.overrides import OverrideError, apply_overrides, set_seed

from fifo_gate import FifoGate

ROOT = Path(__file__).resolve().parents[1]
TEST_PATTERN_UI = ROOT / "workflows" / "Test pattern - No model.json"

# Runs the CLI of *this* checkout whatever is pip-installed (as conftest does for imports).
BOOT = ("import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('spacetime_video', {str(ROOT / '__init__.py')!r},"
        f" submodule_search_locations=[{str(ROOT)!r}])\n"
        "m = importlib.util.module_from_spec(spec); sys.modules['spacetime_video'] = m\n"
        "spec.loader.exec_module(m)\n"
        "from spacetime_video.headless.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n")


def cli(*args: str, env: dict | None = None, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BOOT, *args], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}, **kw)


def write(path: Path, graph: dict) -> Path:
    path.write_text(json.dumps(graph))
    return path


def pattern(width: int = 32, fps: float = 8.0) -> dict:
    return {"1": {"class_type": "EmptyImage", "inputs": {"width": width, "height": 16,
                                                         "batch_size": 5, "color": 255}},
            "2": {"class_type": "SpacetimeSaveVideo",
                  "inputs": {"images": ["1", 0], "fps": fps, "filename_prefix": "cli/t", "format": "mp4"}}}


# ------------------------------------------------------------------ overrides (no server)

INFO = {"EmptyImage": {"input": {"required": {"width": ["INT", {}], "height": ["INT", {}]}}},
        "Enc": {"input": {"required": {"text": ["STRING", {"multiline": True}],
                                       "fast": ["BOOLEAN", {}], "mode": [["a", "b"], {}]}}}}


def test_set_by_id_title_and_type_with_typed_values():
    g = {"1": {"class_type": "EmptyImage", "inputs": {"width": 8}, "_meta": {"title": "Canvas"}},
         "6": {"class_type": "Enc", "inputs": {"text": "x"}, "_meta": {"title": "Prompt"}}}
    apply_overrides(g, ["Prompt.text=123", "1.height=24", "canvas.width=40", "Enc.fast=true",
                        "6.mode=b"], INFO)
    assert g["6"]["inputs"] == {"text": "123", "fast": True, "mode": "b"}  # STRING stays a string
    assert g["1"]["inputs"] == {"width": 40, "height": 24}


@pytest.mark.parametrize("item,message", [
    ("Nope.width=3", r"no node with id, title or type 'Nope'.*1 \(Canvas\)"),
    ("Canvas.depth=3", r"no input 'depth'; its inputs: width, height"),
    ("Canvas.width=wide", r"'wide' is not an integer"),
    ("Twin.width=3", r"'Twin' matches nodes 2, 3"),
    ("width=3", r"expected NODE.INPUT=VALUE"),
])
def test_set_errors_name_the_choices(item, message):
    g = {"1": {"class_type": "EmptyImage", "inputs": {}, "_meta": {"title": "Canvas"}},
         "2": {"class_type": "EmptyImage", "inputs": {}, "_meta": {"title": "Twin"}},
         "3": {"class_type": "EmptyImage", "inputs": {}, "_meta": {"title": "Twin"}}}
    with pytest.raises(OverrideError, match=message):
        apply_overrides(g, [item], INFO)


def test_seed_sets_every_seed_but_not_links():
    g = {"1": {"class_type": "KSampler", "inputs": {"seed": 1, "steps": 3}},
         "2": {"class_type": "RandomNoise", "inputs": {"noise_seed": 5}},
         "3": {"class_type": "KSampler", "inputs": {"seed": ["9", 0]}}}
    assert set_seed(g, 77) == 2
    assert g["1"]["inputs"]["seed"] == 77 and g["2"]["inputs"]["noise_seed"] == 77
    assert g["3"]["inputs"]["seed"] == ["9", 0]


def test_progress_bar_draws_node_and_steps_on_a_tty():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    s = Tty()
    bar = P.ProgressBar({"3": {"class_type": "KSampler", "_meta": {"title": "Sampler"}}, "4": {}}, s)
    bar.update({"type": "executing", "data": {"node": "3"}})
    bar._last = 0
    bar.update({"type": "progress", "data": {"node": "3", "value": 5, "max": 10}})
    bar.finish()
    last = s.getvalue().split("\r")[-1]
    assert "5/10" in last and "Sampler (node 3)" in last and "#" * 14 in last


def test_progress_text_is_decoded_and_shown_with_the_node():
    import struct
    msg = struct.pack(">II", 3, 1) + b"2" + "window 1 of 2: step 1 of 3".encode()
    assert P.progress_text(msg) == ("2", "window 1 of 2: step 1 of 3")
    assert P.progress_text(struct.pack(">II", 1, 1) + b"\xff\xd8jpeg") is None        # a preview image

    class Tty(io.StringIO):
        def isatty(self):
            return True

    graph = {"1": {}, "2": {"class_type": "SpacetimeLongVideo", "_meta": {"title": "Long video"}}}
    s = Tty()
    bar = P.ProgressBar(graph, s)
    bar.update({"type": "executing", "data": {"node": "2"}})
    bar._last = 0
    bar.update({"type": "progress_text", "data": {"node": "2", "text": "window 1 of 2: step 1 of 3"}})
    assert s.getvalue().split("\r")[-1].rstrip().endswith("Long video (node 2): window 1 of 2: step 1 of 3")

    # not a terminal: a line at most every TEXT_EVERY seconds, and the node's last one when it ends
    s = io.StringIO()
    bar = P.ProgressBar(graph, s)
    bar.update({"type": "executing", "data": {"node": "2"}})
    for text in ("window 1 of 2: step 1 of 3", "window 1 of 2: step 2 of 3", "1 of 2 windows done",
                 "done: 2 windows (0 read back from checkpoints), 33 frames in long_00001_.mp4"):
        bar.update({"type": "progress_text", "data": {"node": "2", "text": text}})
    bar.update({"type": "progress_text", "data": {"node": "1", "text": "another node's line"}})
    bar.update({"type": "executing", "data": {"node": None}})
    bar.finish()
    lines = [line.strip() for line in s.getvalue().splitlines() if ": " in line]
    assert lines == ["Long video (node 2): window 1 of 2: step 1 of 3",
                     "Long video (node 2): done: 2 windows (0 read back from checkpoints), 33 frames in "
                     "long_00001_.mp4"], s.getvalue()


# ------------------------------------------------------------------ against the host

@pytest.mark.host
def test_websocket_client_receives_the_prompts_events(host):
    ws = P.connect(host.url, "ws-test")
    try:
        status, body = host.client.queue(pattern(width=16), client_id="ws-test")
        assert status == 200, body
        kinds, nodes = [], set()
        for event in P.events(ws, body["prompt_id"], poll=1.0):
            assert event is not None, "no websocket event within a second"
            kinds.append(event["type"])
            if event["type"] == "executing" and event["data"]["node"]:
                nodes.add(event["data"]["node"])
            if event["type"] in ("execution_success", "execution_error"):
                break
    finally:
        ws.close()
    assert kinds[-1] == "execution_success" and "execution_start" in kinds
    assert nodes == {"1", "2"}


@pytest.mark.host
def test_run_ui_workflow_with_set_progress_and_outputs(host, tmp_path):
    r = cli("run", str(TEST_PATTERN_UI), "--server", host.url, "--out", str(tmp_path / "o"),
            "--set", "Test pattern.width=32")
    assert r.returncode == 0, r.stderr
    files = [Path(line) for line in r.stdout.split()]
    assert len(files) == 1 and files[0].suffix == ".mp4"
    import av

    with av.open(str(files[0])) as f:
        assert f.streams.video[0].codec_context.width == 32  # the --set took effect
    assert "Test pattern (node 1)" in r.stderr and "Save Video (Spacetime) (node 2)" in r.stderr


@pytest.mark.host
def test_validation_error_exits_2_naming_node_and_input(host, tmp_path):
    r = cli("run", str(write(tmp_path / "w.json", pattern(width=-5))), "--server", host.url)
    assert r.returncode == 2, r.stderr
    assert "node 1 (EmptyImage), input 'width'" in r.stderr


@pytest.mark.host
def test_set_of_unknown_input_exits_2(host):
    r = cli("run", str(TEST_PATTERN_UI), "--server", host.url, "--set", "1.depth=3")
    assert r.returncode == 2 and "no input 'depth'" in r.stderr, r.stderr


@pytest.mark.host
def test_ui_workflow_with_unknown_node_exits_2(host, tmp_path):
    wf = json.loads(TEST_PATTERN_UI.read_text())
    wf["nodes"][0]["type"] = "NoSuchNodeAnywhere"
    r = cli("run", str(write(tmp_path / "w.json", wf)), "--server", host.url)
    assert r.returncode == 2 and "NoSuchNodeAnywhere (node 1)" in r.stderr, r.stderr


@pytest.mark.host
def test_execution_error_exits_3(host, tmp_path):
    (host.base_dir / "input" / "not_an_image.png").write_bytes(b"this is no PNG")
    graph = {"1": {"class_type": "LoadImage", "inputs": {"image": "not_an_image.png"}},
             "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}}
    r = cli("run", str(write(tmp_path / "w.json", graph)), "--server", host.url)
    assert r.returncode == 3, r.stderr
    assert re.search(r"node 1 \(LoadImage\) failed: \w+", r.stderr), r.stderr


def _ctrl_c_as_in_a_terminal() -> None:
    """In the CLI child before it starts: SIGINT delivered and handled by default, whatever the
    test runner inherited (a background job ignores it; a library may have blocked it)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def _signal_state(pid: int) -> str:
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError as e:
        return f"no /proc status: {e}"
    return "; ".join(line for line in lines if line.startswith(("State", "Sig", "Shd")))


@pytest.mark.host
def test_ctrl_c_interrupts_the_servers_job_and_exits_4(host, tmp_path):
    gate = FifoGate(host.base_dir / "input")
    # the child dumps its threads' stacks on SIGUSR1, so a hang says where it is
    boot = "import faulthandler, signal\nfaulthandler.register(signal.SIGUSR1, all_threads=True)\n" + BOOT
    proc = subprocess.Popen([sys.executable, "-c", boot, "run",
                             str(write(tmp_path / "w.json", gate.graph())), "--server", host.url],
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"},
                            preexec_fn=_ctrl_c_as_in_a_terminal)
    prompt_id, history, said = None, None, []
    try:
        for line in proc.stderr:
            said.append(line)
            m = re.search(r"queued prompt (\S+)", line)
            if m:
                prompt_id = m.group(1)
                break
        assert prompt_id, "the CLI never queued the prompt:\n" + "".join(said)
        # keep reading what the CLI writes: a full pipe would block it before it can exit
        threading.Thread(target=lambda: said.extend(proc.stderr), daemon=True).start()
        gate.wait_running(host.client, prompt_id)
        proc.send_signal(signal.SIGINT)
        try:
            code = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            state = _signal_state(proc.pid)
            proc.send_signal(signal.SIGUSR1)
            time.sleep(2)
            raise AssertionError(f"the CLI did not exit within 60 s of Ctrl-C; its {state}; this process: SIGINT "
                                 f"handler {signal.getsignal(signal.SIGINT)!r}, blocked "
                                 f"{sorted(signal.pthread_sigmask(signal.SIG_BLOCK, []))}; "
                                 "its stderr:\n" + "".join(said[-80:])) from None
        assert code == 4, "".join(said)
    finally:
        if proc.poll() is None:
            proc.kill()
        if prompt_id:  # always: a gate left shut would hold the shared server for every later test
            history = gate.release(host.client, prompt_id)  # the blocked node ends; the next must not run
    kinds = [kind for kind, _ in history["status"]["messages"]]
    assert "execution_interrupted" in kinds and "execution_success" not in kinds


@pytest.mark.host
def test_missing_catalog_model_fails_before_queueing_with_the_download_command(host, tmp_path):
    graph = {"9": {"class_type": "UNETLoader", "inputs": {"unet_name": "wan2.1_t2v_1.3B_fp16.safetensors",
                                                          "weight_dtype": "default"}}}
    graph.update(pattern())
    r = cli("run", str(write(tmp_path / "w.json", graph)), "--server", host.url)
    assert r.returncode == 2, r.stderr
    assert "spacetime-video models download wan2.1-t2v-1.3b" in r.stderr
    assert "queued prompt" not in r.stderr


@pytest.mark.host
def test_manifest_entry_is_checked_against_the_servers_folders(host, tmp_path):
    manifest = write(tmp_path / "models.json", {"workflows": {"mine.json": ["wan2.2-vae"]}})
    wf = write(tmp_path / "mine_api.json", pattern())  # an API twin shares its UI file's entry
    args = ("run", str(wf), "--server", host.url, "--manifest", str(manifest), "--out", str(tmp_path))
    r = cli(*args)
    assert r.returncode == 2 and "models download wan2.2-vae" in r.stderr, r.stderr
    fake = host.base_dir / "models" / "vae" / "wan2.2_vae.safetensors"
    fake.parent.mkdir(parents=True, exist_ok=True)
    fake.write_bytes(b"placeholder")
    try:
        r = cli(*args)
        assert r.returncode == 0, r.stderr
    finally:
        fake.unlink()


@pytest.mark.host
def test_polling_fallback_gives_the_same_result(host, tmp_path):
    r = cli("run", str(write(tmp_path / "w.json", pattern(width=16))), "--server", host.url,
            "--no-progress", "--out", str(tmp_path / "o"))
    assert r.returncode == 0, r.stderr
    assert len(list((tmp_path / "o").glob("*.mp4"))) == 1 and "(node 1)" not in r.stderr


@pytest.mark.host
@pytest.mark.slow
def test_started_host_sees_the_models_dir_for_the_manifest_check(tmp_path):
    """Without --server a private ComfyUI is started; its model folders include --models-dir."""
    models = tmp_path / "models"
    (models / "vae").mkdir(parents=True)
    (models / "vae" / "wan2.2_vae.safetensors").write_bytes(b"placeholder")
    manifest = write(tmp_path / "models.json", {"workflows": {"mine.json": ["wan2.2-vae"]}})
    wf = write(tmp_path / "mine.json", pattern(width=16))
    r = cli("run", str(wf), "--manifest", str(manifest), "--models-dir", str(models),
            "--out", str(tmp_path / "o"), "--base-dir", str(tmp_path / "base"))
    assert r.returncode == 0, r.stderr
    assert len(list((tmp_path / "o").glob("*.mp4"))) == 1


@pytest.mark.host
def test_convert_prints_the_api_twin(host):
    r = cli("convert", str(TEST_PATTERN_UI), "--server", host.url)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    twin = json.loads((ROOT / "workflows" / "api" / "foundation_test_pattern_api.json").read_text())
    assert {k: (v["class_type"], v["inputs"]) for k, v in got.items()} == \
        {k: (v["class_type"], v["inputs"]) for k, v in twin.items()}
