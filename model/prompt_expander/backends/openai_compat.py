"""Any OpenAI-compatible chat endpoint, over HTTP with ``requests``.

Works with Ollama (``http://localhost:11434/v1``), llama.cpp's server (``http://localhost:8080/v1``),
LM Studio (``http://localhost:1234/v1``), vLLM (``http://localhost:8000/v1``) and hosted APIs.
Protocol: ``POST {base_url}/chat/completions`` with ``{"model", "messages", "temperature",
"seed", "max_tokens"}``; the answer is ``choices[0].message.content``
(https://platform.openai.com/docs/api-reference/chat/create). Images go in the user message as
``{"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}}`` parts.

Safety, since a shared workflow chooses ``base_url`` and the model:

* The API key (read by the caller from an environment variable the owner allowed, see
  ``keys.py``) is only ever placed in the ``Authorization`` header, only for hosts the owner
  allowed, and is dropped when a redirect leaves the host or port (``requests`` strips it; our
  session also never fills it in again from ``~/.netrc``).
* Anything the server sends back -- answers included -- is redacted before it reaches a
  caption, an exception or a log line: JSON-escaped forms of the key too, and a snippet is
  redacted before it is cut, then loses a cut-off start of the key (``redact_snippet``).
* Each attempt is bounded (``timeout``: connect and read, and the whole attempt), the call as a
  whole too (``deadline``: every attempt and retry wait); answers over ``MAX_ANSWER_BYTES``
  are refused.
* The request runs in a worker thread while the caller polls ``should_stop`` every
  ``POLL_SECONDS``; on a stop the connection is shut and ``Interrupted`` raised at once.
"""
from __future__ import annotations

import json
import logging
import math
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from ..errors import (EmptyAnswer, Interrupted, MalformedResponse, ModelNotFound, PromptExpanderError,
                      RequestRejected, ServerError, ServerTimeout, ServerUnreachable, redact, redact_snippet)
from ..keys import check_key_host, url_host_port

log = logging.getLogger("spacetime.prompt_expander")

_THINK = re.compile(r"<think>.*?</think>", re.S | re.I)  # reasoning models (Qwen3, DeepSeek-R1)

POLL_SECONDS = 0.05              # how often should_stop and the clocks are checked while waiting
MAX_ANSWER_BYTES = 8 * 2**20     # a chat answer is a few KiB; a server sending more is refused
MAX_REDIRECTS = 5


def chat_url(base_url: str) -> str:
    """``{base_url}/chat/completions``; a full ``.../chat/completions`` URL is kept as given.
    Checked and normalised as ``requests`` will send it (a ValueError names what is wrong)."""
    url = base_url.strip().rstrip("/")
    if not re.match(r"^https?://", url, re.I):
        raise ValueError(f"base_url={base_url!r} must start with http:// or https:// "
                         "(e.g. http://localhost:11434/v1 for Ollama)")
    url = url if url.endswith("/chat/completions") else url + "/chat/completions"
    url_host_port(url)  # spaces, user info, no host, bad port
    try:
        prepared = requests.Request("POST", url).prepare().url
    except requests.exceptions.RequestException as e:
        raise ValueError(f"base_url={base_url!r} is not a valid URL ({e}); e.g. http://localhost:11434/v1") from None
    url_host_port(prepared)
    return prepared


@dataclass
class ChatRequest:
    """One chat completion call. ``api_key`` is excluded from ``repr`` so it never lands in logs;
    ``api_key_env`` (its variable's name) is only used in messages."""

    base_url: str
    model: str
    system: str
    user: str
    images: list[str] = field(default_factory=list)  # data: URLs
    seed: int = 0
    temperature: float = 0.7
    max_tokens: int = 512
    timeout: float = 60.0            # one attempt: connecting, and waiting for the whole answer
    retries: int = 2
    backoff: float = 0.5  # seconds before the first retry; doubled after each
    deadline: float | None = None    # the whole call, every attempt and retry wait (None: no limit)
    api_key: str | None = field(default=None, repr=False)
    api_key_env: str | None = None
    # Newer hosted models refuse "max_tokens" and want "max_completion_tokens"; switched on a 400 that says so.
    length_field: str = "max_tokens"

    def payload(self) -> dict:
        if self.images:
            content: str | list = [{"type": "text", "text": self.user}] + [
                {"type": "image_url", "image_url": {"url": u}} for u in self.images]
        else:
            content = self.user
        return {
            "model": self.model,
            "messages": [{"role": "system", "content": self.system}, {"role": "user", "content": content}],
            "temperature": self.temperature,
            # 31 bits: OpenAI takes int64, llama.cpp uint32 (where 0xFFFFFFFF means "random").
            "seed": self.seed % 2**31,
            self.length_field: self.max_tokens,
            "stream": False,
        }


def _server_message(raw: bytes, key: str | None) -> str:
    """The human part of an error body, ``key`` redacted: ``error.message`` of OpenAI-style JSON,
    else the start of the text."""
    text = raw.decode("utf-8", errors="replace")
    try:
        data = json.loads(text)
        err = data.get("error") if isinstance(data, dict) else None
        if isinstance(err, dict) and err.get("message"):
            return redact_snippet(str(err["message"]), key, 500)
        if isinstance(err, str):
            return redact_snippet(err, key, 500)
    except ValueError:
        pass
    return redact_snippet(text.strip(), key, 300)


# --- the connections of one call, so that a stop can shut them from the waiting thread -------

class _Sockets:
    """The sockets a worker thread opened; ``shut`` ends any read or write blocked on them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._socks: list[socket.socket] = []
        self._shut = False

    def add(self, sock: socket.socket) -> None:
        with self._lock:
            self._socks.append(sock)
            shut = self._shut
        if shut:  # opened while the call was being stopped
            _shutdown(sock)

    def opened(self) -> bool:
        with self._lock:
            return bool(self._socks)

    def shut(self) -> None:
        with self._lock:
            self._shut = True
            socks = list(self._socks)
        for sock in socks:
            _shutdown(sock)


def _shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)  # not close(): the worker still owns the descriptor
    except OSError:
        pass


_BY_THREAD: dict[int, _Sockets] = {}
_BY_THREAD_LOCK = threading.Lock()


class _Tracked:
    """Mixin for urllib3 connections: report each new socket to the worker thread's ``_Sockets``."""

    def _new_conn(self):  # noqa: ANN202 (urllib3's signature)
        sock = super()._new_conn()  # type: ignore[misc]
        with _BY_THREAD_LOCK:
            owner = _BY_THREAD.get(threading.get_ident())
        if owner is not None:
            owner.add(sock)
        return sock


class _HTTPConnection(_Tracked, HTTPConnection):
    pass


class _HTTPSConnection(_Tracked, HTTPSConnection):
    pass


class _HTTPPool(HTTPConnectionPool):
    ConnectionCls = _HTTPConnection


class _HTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection


class _Adapter(HTTPAdapter):
    """``requests``' adapter with connections that can be shut from another thread. (Through a
    proxy the stock classes are used: a stop then abandons the worker, which ends at its timeout.)"""

    def init_poolmanager(self, *args, **kwargs) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _HTTPPool, "https": _HTTPSPool}


class _Session(requests.Session):
    def rebuild_auth(self, prepared_request, response) -> None:
        """As ``requests`` does on a redirect -- drop ``Authorization`` when the host, port or
        scheme changes -- but never add credentials from ``~/.netrc`` for the new host."""
        if "Authorization" in prepared_request.headers and \
                self.should_strip_auth(response.request.url, prepared_request.url):
            del prepared_request.headers["Authorization"]


class _Bearer(requests.auth.AuthBase):
    """``Authorization: Bearer <key>`` (or nothing); given always, so ``~/.netrc`` is never read."""

    def __init__(self, key: str | None) -> None:
        self.key = key

    def __call__(self, r):  # noqa: ANN001, ANN204
        if self.key:
            r.headers["Authorization"] = f"Bearer {self.key}"
        return r

    def __repr__(self) -> str:
        return "_Bearer(***)"


def _worker(url: str, body: bytes, key: str | None, timeout: float, sockets: _Sockets, out: dict,
            done: threading.Event) -> None:
    ident = threading.get_ident()
    with _BY_THREAD_LOCK:
        _BY_THREAD[ident] = sockets
    try:
        with _Session() as session:
            session.max_redirects = MAX_REDIRECTS
            adapter = _Adapter(max_retries=0)
            session.mount("http://", adapter)
            session.mount("https://", adapter)
            headers = {"Content-Type": "application/json", "Accept": "application/json"}
            with session.post(url, data=body, headers=headers, auth=_Bearer(key), timeout=(timeout, timeout),
                              stream=True) as resp:
                chunks, size = [], 0
                for chunk in resp.iter_content(64 * 1024):
                    size += len(chunk)
                    if size > MAX_ANSWER_BYTES:
                        out["too_big"] = True
                        break
                    chunks.append(chunk)
                out["status"], out["raw"] = resp.status_code, b"".join(chunks)
    except BaseException as e:  # handed to the waiting thread, which decides what it means
        out["error"] = e
    finally:
        with _BY_THREAD_LOCK:
            _BY_THREAD.pop(ident, None)
        done.set()


class _Clock:
    """The call's deadline and its ``should_stop``."""

    def __init__(self, deadline: float | None, should_stop: Callable[[], bool] | None) -> None:
        self.deadline = deadline
        self.end = time.monotonic() + deadline if deadline else math.inf
        self.should_stop = should_stop

    def left(self) -> float:
        return self.end - time.monotonic()

    def check(self, what: str) -> None:
        if self.should_stop is not None and self.should_stop():
            raise Interrupted(f"the prompt expander was interrupted while {what}")

    def sleep(self, seconds: float, what: str) -> None:
        until = time.monotonic() + seconds
        while (rest := until - time.monotonic()) > 0:
            self.check(what)
            time.sleep(min(POLL_SECONDS, rest))
        self.check(what)

    def exceeded(self, where: str) -> ServerTimeout:
        err = ServerTimeout(f"{where} gave no answer within the deadline of {self.deadline:g}s for the whole call "
                            "(every attempt and retry wait together); raise deadline or use a faster model/server")
        err.retryable = False
        return err


def _reason(e: BaseException, key: str | None) -> str:
    """A short reason for a ``requests`` error ("[Errno 111] Connection refused"), redacted."""
    text = str(e)
    m = re.search(r"\[Errno -?\d+\][^'\")]*", text)
    return redact_snippet((m.group(0) if m else text).strip(), key, 300)


def _exchange(req: ChatRequest, url: str, where: str, clock: _Clock) -> tuple[int, bytes]:
    """One HTTP round trip in a worker thread: ``(status, body)``, or a ``PromptExpanderError``."""
    left = clock.left()
    by_deadline = left < req.timeout
    limit = max(min(req.timeout, left), 0.001)
    body = json.dumps(req.payload()).encode("utf-8")
    sockets, out, done = _Sockets(), {}, threading.Event()
    threading.Thread(target=_worker, args=(url, body, req.api_key, limit, sockets, out, done),
                     name="spacetime-llm-http", daemon=True).start()
    end = time.monotonic() + limit
    timed_out = False
    try:
        while not done.wait(POLL_SECONDS):
            clock.check(f"waiting for {where}")
            if time.monotonic() >= end:
                timed_out = True
                break
    finally:
        if not done.is_set():
            sockets.shut()  # the worker ends at once; its result is dropped
    e = out.get("error")
    connecting = isinstance(e, requests.exceptions.ConnectTimeout) or (timed_out and not sockets.opened())
    if not connecting and (timed_out or isinstance(e, requests.exceptions.ReadTimeout)):
        if by_deadline:
            raise clock.exceeded(where)
        raise ServerTimeout(f"{where} did not answer within {req.timeout:g}s; raise timeout or use a smaller model")
    if connecting:
        if by_deadline:
            raise clock.exceeded(where)
        raise ServerTimeout(f"could not connect to {url} within {req.timeout:g}s: is the host right and the "
                            "server reachable (firewall, VPN)?")
    if isinstance(e, requests.exceptions.SSLError):
        raise ServerUnreachable(f"the TLS connection to {url} failed: {_reason(e, req.api_key)}. Check the "
                                "https:// URL and the server's certificate")
    if isinstance(e, requests.exceptions.TooManyRedirects):
        raise MalformedResponse(f"{where} redirected more than {MAX_REDIRECTS} times; point base_url at the "
                                "API itself")
    if isinstance(e, (requests.exceptions.InvalidURL, requests.exceptions.InvalidSchema,
                      requests.exceptions.MissingSchema)):
        raise MalformedResponse(f"{where} redirected to an unusable URL ({_reason(e, req.api_key)})")
    if isinstance(e, (requests.exceptions.ChunkedEncodingError, requests.exceptions.ContentDecodingError)):
        raise ServerUnreachable(f"the connection to {url} failed mid-answer: {_reason(e, req.api_key)}")
    if isinstance(e, requests.exceptions.ConnectionError):
        raise ServerUnreachable(f"could not connect to {url}: {_reason(e, req.api_key)}. Is the server running "
                                "and base_url right (Ollama: `ollama serve`, http://localhost:11434/v1)?")
    if isinstance(e, requests.exceptions.RequestException):
        raise ServerUnreachable(f"the request to {url} failed: {_reason(e, req.api_key)}")
    if e is not None:
        raise e
    if out.get("too_big"):
        raise MalformedResponse(f"{where} sent more than {MAX_ANSWER_BYTES // 2**20} MiB; a chat answer is a few "
                                "KiB. Is base_url an OpenAI-style API?")
    return out["status"], out["raw"]


def _post_once(req: ChatRequest, url: str, clock: _Clock) -> str:
    where = f"{url} (model {req.model!r})"
    while True:
        status, raw = _exchange(req, url, where, clock)
        if 200 <= status < 300:
            return parse_answer(raw, where, req.api_key)
        detail = _server_message(raw, req.api_key)
        if status == 404:
            raise ModelNotFound(
                f"{where} answered 404 ({detail or 'not found'}): the model name is unknown to the server "
                f"(list them at {req.base_url.rstrip('/')}/models, e.g. `ollama list`) or base_url is not an "
                "OpenAI-style API root (it usually ends in /v1)")
        if status == 429 or status >= 500:
            raise ServerError(f"{where} answered HTTP {status}: {detail}")
        if status == 400 and "max_completion_tokens" in detail and req.length_field == "max_tokens":
            req.length_field = "max_completion_tokens"
            log.info("%s wants max_completion_tokens instead of max_tokens; asking again", where)
            continue
        hint = " (check the API key in the environment variable named by api_key_env)" if status in (401, 403) else ""
        raise RequestRejected(f"{where} rejected the request with HTTP {status}: {detail}{hint}")


def parse_answer(raw: bytes, where: str = "the server", api_key: str | None = None) -> str:
    """The text of an OpenAI chat-completion JSON body, cleaned (reasoning blocks, quotes, labels)
    and with ``api_key`` redacted (a server may echo what it was sent)."""
    try:
        data = json.loads(raw.decode("utf-8"))
        choice = data["choices"][0]
        message = choice["message"]
    except (ValueError, UnicodeDecodeError, KeyError, IndexError, TypeError):
        snippet = redact_snippet(raw.decode("utf-8", errors="replace"), api_key, 200)
        raise MalformedResponse(f"{where} did not send an OpenAI chat completion (expected JSON with "
                                f"choices[0].message.content); it began with: {snippet!r}") from None
    if not isinstance(message, dict):
        raise MalformedResponse(f"{where}: choices[0].message is not an object")
    if message.get("refusal"):
        raise EmptyAnswer(f"{where} refused: {redact_snippet(str(message['refusal']), api_key, 300)}")
    content = message.get("content")
    if isinstance(content, list):  # content parts
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    if content is not None and not isinstance(content, str):
        raise MalformedResponse(f"{where}: choices[0].message.content is {type(content).__name__}, not text")
    text = redact(clean_answer(redact(content or "", api_key)), api_key)
    if not text:
        reason = choice.get("finish_reason") if isinstance(choice, dict) else None
        extra = " (stopped by the content filter)" if reason == "content_filter" else ""
        raise EmptyAnswer(f"{where} returned an empty answer{extra}; try another model or a higher max_tokens")
    return text


def clean_answer(text: str) -> str:
    """Strip reasoning blocks, a leading label ("Rewritten prompt:"), wrapping quotes and line breaks."""
    text = _THINK.sub("", text)
    if "</think>" in text:  # a reasoning block whose opening tag the server dropped
        text = text.split("</think>")[-1]
    text = text.strip()
    text = re.sub(r"^(?:\*\*)?(?:rewritten|revised|expanded|improved)?\s*prompt\s*[:：](?:\*\*)?\s*", "",
                  text, flags=re.I)
    if len(text) >= 2 and text[0] in "\"'“「" and text[-1] in "\"'”」":
        text = text[1:-1].strip()
    return " ".join(text.split())


def chat(req: ChatRequest, should_stop: Callable[[], bool] | None = None) -> str:
    """POST the request, retrying retryable failures (unreachable, timeout, 5xx, 429) up to
    ``req.retries`` more times with exponential backoff, all within ``req.deadline``.

    Raises a ``PromptExpanderError``; ``Interrupted`` as soon as ``should_stop()`` is true
    (polled every ``POLL_SECONDS`` while waiting); ``ValueError`` for a bad ``base_url`` or a
    key the owner does not allow to go to its host (before anything is sent)."""
    url = chat_url(req.base_url)
    check_key_host(url, req.api_key, req.api_key_env)
    clock = _Clock(req.deadline, should_stop)
    delay = req.backoff
    for attempt in range(req.retries + 1):
        clock.check(f"calling {url}")
        if clock.left() <= 0:
            raise clock.exceeded(f"{url} (model {req.model!r})")
        try:
            return _post_once(req, url, clock)
        except PromptExpanderError as e:
            if not e.retryable or attempt == req.retries:
                raise
            if clock.left() <= delay:
                raise ServerTimeout(f"{e}; not retried: the deadline of {req.deadline:g}s for the whole call "
                                    "(every attempt and retry wait together) would pass first. Raise deadline "
                                    "or fix the server") from None
            log.warning("prompt expander: %s; retry %d/%d in %.1fs", e, attempt + 1, req.retries, delay)
            clock.sleep(delay, f"waiting to retry {url}")
            delay *= 2
    raise AssertionError("unreachable")  # the loop returns or raises
