"""The prompt expander facing untrusted workflows: every node input may come from a stranger.

Proved here against real sockets on loopback: the API key never follows a redirect to another
port or host; only variables the owner allowed are read, and keys go only to hosts the owner
allowed (checked before connecting); a key a server echoes back is redacted from the caption,
the cache files, logs and exceptions; broken text is a clear ValueError. Waits and deadlines:
test_prompt_expander_waits.py; local model folders: test_prompt_expander_local.py.
"""
from __future__ import annotations

import json
import logging
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

import spacetime_video as st
from spacetime_video.model import prompt_expander as pe
from spacetime_video.model.prompt_expander import errors, keys
from spacetime_video.model.prompt_expander.backends import openai_compat
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
    assert f"add http://127.0.0.2:{port} to SPACETIME_API_KEY_HOSTS" in msg and "unencrypted" in msg
    # Listed without http://: https only, so this plain-http URL stays refused; so does another port.
    for listed in ("127.0.0.2", f"127.0.0.2:{port}", f"https://127.0.0.2:{port}", f"http://127.0.0.2:{port + 1}"):
        monkeypatch.setenv("SPACETIME_API_KEY_HOSTS", listed)
        with pytest.raises(ValueError, match="refusing to send the API key"):
            call(url, "echo", api_key_env=KEY_VAR, cache=False)
    assert not FakeOpenAI.requests                                            # nothing reached the server
    monkeypatch.setenv("SPACETIME_API_KEY_HOSTS", "llm.example.com, http://127.0.0.2")
    call(url, "echo", api_key_env=KEY_VAR, cache=False)
    monkeypatch.setenv("SPACETIME_API_KEY_HOSTS", f"http://127.0.0.2:{port}")
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


HOSTS = "api.example.com, llm.local:8443, http://lan-box:8000, HTTP://Plain.Example, [fd00::5], http://[fd00::6]:9"


@pytest.mark.parametrize("url, allowed", [
    # loopback: exactly these names, any scheme and port
    ("http://localhost:11434/v1", True), ("http://127.0.0.1/v1", True), ("http://[::1]:8000/v1", True),
    ("https://LOCALHOST:8443/v1", True),
    # a trailing dot is a DNS name, not loopback, nor the listed host
    ("http://localhost.:8080/v1", False), ("http://LOCALHOST.:8080/v1", False), ("http://127.0.0.1./v1", False),
    ("https://api.example.com./v1", False), ("http://127.0.0.2/v1", False), ("http://localhost.evil.com/v1", False),
    # "host": https on any port, never plain http
    ("https://api.example.com/v1", True), ("https://api.example.com:8443/v1", True),
    ("http://api.example.com/v1", False), ("http://api.example.com:25/x", False),
    ("http://api.example.com:443/v1", False),
    # "host:port": https on that port only
    ("https://llm.local:8443/v1", True), ("https://llm.local/v1", False), ("http://llm.local:8443/v1", False),
    # "http://host:port": http (and https) on that port; "http://host": on any port
    ("http://lan-box:8000/v1", True), ("https://lan-box:8000/v1", True), ("http://lan-box/v1", False),
    ("http://lan-box:8001/v1", False), ("http://plain.example/v1", True), ("http://plain.example:81/v1", True),
    ("https://plain.example/v1", True),
    # IPv6 entries follow the same rules
    ("https://[fd00::5]:9/v1", True), ("http://[fd00::5]:9/v1", False), ("http://[fd00::6]:9/v1", True),
    ("http://[fd00::6]:10/v1", False),
])
def test_key_host_rules(monkeypatch, url, allowed):
    monkeypatch.setenv("SPACETIME_API_KEY_HOSTS", HOSTS)
    assert keys.key_host_allowed(url) is allowed


def test_a_listed_name_with_a_trailing_dot_is_that_name_only(monkeypatch):
    monkeypatch.setenv("SPACETIME_API_KEY_HOSTS", "api.example.com., http://localhost.")
    assert keys.key_host_allowed("https://api.example.com./v1") and keys.key_host_allowed("http://localhost.:1/v1")
    assert not keys.key_host_allowed("https://api.example.com/v1")
    assert keys.url_host_port("http://LocalHost.:8080/v1") == ("localhost.", 8080)


@pytest.mark.parametrize("url, entry", [
    ("https://api.example.com/v1", "add api.example.com to SPACETIME_API_KEY_HOSTS"),
    ("http://api.example.com/v1", "add http://api.example.com:80 to SPACETIME_API_KEY_HOSTS"),
    ("http://localhost.:8080/v1", "add http://localhost.:8080 to SPACETIME_API_KEY_HOSTS"),
    ("http://[fd00::7]:9/v1", "add http://[fd00::7]:9 to SPACETIME_API_KEY_HOSTS"),
])
def test_refusal_says_what_to_add(monkeypatch, url, entry):
    monkeypatch.setenv("SPACETIME_API_KEY_HOSTS", "api.example.com:1")
    with pytest.raises(ValueError, match="refusing to send the API key") as err:
        keys.check_key_host(url, SECRET, KEY_VAR)
    msg = str(err.value)
    assert entry in msg and SECRET not in msg and KEY_VAR in msg
    assert ("unencrypted" in msg) == url.startswith("http:")


def test_plain_http_to_a_host_listed_for_https_is_refused_before_connecting(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    monkeypatch.setenv("SPACETIME_API_KEY_HOSTS", "api.openai.com")

    def no_network(*args, **kwargs):
        raise AssertionError("the expander tried to reach the network")
    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    for url in ("http://api.openai.com/v1", "http://api.openai.com:25/x", "http://localhost./v1"):
        with pytest.raises(ValueError, match="refusing to send the API key") as err:
            call(url, "gpt-4o-mini", cache=False, on_error="fallback")
        assert SECRET not in str(err.value)


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


LEAK_KEY = "sk-Zq9xW4vB7nM2kL8pR3tY6uH1jG5fD0sAe"  # every 6 characters of it are specific to it


def u_escaped(text: str) -> str:
    return "".join(f"\\u{ord(c):04x}" for c in text)


def assert_no_key_fragment(text: str, key: str = LEAK_KEY) -> None:
    """No 6 characters of ``key`` in ``text``, as written or \\u-escaped (once or twice), and no
    start of it (3+ characters)."""
    forms = [text]
    for _ in range(3):
        forms.append(re.sub(r"\\+u([0-9a-fA-F]{4})", lambda m: chr(int(m.group(1), 16)), forms[-1]))
    for form in forms:
        assert key[:3] not in form, f"the start of the key leaked: {form[:400]!r}"
        for i in range(len(key) - 5):
            assert key[i:i + 6] not in form, f"{key[i:i + 6]!r} of the key leaked: {form[:400]!r}"


class Leaky(BaseHTTPRequestHandler):
    """Echoes the key it was sent, escaped or cut by a length limit; the model name says how."""

    def log_message(self, *args) -> None:
        pass

    def _send(self, status: int, body: str, ctype: str = "application/json") -> None:
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        model, key = body["model"], self.headers.get("Authorization", "")[len("Bearer "):]
        kind, _, n = model.partition(":")
        inside = int(n or 0)  # for cut-*: how many characters of the key fall inside the snippet
        if kind == "esc-junk":        # 200, \u-escaped key, not parsable
            return self._send(200, '{"echo": "' + u_escaped(key) + '", "choices": [')
        if kind == "esc-detail":      # 401, JSON without error.message (FastAPI style): the raw text is shown
            return self._send(401, '{"detail": "unknown key ' + u_escaped(key) + '"}')
        if kind == "esc-twice":       # 401, error.message holds the key escaped once more
            return self._send(401, json.dumps({"error": {"message": "unknown key " + u_escaped(key)}}))
        if kind == "cut-401":         # 401 plain text: the snippet keeps 300 characters
            return self._send(401, "x" * (300 - inside) + key + " is not a valid key", "text/plain")
        if kind == "cut-message":     # 401 JSON: error.message is cut at 500
            return self._send(401, json.dumps({"error": {"message": "y" * (500 - inside) + key}}))
        if kind == "cut-html":        # 200 HTML: the "it began with" snippet keeps 200 characters
            return self._send(200, "<html>" + "z" * (200 - 6 - inside) + key + "</html>", "text/html")
        if kind == "cut-503":         # 503, retried: the snippet also reaches the retry log line
            return self._send(503, "w" * (300 - inside) + key, "text/plain")
        if kind == "esc-answer":      # 200, an answer whose text holds the key escaped (twice in the body)
            content = f"A red fox; key \\u0073{u_escaped(key[1:])} and {key[:9]}\\u{ord(key[9]):04X}{key[10:]}."
            return self._send(200, json.dumps({"choices": [{"message": {"content": content}}]}))
        self._send(404, '{"error": {"message": "no such model"}}')


@pytest.fixture
def leaky(monkeypatch):
    monkeypatch.setenv(KEY_VAR, LEAK_KEY)
    httpd = serve(Leaky)
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    httpd.shutdown()
    httpd.server_close()


@pytest.mark.parametrize("model, error", [
    ("esc-junk", pe.MalformedResponse), ("esc-detail", pe.RequestRejected), ("esc-twice", pe.RequestRejected),
    *[(f"cut-401:{n}", pe.RequestRejected) for n in (3, 5, 6, 10, 30)],
    *[(f"cut-message:{n}", pe.RequestRejected) for n in (4, 12)],
    *[(f"cut-html:{n}", pe.MalformedResponse) for n in (3, 7, 20)],
    *[(f"cut-503:{n}", pe.ServerError) for n in (8,)],
])
def test_escaped_or_cut_keys_never_reach_errors_or_logs(leaky, caplog, model, error):
    with caplog.at_level(logging.DEBUG):
        with pytest.raises(error) as err:
            call(leaky, model, api_key_env=KEY_VAR, cache=False, retries=1 if model.startswith("cut-503") else 0,
                 deadline=30)
        fallback = call(leaky, model, api_key_env=KEY_VAR, cache=False, on_error="fallback")
    for text in (str(err.value), repr(err.value), caplog.text, fallback):
        assert_no_key_fragment(text)
    assert "***" in str(err.value)  # the key (or its cut-off start) was there, and was redacted
    if model.startswith("cut-503"):
        assert "retry 1/1" in caplog.text


def test_an_escaped_key_in_the_answer_never_reaches_caption_or_cache(leaky, tmp_path):
    folder = tmp_path / "answers"
    out = call(leaky, "esc-answer", api_key_env=KEY_VAR, cache=folder)
    assert out.startswith("A red fox; key *** and ***")
    (path,) = folder.glob("*.json")
    for text in (out, path.read_text(encoding="utf-8")):
        assert_no_key_fragment(text)


def test_redact_snippet():
    key = LEAK_KEY
    assert errors.redact_snippet("abc " + key + " def", key, 100) == "abc *** def"
    assert errors.redact_snippet("abc " + key, key, 6) == "abc **"                # redacted, then cut
    assert errors.redact_snippet("abc " + key[:6], key, 100) == "abc ***"         # a start of the key: dropped
    assert errors.redact_snippet("abc " + key[:3], key, 100) == "abc ***"
    assert errors.redact_snippet("abc " + key[:2], key, 100) == "abc sk"          # too short to tell
    assert errors.redact_snippet("abc " + u_escaped(key[:8]), key, 100) == "abc ***"
    assert errors.redact_snippet("abcdefgh", key, 4) == "abcd"
    assert errors.redact_snippet("abc " + key, None, 7) == "abc sk-"
    assert errors.redact_snippet("a " + u_escaped(key).upper().replace("\\U", "\\u"), key, 50) == "a ***"
    assert errors.redact_snippet('{"m": "a\\n\\"b\\" \\\\' + u_escaped(key[:5]), key, 100) == '{"m": "a\n"b" \\***'
    assert errors.redact("pre \\\\u0073" + key[1:] + " \\ud83d", key) == "pre *** \\ud83d"  # double; a lone surrogate
    assert errors.json_unescape("\\ud83d\\ude00 \\ud83d x \\q") == "\U0001F600 \\ud83d x \\q"


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
