"""The front door of every OpenAI-compatible server subterra runs: one ASGI middleware.

It answers before the application sees a request:

    403  the Host header is not this machine (a web page reaching the port by DNS rebinding):
         loopback names and addresses, the bound address and `--allow-host` names pass
    401  an API key is set and the request lacks `Authorization: Bearer KEY` (as vLLM answers)
    415  a POST whose body is not declared `application/json`
    413  a body over the size limit (declared in Content-Length, or counted as it arrives)

The built-in server wraps its app in it; a managed vLLM loads it with `--middleware` from a copy of
this file (and engine/hosts.py) in a temporary folder, configured through the environment
(SUBTERRA_GUARD_*), because vLLM runs in its own virtual environment without our package. So this
module imports nothing of subterra but the loopback rule.
"""

from __future__ import annotations

import hmac
import json
import os
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

try:
    from engine.hosts import is_loopback
except ImportError:  # copied beside hosts.py for a managed vLLM (see the module docstring)
    from subterra_hosts import is_loopback  # type: ignore[no-redef]

DEFAULT_MAX_BODY = 4 * 1024 * 1024
"""Largest request body accepted (bytes): a long conversation is a few hundred kB."""

ENV_HOSTS, ENV_KEY, ENV_MAX_BODY = "SUBTERRA_GUARD_HOSTS", "SUBTERRA_GUARD_API_KEY", "SUBTERRA_GUARD_MAX_BODY"

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


def host_name(header: str) -> str:
    """`[::1]:8000` -> `::1`, `Example.com:80` -> `example.com`."""
    h = header.strip().lower()
    if h.startswith("["):
        return h[1:].split("]", 1)[0]
    return h.rsplit(":", 1)[0] if h.count(":") == 1 else h


def host_allowed(header: str, allowed: Iterable[str]) -> bool:
    name = host_name(header)
    return bool(name) and (is_loopback(name) or name in {a.strip().lower() for a in allowed})


class Guard:
    """ASGI middleware; see the module docstring. `allow_hosts`: names accepted besides loopback."""

    def __init__(self, app: Any, allow_hosts: Iterable[str] | None = None, api_key: str | None = None,
                 max_body: int | None = None, json_paths: tuple[str, ...] = ("/v1/",)):
        self.app = app
        env_hosts = [h for h in os.environ.get(ENV_HOSTS, "").split(",") if h.strip()]
        self.allow_hosts = [*(allow_hosts or ()), *env_hosts]
        self.api_key = api_key if api_key is not None else (os.environ.get(ENV_KEY) or None)
        self.max_body = max_body or int(os.environ.get(ENV_MAX_BODY) or DEFAULT_MAX_BODY)
        self.json_paths = json_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        refusal = self.refusal(scope, headers)
        if refusal is not None:
            status, message, kind = refusal
            return await _answer(send, status, message, kind, scope["type"])
        if scope["type"] == "http" and scope.get("method") == "POST":
            receive = self._counted(receive)
        await self.app(scope, receive, send)

    def refusal(self, scope: Scope, headers: dict[str, str]) -> tuple[int, str, str] | None:
        host = headers.get("host", "")
        if not host_allowed(host, self.allow_hosts):
            return (403, f"Host '{host_name(host) or '(none)'}' is not allowed: this server answers loopback "
                    "names only; start it with --allow-host NAME to accept another", "forbidden")
        if self.api_key is not None and scope.get("path", "") != "/health":
            auth = headers.get("authorization", "")
            given = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
            if not hmac.compare_digest(given.encode(), self.api_key.encode()):
                return 401, "missing or wrong API key: send the header 'Authorization: Bearer KEY'", "Unauthorized"
        if scope["type"] == "http" and scope.get("method") == "POST" and \
                scope.get("path", "").startswith(self.json_paths):
            ctype = headers.get("content-type", "").split(";", 1)[0].strip().lower()
            if ctype != "application/json":
                return (415, f"Content-Type must be application/json (got '{ctype or 'none'}')",
                        "invalid_request_error")
            length = headers.get("content-length", "")
            if length.isdigit() and int(length) > self.max_body:
                return 413, self._too_large(), "invalid_request_error"
        return None

    def _too_large(self) -> str:
        return f"request body over the limit of {self.max_body} bytes; send a shorter conversation"

    def _counted(self, receive: Receive) -> Receive:
        seen = 0
        limit = self.max_body

        async def wrapped() -> dict[str, Any]:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(self._too_large())
            return message

        return wrapped


class BodyTooLarge(ValueError):
    """A chunked body passed the limit while it was read (the app answers 413)."""


async def _answer(send: Send, status: int, message: str, kind: str, scope_type: str) -> None:
    if scope_type == "websocket":
        await send({"type": "websocket.close", "code": 1008, "reason": message[:120]})
        return
    body = json.dumps({"error": {"message": message, "type": kind, "code": status}}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
