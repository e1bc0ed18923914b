"""The prompt expander's waits under untrusted settings, against real sockets on loopback: a
hung server is interrupted within ~0.1 s (also in the retry wait), the deadline ends a call across
retries, the timeout bounds a whole attempt, a connect timeout is named, oversized answers are
refused. (Keys, hosts, redaction and local model folders: test_prompt_expander_security.py.)"""
from __future__ import annotations

import json
import math
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler

import pytest

from spacetime_video.model import prompt_expander as pe
from spacetime_video.model.prompt_expander.backends import openai_compat
from test_prompt_expander_http import FakeOpenAI
from test_prompt_expander_security import call, fresh, http_threads, hung, serve, server  # noqa: F401 (fixtures)


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
