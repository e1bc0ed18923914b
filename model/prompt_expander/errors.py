"""Errors of the prompt expander: each names what went wrong and what to do about it.

No message ever contains an API key: backends redact the key from anything a server sends
back before it reaches an exception or a log line (see ``redact``).
"""
from __future__ import annotations


class PromptExpanderError(RuntimeError):
    """Base class: the prompt could not be expanded by the chosen backend."""

    retryable: bool = False


class ServerUnreachable(PromptExpanderError):
    """No connection to the server (refused, DNS failure, network down)."""

    retryable = True


class ServerTimeout(PromptExpanderError):
    """The server accepted the connection but did not answer in time."""

    retryable = True


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


def redact(text: str, secret: str | None) -> str:
    """``text`` with every occurrence of ``secret`` replaced by ``***``."""
    if secret and text:
        text = text.replace(secret, "***")
    return text
