"""Any OpenAI-compatible chat endpoint, with the standard library only (urllib).

Works with Ollama (``http://localhost:11434/v1``), llama.cpp's server (``http://localhost:8080/v1``),
LM Studio (``http://localhost:1234/v1``), vLLM (``http://localhost:8000/v1``) and hosted APIs.
Protocol: ``POST {base_url}/chat/completions`` with ``{"model", "messages", "temperature",
"seed", "max_tokens"}``; the answer is ``choices[0].message.content``
(https://platform.openai.com/docs/api-reference/chat/create). Images go in the user message as
``{"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}}`` parts.

The API key is read by the caller from an environment variable and only ever placed in the
``Authorization`` header; anything the server sends back is redacted before it reaches an
exception or a log line.
"""
from __future__ import annotations

import json
import logging
import re
import socket
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field

from ..errors import (EmptyAnswer, MalformedResponse, ModelNotFound, PromptExpanderError, RequestRejected,
                      ServerError, ServerTimeout, ServerUnreachable, redact)

log = logging.getLogger("spacetime.prompt_expander")

_THINK = re.compile(r"<think>.*?</think>", re.S | re.I)  # reasoning models (Qwen3, DeepSeek-R1)


def chat_url(base_url: str) -> str:
    """``{base_url}/chat/completions``; a full ``.../chat/completions`` URL is kept as given."""
    url = base_url.strip().rstrip("/")
    if not re.match(r"^https?://", url):
        raise ValueError(f"base_url={base_url!r} must start with http:// or https:// "
                         "(e.g. http://localhost:11434/v1 for Ollama)")
    return url if url.endswith("/chat/completions") else url + "/chat/completions"


@dataclass
class ChatRequest:
    """One chat completion call. ``api_key`` is excluded from ``repr`` so it never lands in logs."""

    base_url: str
    model: str
    system: str
    user: str
    images: list[str] = field(default_factory=list)  # data: URLs
    seed: int = 0
    temperature: float = 0.7
    max_tokens: int = 512
    timeout: float = 60.0
    retries: int = 2
    backoff: float = 0.5  # seconds before the first retry; doubled after each
    api_key: str | None = field(default=None, repr=False)
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


def _server_message(raw: bytes) -> str:
    """The human part of an error body: ``error.message`` of OpenAI-style JSON, else the text."""
    text = raw.decode("utf-8", errors="replace")
    try:
        data = json.loads(text)
        err = data.get("error") if isinstance(data, dict) else None
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
        if isinstance(err, str):
            return err
    except ValueError:
        pass
    return text.strip()[:300]


def _post_once(req: ChatRequest) -> str:
    url = chat_url(req.base_url)
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if req.api_key:
        headers["Authorization"] = f"Bearer {req.api_key}"
    body = json.dumps(req.payload()).encode("utf-8")
    where = f"{url} (model {req.model!r})"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, body, headers, method="POST"),
                                    timeout=req.timeout) as resp:
            raw = resp.read()
    except urllib.error.HTTPError as e:
        detail = redact(_server_message(e.read() or b""), req.api_key)
        if e.code == 404:
            raise ModelNotFound(
                f"{where} answered 404 ({detail or 'not found'}): the model name is unknown to the server "
                f"(list them at {req.base_url.rstrip('/')}/models, e.g. `ollama list`) or base_url is not an OpenAI-style "
                "API root (it usually ends in /v1)") from None
        if e.code == 429 or e.code >= 500:
            raise ServerError(f"{where} answered HTTP {e.code}: {detail}") from None
        if e.code == 400 and "max_completion_tokens" in detail and req.length_field == "max_tokens":
            req.length_field = "max_completion_tokens"
            log.info("%s wants max_completion_tokens instead of max_tokens; asking again", where)
            return _post_once(req)
        hint = " (check the API key in the environment variable named by api_key_env)" if e.code in (401, 403) else ""
        raise RequestRejected(f"{where} rejected the request with HTTP {e.code}: {detail}{hint}") from None
    except (socket.timeout, TimeoutError):
        raise ServerTimeout(f"{where} did not answer within {req.timeout:g}s; raise timeout or use a smaller "
                            "model") from None
    except urllib.error.URLError as e:
        if isinstance(e.reason, (socket.timeout, TimeoutError)):
            raise ServerTimeout(f"{where} did not answer within {req.timeout:g}s; raise timeout or use a "
                                "smaller model") from None
        raise ServerUnreachable(f"could not connect to {url}: {redact(str(e.reason), req.api_key)}. Is the "
                                "server running and base_url right (Ollama: `ollama serve`, "
                                "http://localhost:11434/v1)?") from None
    except OSError as e:  # connection reset mid-answer, etc.
        raise ServerUnreachable(f"connection to {url} failed: {redact(str(e), req.api_key)}") from None
    return parse_answer(raw, where, req.api_key)


def parse_answer(raw: bytes, where: str = "the server", api_key: str | None = None) -> str:
    """The text of an OpenAI chat-completion JSON body, cleaned (reasoning blocks, quotes, labels)."""
    try:
        data = json.loads(raw.decode("utf-8"))
        choice = data["choices"][0]
        message = choice["message"]
    except (ValueError, UnicodeDecodeError, KeyError, IndexError, TypeError):
        snippet = redact(raw[:200].decode("utf-8", errors="replace"), api_key)
        raise MalformedResponse(f"{where} did not send an OpenAI chat completion (expected JSON with "
                                f"choices[0].message.content); it began with: {snippet!r}") from None
    if not isinstance(message, dict):
        raise MalformedResponse(f"{where}: choices[0].message is not an object")
    if message.get("refusal"):
        raise EmptyAnswer(f"{where} refused: {redact(str(message['refusal']), api_key)[:300]}")
    content = message.get("content")
    if isinstance(content, list):  # content parts
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
    if content is not None and not isinstance(content, str):
        raise MalformedResponse(f"{where}: choices[0].message.content is {type(content).__name__}, not text")
    text = clean_answer(content or "")
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


def chat(req: ChatRequest) -> str:
    """POST the request, retrying retryable failures (unreachable, timeout, 5xx, 429) up to
    ``req.retries`` more times with exponential backoff. Raises a ``PromptExpanderError``."""
    delay = req.backoff
    for attempt in range(req.retries + 1):
        try:
            return _post_once(req)
        except PromptExpanderError as e:
            if not e.retryable or attempt == req.retries:
                raise
            log.warning("prompt expander: %s; retry %d/%d in %.1fs", e, attempt + 1, req.retries, delay)
            time.sleep(delay)
            delay *= 2
    raise AssertionError("unreachable")  # the loop returns or raises
