"""Errors of the prompt expander: each names what went wrong and what to do about it.

No message ever contains an API key: backends redact the key from anything a server sends
back before it reaches an exception, a log line, the answer or the cache (see ``redact`` and
``redact_snippet``), JSON-escaped forms of the key and a key cut off by a length limit included.
"""
from __future__ import annotations

import re


class PromptExpanderError(RuntimeError):
    """Base class: the prompt could not be expanded by the chosen backend."""

    retryable: bool = False


class ServerUnreachable(PromptExpanderError):
    """No connection to the server (refused, DNS failure, network down)."""

    retryable = True


class ServerTimeout(PromptExpanderError):
    """The server accepted the connection but did not answer in time."""

    retryable = True


class DownloadTimedOut(ServerTimeout):
    """A local model's download did not finish by its deadline; it resumes when run again."""

    retryable = False


class ServerError(PromptExpanderError):
    """The server answered 5xx (or 429: too many requests)."""

    retryable = True


class ModelNotFound(PromptExpanderError):
    """404: the model name is unknown to the server, or the URL is not an OpenAI-style API."""


class RequestRejected(PromptExpanderError):
    """Another 4xx: bad request, missing or wrong API key, forbidden."""


class MalformedResponse(PromptExpanderError):
    """The answer was not the JSON of an OpenAI chat completion."""


class EmptyAnswer(PromptExpanderError):
    """The model answered nothing usable, or refused."""


class BackendUnavailable(PromptExpanderError):
    """An optional backend cannot run here (a package or the model files are missing)."""


class Interrupted(Exception):
    """The caller asked to stop (``should_stop`` returned True) while the expander waited.

    Deliberately not a ``PromptExpanderError``: ``on_error="fallback"`` never turns a user's
    interrupt into a rule-based caption."""


_ESCAPE = re.compile(r"\\(?:u([dD][89abAB][0-9a-fA-F]{2})\\u([dD][c-fC-F][0-9a-fA-F]{2})"  # a surrogate pair
                     r"|u([0-9a-fA-F]{4})|([\"\\/bfnrt]))")
_SHORT = {"b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}
MIN_PARTIAL = 3  # a cut-off start of the key this long or longer is removed from the end of a snippet


def _unescape_once(text: str) -> str:
    def one(m: re.Match) -> str:
        high, low, code, short = m.groups()
        if high:
            return chr(0x10000 + ((int(high, 16) - 0xD800) << 10) + int(low, 16) - 0xDC00)
        if code:
            n = int(code, 16)
            return m.group(0) if 0xD800 <= n <= 0xDFFF else chr(n)  # a lone surrogate stays as written
        return _SHORT.get(short, short)
    return _ESCAPE.sub(one, text)


def json_unescape(text: str, rounds: int = 4) -> str:
    """``text`` with JSON string escapes (``\\uXXXX``, ``\\n``, ``\\"``, ...) undone, up to ``rounds``
    times (a body may escape what it echoes twice); other backslashes stay."""
    for _ in range(rounds):
        done = _unescape_once(text)
        if done == text:
            break
        text = done
    return text


def _secret_pattern(secret: str) -> re.Pattern:
    """``secret`` as written, or with any of its characters JSON-escaped (once or more)."""
    parts = []
    for ch in secret:
        n = ord(ch)
        codes = [f"{n:04x}"] if n <= 0xFFFF else [f"{0xD800 + ((n - 0x10000) >> 10):04x}",
                                                     f"{0xDC00 + ((n - 0x10000) & 0x3FF):04x}"]
        escaped = "".join(r"\\+u(?i:" + c + ")" for c in codes)
        alts = [re.escape(ch), escaped] + ([r"\\+" + re.escape(ch)] if ch in "\"\\/" else [])
        parts.append("(?:" + "|".join(alts) + ")")
    return re.compile("".join(parts))


def redact(text: str, secret: str | None) -> str:
    """``text`` with every occurrence of ``secret`` replaced by ``***``, also where (some of) its
    characters are JSON-escaped (``\\u0073k-...``)."""
    if secret and text:
        text = text.replace(secret, "***")
        if "\\" in text:
            text = _secret_pattern(secret).sub("***", text)
    return text


def redact_snippet(text: str, secret: str | None, limit: int) -> str:
    """At most ``limit`` characters of server-sent ``text`` for a message, without ``secret``:
    JSON escapes undone first (so an escaped key is seen), the key redacted, then cut, then a
    cut-off start of the key (``MIN_PARTIAL`` characters or more) dropped from the end."""
    if secret:
        text = redact(json_unescape(text[:64 * (limit + len(secret))]), secret)  # (far more than can unescape to limit)
    text = text[:limit]
    if secret:
        for n in range(min(len(secret) - 1, len(text)), MIN_PARTIAL - 1, -1):
            if text.endswith(secret[:n]):
                return text[:-n] + "***"
    return text
