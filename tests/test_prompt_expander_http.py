"""The OpenAI-compatible backend against a real HTTP server on loopback (http.server in a thread).

The fake server speaks the chat-completions protocol; what it does is chosen by the model
name each test sends, so tests never share mutable state:
  echo         200, text that depends on the seed and the user message
  slow         sleeps 2 s before answering (timeouts)
  flaky-<id>   500 on the first request for <id>, then like echo
  down         always 503
  malformed    200 with a body that is not JSON
  empty        200 with empty content
  refuse       200 with a refusal
  think        200 with a <think> block before the answer
  long         200 with 300 words
  embedded     200 with a sloppy toy-world caption
  auth-echo    401 whose body echoes the Authorization header back
  auth-answer  200 whose answer echoes the Authorization header back (a server that leaks it)
  auth-junk    200 with a body that is not JSON and echoes the Authorization header
  new-api      400 unless the length limit is sent as max_completion_tokens (newer hosted models)
any other name: 404 "model not found", as Ollama and OpenAI answer.
"""
from __future__ import annotations

import base64
import io
import json
import logging
import random
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

import spacetime_video as st
from spacetime_video.model import prompt_expander as pe

WORDS = "amber forest drifting lantern quiet river silver morning shadow velvet meadow ember".split()
SECRET = "sk-test-7f3Kq9ZbX2mW8vR1tY6uP0oL4nJ5hG"


class FakeOpenAI(BaseHTTPRequestHandler):
    counts: dict[str, int] = {}
    requests: list[dict] = []  # {"path", "headers", "body"}

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass

    def _send(self, status: int, body: bytes, ctype: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _answer(self, content: str | None, refusal: str | None = None) -> None:
        msg = {"role": "assistant", "content": content}
        if refusal:
            msg["refusal"] = refusal
        body = {"id": "x", "object": "chat.completion", "model": "m",
                "choices": [{"index": 0, "message": msg, "finish_reason": "stop"}]}
        self._send(200, json.dumps(body).encode())

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        body = json.loads(raw)
        FakeOpenAI.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
        if self.path != "/v1/chat/completions":
            return self._send(404, b'{"error": {"message": "no such route"}}')
        model = body["model"]
        user = body["messages"][1]["content"]
        user_text = user if isinstance(user, str) else next(p["text"] for p in user if p["type"] == "text")
        rng = random.Random(body.get("seed"))
        echo = f"seed {body.get('seed')} temperature {body.get('temperature')}: " \
               + " ".join(rng.choice(WORDS) for _ in range(6)) + f". About {user_text}."
        if model == "echo":
            return self._answer(echo)
        if model == "slow":
            time.sleep(2.0)
            return self._answer(echo)
        if model.startswith("flaky-"):
            FakeOpenAI.counts[model] = FakeOpenAI.counts.get(model, 0) + 1
            if FakeOpenAI.counts[model] == 1:
                return self._send(500, b'{"error": {"message": "overloaded, try again"}}')
            return self._answer(echo)
        if model == "down":
            return self._send(503, b'{"error": {"message": "service unavailable"}}')
        if model == "malformed":
            return self._send(200, b"<html>this is not json", "text/html")
        if model == "empty":
            return self._answer("")
        if model == "refuse":
            return self._answer(None, refusal="I cannot help with that.")
        if model == "think":
            return self._answer("<think>the user wants a fox; add detail</think>\n\"A fox in deep snow.\"")
        if model == "long":
            return self._answer(" ".join(f"word{i}." if i % 10 == 9 else f"word{i}" for i in range(300)))
        if model == "embedded":
            return self._answer("a crimson sphere is falling over a dark blue backdrop")
        if model == "new-api":
            if "max_tokens" in body:
                return self._send(400, b'{"error": {"message": "Unsupported parameter: \'max_tokens\'. '
                                       b'Use \'max_completion_tokens\' instead."}}')
            return self._answer(f"limit {body['max_completion_tokens']}")
        auth = self.headers.get("Authorization", "")
        if model == "auth-echo":
            return self._send(401, json.dumps({"error": {"message": f"invalid key in header {auth}"}}).encode())
        if model == "auth-answer":
            return self._answer(f"A red fox in snow; the header was {auth}. Key again: {auth[7:]}.")
        if model == "auth-junk":
            return self._send(200, f"<html>no json here, your header: {auth}".encode(), "text/html")
        self._send(404, json.dumps({"error": {"message": f"model '{model}' not found"}}).encode())


@pytest.fixture(scope="module")
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), FakeOpenAI)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(autouse=True)
def fresh(tmp_path, monkeypatch):
    FakeOpenAI.requests.clear()
    pe.clear_memory_cache()
    monkeypatch.setenv("SPACETIME_PROMPT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("SPACETIME_API_KEY_VARS", raising=False)
    monkeypatch.delenv("SPACETIME_API_KEY_HOSTS", raising=False)


def call(server, model, **kw):
    kw.setdefault("retries", 0)
    kw.setdefault("on_error", "raise")
    return st.model.expand_prompt(kw.pop("prompt", "a red fox"), backend="openai", base_url=server, model=model, **kw)


def test_success_sends_the_protocol(server):
    out = call(server, "echo", seed=7, temperature=0.3, task="t2v", model_family="wan2.2")
    assert out.startswith("seed 7 temperature 0.3:") and out.endswith("About a red fox.")
    (req,) = FakeOpenAI.requests
    body = req["body"]
    assert req["path"] == "/v1/chat/completions"
    assert body["model"] == "echo" and body["seed"] == 7 and body["temperature"] == 0.3
    assert body["stream"] is False and body["max_tokens"] > 100
    system, user = body["messages"]
    assert system["role"] == "system" and user == {"role": "user", "content": "a red fox"}
    assert system["content"] == pe.system_prompt("t2v", "wan2.2", "en", 100)
    assert "Wan 2.2" in system["content"] and "text-to-video" in system["content"]
    assert "Authorization" not in req["headers"]  # no key set: no header


def test_seed_reproducibility_and_cache(server, tmp_path):
    a = call(server, "echo", seed=1, cache=False)
    b = call(server, "echo", seed=1, cache=False)
    c = call(server, "echo", seed=2, cache=False)
    assert a == b and a != c
    assert [r["body"]["seed"] for r in FakeOpenAI.requests] == [1, 1, 2]
    # With the cache the second identical call never reaches the server, even after a restart
    # of the process (memory cleared, files kept).
    folder = tmp_path / "c"
    first = call(server, "echo", seed=3, cache=folder)
    pe.clear_memory_cache()
    again = call(server, "echo", seed=3, cache=folder)
    assert first == again and len(FakeOpenAI.requests) == 4
    call(server, "echo", seed=3, cache=folder, temperature=0.1)  # any input change is a new key
    assert len(FakeOpenAI.requests) == 5


def test_timeout_raises_or_falls_back(server, caplog):
    t0 = time.monotonic()
    with pytest.raises(pe.ServerTimeout, match="did not answer within 0.3s"):
        call(server, "slow", timeout=0.3)
    assert time.monotonic() - t0 < 1.5
    rules = st.model.expand_prompt("a red fox", seed=5)
    with caplog.at_level(logging.WARNING, logger="spacetime.prompt_expander"):
        out = call(server, "slow", timeout=0.3, seed=5, on_error="fallback")
    assert out == rules
    assert "falling back" in caplog.text or "rule-based" in caplog.text


def test_500_then_retry_succeeds(server):
    out = call(server, "flaky-a", retries=2, cache=False)
    assert out.startswith("seed 0")
    assert [r["body"]["model"] for r in FakeOpenAI.requests] == ["flaky-a", "flaky-a"]


def test_5xx_retries_are_bounded(server):
    t0 = time.monotonic()
    with pytest.raises(pe.ServerError, match="HTTP 503: service unavailable"):
        call(server, "down", retries=2, cache=False)
    assert len(FakeOpenAI.requests) == 3  # first try + 2 retries
    assert time.monotonic() - t0 >= 0.5 + 1.0  # backoff 0.5 s, then 1 s


@pytest.mark.parametrize("model, error, words", [
    ("malformed", pe.MalformedResponse, "did not send an OpenAI chat completion"),
    ("empty", pe.EmptyAnswer, "empty answer"),
    ("refuse", pe.EmptyAnswer, "refused"),
    ("no-such-model", pe.ModelNotFound, "no-such-model"),
])
def test_bad_answers_have_clear_errors(server, model, error, words):
    with pytest.raises(error, match=words):
        call(server, model, retries=3)
    assert len(FakeOpenAI.requests) == 1  # not retryable: asked once


def test_unreachable_server():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    with pytest.raises(pe.ServerUnreachable, match="could not connect"):
        call(f"http://127.0.0.1:{port}/v1", "echo")


def test_answer_is_cleaned_and_limited(server):
    assert call(server, "think") == "A fox in deep snow."
    out = call(server, "long", max_words=45)
    assert pe.rules.count_words(out) <= 45 and out.endswith("word39.")


def test_max_completion_tokens_servers(server):
    assert call(server, "new-api", max_tokens=300) == "limit 300"
    assert ["max_tokens" in r["body"] for r in FakeOpenAI.requests] == [True, False]


def test_embedded_family_answer_is_mapped_to_the_vocabulary(server):
    out = call(server, "embedded", prompt="ball", model_family="embedded")
    assert out == "a red circle moves down across a navy background"
    assert "toy world" in FakeOpenAI.requests[0]["body"]["messages"][0]["content"]


def test_images_arrive_as_data_urls(server):
    from PIL import Image
    frames = torch.rand(3, 16, 24, 3)  # ComfyUI IMAGE batch (N, H, W, 3)
    call(server, "echo", task="flf2v", images=frames)
    content = FakeOpenAI.requests[0]["body"]["messages"][1]["content"]
    assert content[0] == {"type": "text", "text": "a red fox"}
    urls = [p["image_url"]["url"] for p in content[1:]]
    assert len(urls) == 2 and all(p["type"] == "image_url" for p in content[1:])
    for url, frame in zip(urls, (frames[0], frames[-1])):  # flf2v: first and last frame
        assert url.startswith("data:image/png;base64,")
        img = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
        got = torch.frombuffer(bytearray(img.convert("RGB").tobytes()), dtype=torch.uint8).reshape(16, 24, 3)
        assert torch.equal(got, (frame * 255).round().to(torch.uint8))


def test_api_key_is_sent_but_never_leaked(server, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("MY_LLM_API_KEY", SECRET)
    folder = tmp_path / "keycache"
    with caplog.at_level(logging.DEBUG):
        call(server, "echo", api_key_env="MY_LLM_API_KEY", cache=folder)
        assert FakeOpenAI.requests[0]["headers"]["Authorization"] == f"Bearer {SECRET}"
        with pytest.raises(pe.RequestRejected) as err:
            call(server, "auth-echo", api_key_env="MY_LLM_API_KEY", cache=folder)
        assert FakeOpenAI.requests[-1]["headers"]["Authorization"] == f"Bearer {SECRET}"
        assert "HTTP 401" in str(err.value) and "invalid key in header Bearer ***" in str(err.value)
        out = call(server, "auth-echo", api_key_env="MY_LLM_API_KEY", cache=folder, on_error="fallback")
    assert SECRET not in str(err.value) and SECRET not in repr(err.value) and SECRET not in out
    assert SECRET not in caplog.text and "HTTP 401" in caplog.text
    files = list(folder.glob("*.json"))
    assert files and all(SECRET not in f.read_text() for f in files)


def test_api_key_env_must_be_a_name(server):
    with pytest.raises(ValueError, match="NAME of an environment variable") as err:
        call(server, "echo", api_key_env=SECRET)
    assert SECRET not in str(err.value)
    assert not FakeOpenAI.requests


def test_missing_settings_are_named():
    with pytest.raises(ValueError, match="needs base_url"):
        st.model.expand_prompt("a fox", backend="openai", model="x")
    with pytest.raises(ValueError, match="needs a model name"):
        st.model.expand_prompt("a fox", backend="openai", base_url="http://127.0.0.1:9/v1")
    with pytest.raises(ValueError, match="must start with http"):
        st.model.expand_prompt("a fox", backend="openai", base_url="localhost:11434", model="x",
                               on_error="raise", cache=False)


def test_llm_options_object_equals_the_keywords(server):
    """The backend settings travel as one frozen LLMOptions; keywords are shorthand for its fields
    and override an object's; an unknown setting is refused with the valid names."""
    opts = pe.LLMOptions(backend="openai-compatible", base_url=server, model="echo", retries=0, temperature=0.3)
    assert opts.backend == "openai"
    with pytest.raises(Exception):
        opts.model = "other"                                               # frozen
    by_object = st.model.expand_prompt("a red fox", seed=7, llm=opts, on_error="raise", cache=False)
    assert by_object == call(server, "echo", seed=7, temperature=0.3, cache=False)
    assert by_object.startswith("seed 7 temperature 0.3:")
    warmer = st.model.expand_prompt("a red fox", seed=7, llm=opts, temperature=0.9, on_error="raise", cache=False)
    assert warmer.startswith("seed 7 temperature 0.9:")
    with pytest.raises(TypeError, match="unknown prompt expander setting.*base_url"):
        st.model.expand_prompt("a red fox", llm=opts, url=server)
    with pytest.raises(ValueError, match="temperature"):
        pe.LLMOptions(temperature=3.0)
