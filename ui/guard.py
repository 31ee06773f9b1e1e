"""The studio's front door: an ASGI middleware in front of every page, upload and websocket.

The studio has no login: it is private because it listens on loopback. A web page the person visits
could still reach it, by DNS rebinding (its own name resolving to 127.0.0.1: the browser then sends
that name as Host) or by opening a websocket to 127.0.0.1 from another origin (the socket.io server
accepts any Origin). So:

    403  a Host other than loopback names, the bound address and `--allow-host` names
    403  an Origin (a page of another site) that is not this studio's own origin
    413  an upload body over the limit, refused before it is read (the browser's own check is
         only a courtesy: anything can POST)
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

from engine.serve.guard import host_allowed, host_name

MAX_UPLOAD = 2 * 1024 * 1024
"""Largest flow file the studio imports (bytes); the upload widget says the same to the browser."""


class StudioGuard:
    def __init__(self, app: Any, bound_host: str = "127.0.0.1", allow_hosts: Iterable[str] = (),
                 max_upload: int = MAX_UPLOAD):
        self.app = app
        self.allowed = [h for h in (bound_host, *allow_hosts) if h and h not in ("0.0.0.0", "::")]
        self.max_upload = max_upload

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        problem = self.problem(scope, headers)
        if problem is not None:
            return await _refuse(send, scope["type"], *problem)
        if scope["type"] == "http" and scope.get("method") == "POST" and "/upload/" in scope.get("path", ""):
            receive = self._capped(receive)
        await self.app(scope, receive, send)

    def problem(self, scope: dict[str, Any], headers: dict[str, str]) -> tuple[int, str] | None:
        host = headers.get("host", "")
        if not host_allowed(host, self.allowed):
            return 403, (f"Host '{host_name(host) or '(none)'}' is not allowed: the studio answers its own address "
                         "and loopback names; start it with --allow-host NAME to accept another")
        origin = headers.get("origin")
        if origin is not None and not _same_origin(origin, host):
            return 403, f"requests from another site ({origin}) are not allowed"
        if scope["type"] == "http" and scope.get("method") == "POST" and "/upload/" in scope.get("path", ""):
            length = headers.get("content-length", "")
            if length.isdigit() and int(length) > self.max_upload:
                return 413, f"the upload is {int(length)} bytes, over the limit of {self.max_upload} bytes"
        return None

    def _capped(self, receive: Any) -> Any:
        seen = 0

        async def wrapped() -> dict[str, Any]:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_upload:  # no Content-Length: stop reading, as if the client left
                    return {"type": "http.disconnect"}
            return message

        return wrapped


def _same_origin(origin: str, host: str) -> bool:
    parts = urlsplit(origin)
    return parts.scheme in ("http", "https") and parts.netloc.lower() == host.strip().lower()


async def _refuse(send: Any, scope_type: str, status: int, message: str) -> None:
    if scope_type == "websocket":
        await send({"type": "websocket.close", "code": 1008, "reason": message[:120]})
        return
    body = message.encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
