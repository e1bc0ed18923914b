"""The prompt expander facing untrusted workflows: every node input may come from a stranger.

Proved here against real sockets on loopback: the API key never follows a redirect to another
port or host; only variables the owner allowed are read, and keys go only to hosts the owner
allowed (checked before connecting); a key a server echoes back is redacted from the caption,
the cache files, logs and exceptions; a hung server is interrupted within ~0.1 s and ended by
the deadline; local models load only from inside models_dir; broken text is a clear ValueError.
"""
from __future__ import annotations

import json
import logging
import math
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

import spacetime_video as st
from spacetime_video.model import prompt_expander as pe
from spacetime_video.model.prompt_expander import keys
from spacetime_video.model.prompt_expander.backends import hf_local, openai_compat
from test_prompt_expander_http import SECRET, FakeOpenAI

KEY_VAR = "SPACETIME_TEST_API_KEY"


@pytest.fixture(autouse=True)
def fresh(tmp_path, monkeypatch):
    FakeOpenAI.requests.clear()
    pe.clear_memory_cache()
    monkeypatch.setenv("SPACETIME_PROMPT_CACHE", str(tmp_path / "cache"))
    for name in ("OPENAI_API_KEY", KEY_VAR, "SPACETIME_API_KEY_VARS", "SPACETIME_API_KEY_HOSTS"):
        monkeypatch.delenv(name, raising=False)


def serve(handler, host: str = "127.0.0.1"):
    httpd = ThreadingHTTPServer((host, 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd


@pytest.fixture
def server():
    httpd = serve(FakeOpenAI)
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def hung():
    """Accepts connections (the kernel completes them) and never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    sock.close()


def call(base_url, model="echo", **kw):
    kw.setdefault("retries", 0)
    kw.setdefault("on_error", "raise")
    return st.model.expand_prompt(kw.pop("prompt", "a red fox"), backend="openai", base_url=base_url, model=model,
                                  **kw)


def http_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "spacetime-llm-http" and t.is_alive()]


# --- 1. the Authorization header never follows a redirect off the host:port -----------------

def redirector(target: str, seen: list):
    class Redirect(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            seen.append(dict(self.headers))
            self.send_response(307)  # 307 keeps the method and body
            self.send_header("Location", target)
            self.send_header("Content-Length", "0")
            self.end_headers()
    return Redirect


@pytest.mark.parametrize("target_host", ["127.0.0.1", "localhost"])
def test_redirect_to_another_port_or_host_drops_the_key(server, monkeypatch, target_host):
    monkeypatch.setenv(KEY_VAR, SECRET)
    port_b = int(server.rsplit(":", 1)[1].split("/")[0])
    seen: list[dict] = []
    a = serve(redirector(f"http://{target_host}:{port_b}/v1/chat/completions", seen))
    try:
        out = call(f"http://127.0.0.1:{a.server_address[1]}/v1", "echo", api_key_env=KEY_VAR, cache=False)
    finally:
        a.shutdown()
        a.server_close()
    assert out.endswith("About a red fox.")                                   # B answered, after the redirect
    assert seen and seen[0].get("Authorization") == f"Bearer {SECRET}"       # A (allowed) got the key
    (at_b,) = FakeOpenAI.requests
    assert "Authorization" not in at_b["headers"], "the key followed the redirect to another port"


def test_redirect_on_the_same_host_and_port_keeps_the_key(monkeypatch):
    """The control for the test above: a redirect within one server keeps the header, so its
    absence there comes from the change of port, not from a test that cannot see headers."""
    monkeypatch.setenv(KEY_VAR, SECRET)

    class SameServer(FakeOpenAI):
        def do_POST(self) -> None:
            if self.path == "/old/chat/completions":
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                self.send_response(307)
                self.send_header("Location", "/v1/chat/completions")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return None
            return super().do_POST()

    httpd = serve(SameServer)
    try:
        call(f"http://127.0.0.1:{httpd.server_address[1]}/old", "echo", api_key_env=KEY_VAR, cache=False)
    finally:
        httpd.shutdown()
        httpd.server_close()
    (req,) = FakeOpenAI.requests
    assert req["headers"]["Authorization"] == f"Bearer {SECRET}"


# --- 2. api_key_env names only variables the owner allowed ------------------------------------

@pytest.mark.parametrize("name", ["AWS_SECRET_ACCESS_KEY", "HOME", "PATH", "GITHUB_TOKEN", "_API_KEY"])
def test_api_key_env_outside_the_allow_list_is_refused_without_its_value(server, monkeypatch, name):
    value = "value-that-must-stay-private-4711"
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match="not an allowed API key variable") as err:
        call(server, "echo", api_key_env=name, on_error="fallback")  # fallback does not hide it
    msg = str(err.value)
    assert name in msg and "_API_KEY" in msg and "SPACETIME_API_KEY_VARS" in msg and value not in msg
    assert not FakeOpenAI.requests


def test_spacetime_api_key_vars_replaces_the_suffix_rule(server, monkeypatch):
    monkeypatch.setenv("SPACETIME_API_KEY_VARS", " MY_TOKEN , OTHER_VAR,")
    monkeypatch.setenv("MY_TOKEN", SECRET)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-other-key-1234567890")
    call(server, "echo", api_key_env="MY_TOKEN", cache=False)
    assert FakeOpenAI.requests[-1]["headers"]["Authorization"] == f"Bearer {SECRET}"
    with pytest.raises(ValueError, match="allows only MY_TOKEN, OTHER_VAR") as err:
        call(server, "echo", api_key_env="OPENAI_API_KEY", cache=False)
    assert "sk-other-key" not in str(err.value)
    assert len(FakeOpenAI.requests) == 1
    call(server, "echo", api_key_env="", cache=False)  # no key: always fine
    assert "Authorization" not in FakeOpenAI.requests[-1]["headers"]


# --- 3. keys go only to loopback and the hosts in SPACETIME_API_KEY_HOSTS ---------------------

@pytest.fixture
def other_host_server():
    """The fake server on 127.0.0.2: a loopback address, but not one of the names allowed by
    default (localhost, 127.0.0.1, ::1), so it stands in for a remote host."""
    try:
        httpd = serve(FakeOpenAI, "127.0.0.2")
    except OSError:
        pytest.skip("127.0.0.2 is not usable here")
    yield httpd.server_address[1]
    httpd.shutdown()
    httpd.server_close()


def test_key_is_refused_for_an_unlisted_host_and_sent_to_a_listed_one(other_host_server, monkeypatch):
    port = other_host_server
    url = f"http://127.0.0.2:{port}/v1"
    monkeypatch.setenv(KEY_VAR, SECRET)
    with pytest.raises(ValueError) as err:
        call(url, "echo", api_key_env=KEY_VAR, cache=False, on_error="fallback")
    msg = str(err.value)
    assert f"127.0.0.2:{port}" in msg and "SPACETIME_API_KEY_HOSTS" in msg and KEY_VAR in msg and SECRET not in msg
    monkeypatch.setenv("SPACETIME_API_KEY_HOSTS", f"127.0.0.2:{port + 1}")  # another port: still refused
    with pytest.raises(ValueError, match="refusing to send the API key"):
        call(url, "echo", api_key_env=KEY_VAR, cache=False)
    assert not FakeOpenAI.requests                                            # nothing reached the server
    monkeypatch.setenv("SPACETIME_API_KEY_HOSTS", "llm.example.com, 127.0.0.2")
    call(url, "echo", api_key_env=KEY_VAR, cache=False)
    monkeypatch.setenv("SPACETIME_API_KEY_HOSTS", f"127.0.0.2:{port}")
    call(url, "echo", api_key_env=KEY_VAR, cache=False, seed=1)
    assert [r["headers"].get("Authorization") for r in FakeOpenAI.requests] == [f"Bearer {SECRET}"] * 2
    monkeypatch.delenv("SPACETIME_API_KEY_HOSTS")
    monkeypatch.delenv(KEY_VAR)
    call(url, "echo", api_key_env=KEY_VAR, cache=False, seed=2)             # no key available: goes ahead
    assert "Authorization" not in FakeOpenAI.requests[-1]["headers"]


def test_hosted_api_with_a_key_is_refused_before_any_connection(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)

    def no_network(*args, **kwargs):
        raise AssertionError("the expander tried to reach the network")
    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    with pytest.raises(ValueError, match=r"api\.openai\.com:443.*SPACETIME_API_KEY_HOSTS=api\.openai\.com") as err:
        call("https://api.openai.com/v1", "gpt-4o-mini", cache=False)
    assert "OPENAI_API_KEY" in str(err.value) and SECRET not in str(err.value)


@pytest.mark.parametrize("url, allowed", [
    ("http://localhost:11434/v1", True), ("http://LOCALHOST.:8080/v1", True), ("http://127.0.0.1/v1", True),
    ("http://[::1]:8000/v1", True), ("https://api.example.com/v1", True), ("http://api.example.com/v1", False),
    ("https://api.example.com:8443/v1", False), ("https://llm.local:8443/v1", True), ("https://llm.local/v1", False),
    ("http://[fd00::5]:9/v1", True), ("http://127.0.0.2/v1", False), ("http://localhost.evil.com/v1", False),
])
def test_key_host_rules(monkeypatch, url, allowed):
    monkeypatch.setenv("SPACETIME_API_KEY_HOSTS", "api.example.com:443, llm.local:8443,[fd00::5]")
    assert keys.key_host_allowed(url) is allowed


@pytest.mark.parametrize("url, words", [
    ("http://127.0.0.1@evil.example/v1", "user info"),
    ("http://evil.example\\@127.0.0.1/v1", "backslashes"),
    ("http://localhost:11434/v1 ", None),       # trailing space is stripped, fine
    ("http://local host/v1", "spaces"),
    ("http://localhost:99999/v1", "no valid host"),
])
def test_urls_that_parsers_could_read_differently_are_refused(monkeypatch, url, words):
    monkeypatch.setenv(KEY_VAR, SECRET)
    if words is None:
        assert openai_compat.chat_url(url) == "http://localhost:11434/v1/chat/completions"
        return
    with pytest.raises(ValueError, match=words):
        call(url, "echo", api_key_env=KEY_VAR, cache=False)


# --- 4. a key the server echoes back is redacted everywhere -----------------------------------

def test_echoed_key_never_reaches_caption_cache_logs_or_errors(server, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv(KEY_VAR, SECRET)
    folder = tmp_path / "prompt-cache"
    with caplog.at_level(logging.DEBUG):
        out = call(server, "auth-answer", api_key_env=KEY_VAR, cache=folder)
        embedded = call(server, "auth-answer", api_key_env=KEY_VAR, cache=folder, model_family="embedded")
        with pytest.raises(pe.MalformedResponse) as junk:
            call(server, "auth-junk", api_key_env=KEY_VAR, cache=folder)
        with pytest.raises(pe.RequestRejected) as rejected:
            call(server, "auth-echo", api_key_env=KEY_VAR, cache=folder, retries=2)
        fallback = call(server, "auth-junk", api_key_env=KEY_VAR, cache=folder, on_error="fallback")
    assert all(r["headers"]["Authorization"] == f"Bearer {SECRET}" for r in FakeOpenAI.requests)  # it was sent
    assert "the header was Bearer ***" in out and "Key again: ***" in out
    for text in (out, embedded, fallback, str(junk.value), repr(junk.value), str(rejected.value), caplog.text):
        assert SECRET not in text
    assert "your header: Bearer ***" in str(junk.value) and "Bearer ***" in str(rejected.value)
    files = list(folder.glob("*.json"))
    assert len(files) == 2 and all(SECRET not in f.read_text(encoding="utf-8") for f in files)
    assert any("Bearer ***" in f.read_text(encoding="utf-8") for f in files)
    req = openai_compat.ChatRequest(base_url=server, model="m", system="s", user="u", api_key=SECRET)
    assert SECRET not in repr(req)


# --- 6. interrupt and deadline ---------------------------------------------------------------

def stop_after(seconds: float):
    t0 = time.monotonic()
    return lambda: time.monotonic() - t0 >= seconds


def test_should_stop_interrupts_a_hung_server_quickly(hung):
    assert not issubclass(pe.Interrupted, pe.PromptExpanderError)
    for on_error in ("raise", "fallback"):  # the fallback never swallows an interrupt
        t0 = time.monotonic()
        with pytest.raises(pe.Interrupted, match="interrupted while waiting for http://127.0.0.1"):
            call(hung, "m", timeout=30, retries=2, deadline=60, cache=False, on_error=on_error,
                 should_stop=stop_after(0.3))
        latency = time.monotonic() - t0 - 0.3
        assert latency < 1.0, f"Interrupted came {latency:.3f}s after should_stop turned True"
        assert latency < 0.5, f"interrupt latency {latency:.3f}s (polled every {openai_compat.POLL_SECONDS}s)"
    end = time.monotonic() + 1.0
    while http_threads() and time.monotonic() < end:  # the connection was shut: the worker ends too
        time.sleep(0.01)
    assert not http_threads()


def test_should_stop_interrupts_the_retry_wait(server):
    t0 = time.monotonic()
    with pytest.raises(pe.Interrupted, match="waiting to retry"):
        call(server, "down", retries=3, cache=False, should_stop=stop_after(0.2))
    assert time.monotonic() - t0 < 0.45  # the first backoff is 0.5 s
    assert len(FakeOpenAI.requests) == 1


def test_deadline_ends_a_hung_call_across_retries(hung):
    t0 = time.monotonic()
    with pytest.raises(pe.ServerTimeout, match=r"deadline of 1\.2s for the whole call") as err:
        call(hung, "m", timeout=0.4, retries=5, deadline=1.2, cache=False)
    elapsed = time.monotonic() - t0
    assert 1.1 <= elapsed < 2.2, elapsed  # attempt 0.4 s, wait 0.5 s, attempt cut at the deadline
    assert "raise deadline" in str(err.value)
    t0 = time.monotonic()
    with pytest.raises(pe.ServerTimeout, match=r"deadline of 0\.5s"):
        call(hung, "m", timeout=30, retries=0, deadline=0.5, cache=False)  # shorter than one attempt
    assert time.monotonic() - t0 < 1.0


def test_deadline_refuses_a_retry_it_cannot_wait_for(server):
    t0 = time.monotonic()
    with pytest.raises(pe.ServerTimeout, match=r"HTTP 503.*not retried: the deadline of 0\.3s"):
        call(server, "down", retries=3, deadline=0.3, cache=False)
    assert time.monotonic() - t0 < 0.3 and len(FakeOpenAI.requests) == 1


@pytest.mark.parametrize("bad", [0, -1, math.nan, math.inf, "soon", True])
def test_deadline_is_validated(bad):
    with pytest.raises(ValueError, match="deadline"):
        pe.LLMOptions(deadline=bad)
    with pytest.raises(ValueError, match="timeout"):
        pe.LLMOptions(timeout=math.nan)


@pytest.fixture
def trickle():
    """Sends a valid status line, then one header byte every 0.1 s, forever: a read timeout
    between bytes alone would never fire."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(4)
    stop = threading.Event()

    def loop():
        sock.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = sock.accept()
            except OSError:
                continue
            with conn:
                try:
                    conn.sendall(b"HTTP/1.1 200 OK\r\nX-Slow: ")
                    while not stop.is_set():
                        conn.sendall(b"a")
                        time.sleep(0.1)
                except OSError:
                    pass
    threading.Thread(target=loop, daemon=True).start()
    yield f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    stop.set()
    sock.close()


def test_timeout_bounds_the_whole_attempt(trickle):
    t0 = time.monotonic()
    with pytest.raises(pe.ServerTimeout, match="did not answer within 0.5s"):
        call(trickle, "m", timeout=0.5, cache=False)
    assert time.monotonic() - t0 < 1.2


@pytest.fixture
def unreachable():
    """A listener whose accept queue is full: the kernel drops further SYNs, so a connect hangs."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(0)
    port = sock.getsockname()[1]
    fillers = []
    for _ in range(4):
        c = socket.socket()
        c.setblocking(False)
        c.connect_ex(("127.0.0.1", port))
        fillers.append(c)
    time.sleep(0.05)
    probe = socket.socket()
    probe.settimeout(0.3)
    try:
        probe.connect(("127.0.0.1", port))
        pytest.skip("this kernel completes connections beyond the backlog; no hanging connect to test")
    except OSError:
        pass
    finally:
        probe.close()
    yield f"http://127.0.0.1:{port}/v1"
    for c in fillers:
        c.close()
    sock.close()


def test_connect_timeout_is_real_and_named(unreachable):
    t0 = time.monotonic()
    with pytest.raises(pe.ServerTimeout, match=r"could not connect to .* within 0\.5s"):
        call(unreachable, "m", timeout=0.5, cache=False)
    assert time.monotonic() - t0 < 1.0


def test_oversized_answers_are_refused():
    class Huge(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            body = json.dumps({"choices": [{"message": {"content": "x" * (9 * 2**20)}}]}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            try:
                self.wfile.write(body)
            except OSError:
                pass

    httpd = serve(Huge)
    try:
        with pytest.raises(pe.MalformedResponse, match="more than 8 MiB"):
            call(f"http://127.0.0.1:{httpd.server_address[1]}/v1", "m", cache=False)
    finally:
        httpd.shutdown()
        httpd.server_close()


# --- 5. local models load only from inside models_dir -----------------------------------------

@pytest.fixture
def models(tmp_path):
    root = tmp_path / "LLM"
    (root / "mine").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    (root / "link-out").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (root / "link-in").symlink_to(root / "mine", target_is_directory=True)
    return root


def test_local_folders_inside_models_dir_are_used(models):
    assert hf_local.resolve("mine", models, vision=False) == (None, models / "mine")
    assert hf_local.resolve(str(models / "mine"), models, vision=False) == (None, models / "mine")
    assert hf_local.resolve("link-in", models, vision=False) == (None, models / "mine")
    assert hf_local.resolve("Qwen/Qwen2.5-7B-Instruct", models, vision=False) == \
        ("Qwen/Qwen2.5-7B-Instruct", models / "Qwen2.5-7B-Instruct")
    default = models / "Qwen2.5-VL-3B-Instruct"
    assert hf_local.resolve("", models, vision=True) == (hf_local.DEFAULT_VISION_MODEL, default)


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
        hf_local.resolve(model, models, vision=False)
    with pytest.raises(ValueError, match=words):  # through the library call, fallback or not
        st.model.expand_prompt("a fox", backend="hf", model=model, models_dir=models, on_error="fallback", cache=False)


def test_a_repo_folder_is_not_taken_over_by_another_owner(models):
    folder = models / "Qwen2.5-3B-Instruct"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"")
    (folder / hf_local.REPO_MARKER).write_text("Qwen/Qwen2.5-3B-Instruct\n")
    assert hf_local.ensure_downloaded("Qwen/Qwen2.5-3B-Instruct", folder) == folder
    with pytest.raises(pe.BackendUnavailable, match="holds Qwen/Qwen2.5-3B-Instruct, not evil/Qwen2.5-3B-Instruct"):
        hf_local.ensure_downloaded("evil/Qwen2.5-3B-Instruct", folder)


def test_a_repo_id_downloads_into_models_dir_and_records_its_origin(models, monkeypatch):
    hub = pytest.importorskip("huggingface_hub")
    calls = []

    def fake_download(repo_id, local_dir, allow_patterns):
        calls.append((repo_id, local_dir))
        folder = models / "Qwen2.5-7B-Instruct"
        folder.mkdir()
        (folder / "config.json").write_text("{}")
        (folder / "model.safetensors").write_bytes(b"")
    monkeypatch.setattr(hub, "snapshot_download", fake_download)
    repo_id, folder = hf_local.resolve("Qwen2.5_7B", models, vision=False)
    assert hf_local.ensure_downloaded(repo_id, folder) == models / "Qwen2.5-7B-Instruct"
    assert calls == [("Qwen/Qwen2.5-7B-Instruct", str(models / "Qwen2.5-7B-Instruct"))]
    assert (folder / hf_local.REPO_MARKER).read_text().strip() == "Qwen/Qwen2.5-7B-Instruct"
    with pytest.raises(pe.BackendUnavailable, match="not other/Qwen2.5-7B-Instruct"):
        hf_local.ensure_downloaded(*hf_local.resolve("other/Qwen2.5-7B-Instruct", models, vision=False))


def test_local_backend_checks_should_stop(models):
    with pytest.raises(pe.Interrupted, match="before loading"):
        st.model.expand_prompt("a fox", backend="hf", model="mine", models_dir=models, on_error="fallback",
                               cache=False, should_stop=lambda: True)


# --- 7. text that cannot be encoded ----------------------------------------------------------

@pytest.mark.parametrize("prompt, words", [("a red \ud83d fox", "lone surrogate"), ("a red\x00fox", "NUL"),
                                           ("\udfff", "lone surrogate")])
@pytest.mark.parametrize("backend", ["rules", "openai"])
def test_unencodable_prompts_are_a_clear_value_error(server, prompt, words, backend):
    with pytest.raises(ValueError, match=f"prompt .*{words}"):
        st.model.expand_prompt(prompt, backend=backend, base_url=server, model="echo", model_family="embedded",
                               on_error="fallback", cache=False)
    with pytest.raises(ValueError, match=words):
        st.model.expand_prompt(prompt, language="zh")
    assert not FakeOpenAI.requests
    with pytest.raises(ValueError, match=f"model .*{words}"):
        st.model.expand_prompt("a fox", backend="openai", base_url=server, model="ec" + prompt, cache=False)
