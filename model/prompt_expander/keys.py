"""Which API keys a call may read, and which hosts may receive them.

Workflows are shared, so every input of the expander (``api_key_env``, ``base_url``, ...) may
come from a stranger; the environment belongs to whoever runs the server. Two rules follow:

* ``api_key_env`` may only name a variable the owner allowed: those listed (comma-separated) in
  ``SPACETIME_API_KEY_VARS`` when it is set, otherwise names ending in ``_API_KEY``. So a
  workflow cannot have ``AWS_SECRET_ACCESS_KEY`` or ``HOME`` sent to a server of its choosing.
* A key is only sent to loopback -- exactly ``localhost``, ``127.0.0.1`` or ``::1``, over http or
  https -- and to the hosts listed (comma-separated) in ``SPACETIME_API_KEY_HOSTS``, over https
  unless the owner wrote http: ``host`` allows https on any port, ``host:port`` https on that
  port, ``http://host`` / ``http://host:port`` plain http too (a LAN server without TLS: the key
  then crosses the network readable). Hosts are compared as written, so ``localhost.`` (a DNS
  name) is not loopback, and ``api.example.com.`` needs its own entry. A call elsewhere that
  would carry a key is refused before connecting; without a key it goes ahead.

Refusals are ``ValueError``s (a setting is wrong, not the server), so ``on_error="fallback"``
does not hide them; no message shows a variable's value.
"""
from __future__ import annotations

import logging
import os
import re
import urllib.parse

log = logging.getLogger("spacetime.prompt_expander")

VARS_ENV = "SPACETIME_API_KEY_VARS"
HOSTS_ENV = "SPACETIME_API_KEY_HOSTS"
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
DEFAULT_PORTS = {"http": 80, "https": 443}

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")


def _listed(variable: str) -> list[str] | None:
    """The comma-separated entries of ``variable`` (None when it is unset or blank)."""
    raw = os.environ.get(variable, "")
    entries = [e.strip() for e in raw.split(",") if e.strip()]
    return entries or None


def _looks_secret(name: str) -> bool:
    return len(name) >= 24 and bool(re.search(r"\d", name)) and bool(re.search(r"[a-z]", name))


def allowed_key_var(name: str) -> bool:
    """Whether the server's owner lets workflows read the environment variable ``name``."""
    listed = _listed(VARS_ENV)
    if listed is not None:
        return name in listed
    return name.endswith("_API_KEY") and len(name) > len("_API_KEY")


def read_api_key(api_key_env: str | None) -> str | None:
    """The key in the environment variable *named* ``api_key_env`` (None if unnamed or unset).

    The name, not the key, is what workflows store; a value that looks like a key is refused
    without being echoed, and so is a name the owner did not allow (see the module doc)."""
    name = (api_key_env or "").strip()
    if not name:
        return None
    if not _NAME.fullmatch(name) or _looks_secret(name):
        raise ValueError("api_key_env must be the NAME of an environment variable that holds the key "
                         "(e.g. OPENAI_API_KEY), not the key itself (the value given is not shown). Set the "
                         "variable before starting ComfyUI and put its name here.")
    if not allowed_key_var(name):
        listed = _listed(VARS_ENV)
        rule = (f"{VARS_ENV} allows only {', '.join(listed)}" if listed is not None
                else f"without {VARS_ENV}, only names ending in _API_KEY are allowed")
        raise ValueError(f"api_key_env={name!r} is not an allowed API key variable ({rule}); its value was not "
                         f"read. Use such a variable for the key, ask whoever runs the server to add {name} to "
                         f"{VARS_ENV} (comma-separated names), or leave api_key_env empty to call without a key.")
    key = os.environ.get(name) or None
    if key is None:
        log.info("environment variable %s is not set: calling the server without an API key", name)
    return key


def url_host_port(url: str) -> tuple[str, int]:
    """``(host, port)`` of an http(s) URL, host lower-cased without brackets (a trailing dot is kept:
    ``localhost.`` is a DNS name, not loopback).

    Refuses what different URL parsers may read differently (user info, backslashes, spaces),
    so the host checked here is the host the request goes to."""
    if re.search(r"[\s\\\x00-\x1f\x7f]", url):
        raise ValueError(f"base_url={url!r} holds spaces, backslashes or control characters; write a plain "
                         "URL such as http://localhost:11434/v1")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in DEFAULT_PORTS:
        raise ValueError(f"base_url={url!r} must start with http:// or https:// "
                         "(e.g. http://localhost:11434/v1 for Ollama)")
    if "@" in parts.netloc:
        raise ValueError(f"base_url={url!r} holds user info ('...@'); put the key in the environment variable "
                         "named by api_key_env instead")
    try:
        host, port = parts.hostname, parts.port
    except ValueError:  # a port that is not a number from 0 to 65535
        host = port = None
    if not host:
        raise ValueError(f"base_url={url!r} has no valid host[:port]; e.g. http://localhost:11434/v1")
    return host.lower(), port or DEFAULT_PORTS[parts.scheme]


def _entry(entry: str) -> tuple[str, int | None, bool]:
    """``(host, port or None, plain http allowed)`` of one SPACETIME_API_KEY_HOSTS entry: ``host``,
    ``host:port``, ``[v6]``, ``[v6]:port`` or a bare ``v6``, optionally after ``https://`` or
    ``http://`` (plain http allowed too; a path after the host is ignored). A malformed port or
    scheme gives port -1, which matches nothing."""
    entry = entry.strip().lower()
    scheme, sep, rest = entry.partition("://")
    if not sep:
        scheme, rest = "https", entry
    if scheme not in DEFAULT_PORTS:
        return "", -1, False
    rest = rest.split("/", 1)[0]
    m = re.fullmatch(r"\[([^\]]+)\](?::(\d*))?", rest)
    if m:
        host, port = m.group(1), m.group(2)
    elif rest.count(":") == 1:
        host, port = rest.split(":")
    else:
        host, port = rest, None
    if port is None:
        return host, None, scheme == "http"
    return host, int(port) if port.isdigit() and int(port) <= 65535 else -1, scheme == "http"


def key_host_allowed(url: str) -> bool:
    """Whether a key may be sent to ``url``: loopback, or a host (and scheme) SPACETIME_API_KEY_HOSTS allows."""
    host, port = url_host_port(url)
    if host in LOOPBACK_HOSTS:
        return True
    scheme = urllib.parse.urlsplit(url).scheme
    for entry in _listed(HOSTS_ENV) or []:
        allowed_host, allowed_port, plain = _entry(entry)
        if allowed_host == host and allowed_port in (None, port) and (scheme == "https" or plain):
            return True
    return False


def check_key_host(url: str, api_key: str | None, api_key_env: str | None) -> None:
    """Refuse, before connecting, to send ``api_key`` to a host (or over plain http) the owner did not allow."""
    if not api_key or key_host_allowed(url):
        return
    host, port = url_host_port(url)
    shown = f"[{host}]" if ":" in host else host
    scheme = urllib.parse.urlsplit(url).scheme
    if scheme == "https":
        entry, note = shown, f" ({shown}:{port} for this port only)"
    else:
        entry, note = f"http://{shown}:{port}", (f" (http:// because the URL is plain http: the key then crosses "
                                                 f"the network unencrypted; a plain {shown} entry allows https only)")
    raise ValueError(
        f"base_url={url!r}: refusing to send the API key from {api_key_env or 'the environment'} to "
        f"{scheme}://{shown}:{port}: keys go "
        f"only to loopback ({', '.join(LOOPBACK_HOSTS)}) and to the hosts in {HOSTS_ENV}, over https unless the "
        f"entry says http://. If you trust this server, whoever runs ComfyUI can add {entry} to {HOSTS_ENV} "
        f"(comma-separated entries, e.g. {HOSTS_ENV}={entry}){note} before starting it; otherwise leave "
        "api_key_env empty to call without a key.")
