"""A real HTTP server on 127.0.0.1 that speaks the Anthropic Messages API and the OpenAI chat
completions API, for tests and benchmarks. The official `anthropic` and `openai` SDKs work
against it unchanged (point their `base_url` at `srv.base_url`).

Endpoints
    POST /v1/messages            Anthropic Messages (non-streaming JSON, or SSE with "stream": true)
    POST /v1/chat/completions    OpenAI chat completions (JSON, or SSE with "stream": true;
                                 `stream_options.include_usage` adds the final usage chunk)
    GET  /v1/models              model list (Anthropic shape when the request carries an
                                 `anthropic-version` header, OpenAI shape otherwise)

Usage
    with FakeLLMServer(reply="hello") as srv:          # random free port, threaded
        client = anthropic.Anthropic(base_url=srv.base_url, api_key="test")
        client.messages.create(model="fake", max_tokens=10, messages=[...])
        srv.requests[-1].messages                       # the request log

    `reply` is a string, a list of strings (used in turn, cycling), or a callable
    `reply(req: LoggedRequest) -> str`. The default echoes the last user message.
    `latency` (seconds) delays every reply; `stream_chunk_delay` spaces SSE chunks.

Fault injection: `srv.inject(kind, ...)` queues faults; each request takes the next one.
    "429"        429 rate_limit_error, `retry-after: <retry_after>` header when given
    "500"        500 api_error
    "529"        529 overloaded_error
    "slow"       sleeps `delay` seconds and then answers normally (a client timeout below
                 `delay` sees a timeout)
    "malformed"  200 with a body that is not JSON
    "empty"      200 with a well-formed reply whose text is empty
    "disconnect" closes the connection without answering
    "context"    400: the prompt is longer than the model's context (in vLLM's words for OpenAI,
                 "prompt is too long" for Anthropic)
    `count` repeats a fault; `api="anthropic"|"openai"` makes it apply only to that API.

Usage accounting: tokens are counted as ceil(chars / 4) of the prompt text. An Anthropic
request whose system block carries `cache_control` bills that prefix as
`cache_creation_input_tokens` the first time the server sees it and as
`cache_read_input_tokens` afterwards; the rest is `input_tokens`. OpenAI replies report a
seen-before system prompt as `prompt_tokens_details.cached_tokens` (automatic caching).

Observability: `srv.requests` (every request, in arrival order, faults included),
`srv.max_in_flight` (the most requests handled at once), `srv.reset()`.

As a pytest fixture: `from fake_llm import fake_llm_server` in a test module, or write
`with FakeLLMServer() as srv: yield srv` in your own fixture.

As a separate process (benchmarks, subprocess tests): `python tests/fake_llm.py --latency 0.1
[--reply TEXT] [--port N]` prints `PORT <n>` on its first line and serves until killed.
"""

from __future__ import annotations

import itertools
import json
import math
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

FAULT_KINDS = ("429", "500", "529", "slow", "malformed", "empty", "disconnect", "context")


@dataclass
class LoggedRequest:
    """One request as the server saw it."""

    api: str  # "anthropic" | "openai" | "models"
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    time: float
    fault: str | None = None

    @property
    def model(self) -> str:
        return str(self.body.get("model", ""))

    @property
    def stream(self) -> bool:
        return bool(self.body.get("stream"))

    @property
    def system(self) -> str:
        """The system prompt as plain text, whichever API and shape it came in."""
        if self.api == "anthropic":
            return _text_of(self.body.get("system", ""))
        return "\n".join(_text_of(m.get("content", "")) for m in self.body.get("messages", [])
                         if m.get("role") == "system")

    @property
    def messages(self) -> list[dict[str, str]]:
        """Non-system messages as [{"role", "content"}] with content flattened to text."""
        return [
            {"role": m.get("role", ""), "content": _text_of(m.get("content", ""))}
            for m in self.body.get("messages", [])
            if m.get("role") != "system"
        ]

    @property
    def last_user(self) -> str:
        users = [m["content"] for m in self.messages if m["role"] == "user"]
        return users[-1] if users else ""


@dataclass
class Fault:
    kind: str
    retry_after: float | None = None
    delay: float = 0.0
    api: str | None = None


Reply = str | list[str] | Callable[[LoggedRequest], str]


@dataclass
class _State:
    faults: deque[Fault] = field(default_factory=deque)
    requests: list[LoggedRequest] = field(default_factory=list)
    seen_prefixes: set[str] = field(default_factory=set)
    in_flight: int = 0
    max_in_flight: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


class FakeLLMServer:
    """See the module docstring. Start with `with` (or `start()` / `stop()`)."""

    def __init__(
        self,
        reply: Reply | None = None,
        latency: float = 0.0,
        stream_chunk_delay: float = 0.0,
        models: list[str] | None = None,
    ):
        self.reply = reply
        self.latency = latency
        self.stream_chunk_delay = stream_chunk_delay
        self.models = models or ["fake-model"]
        self._state = _State()
        self._cycle: Iterator[str] | None = None
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> FakeLLMServer:
        handler = type("Handler", (_Handler,), {"server_ref": self})
        self._httpd = _Server(("127.0.0.1", 0), handler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> FakeLLMServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- public API --------------------------------------------------------------------------------
    @property
    def port(self) -> int:
        assert self._httpd is not None, "server not started"
        return int(self._httpd.server_address[1])

    @property
    def base_url(self) -> str:
        """Root URL for the anthropic SDK (`base_url=`); the OpenAI SDK wants `openai_base_url`."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def openai_base_url(self) -> str:
        return f"{self.base_url}/v1"

    def inject(self, kind: str, *, count: int = 1, retry_after: float | None = None, delay: float = 0.0,
               api: str | None = None) -> None:
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault {kind!r}; choose one of {', '.join(FAULT_KINDS)}")
        with self._state.lock:
            for _ in range(count):
                self._state.faults.append(Fault(kind, retry_after, delay, api))

    @property
    def requests(self) -> list[LoggedRequest]:
        with self._state.lock:
            return list(self._state.requests)

    @property
    def pending_faults(self) -> int:
        with self._state.lock:
            return len(self._state.faults)

    @property
    def max_in_flight(self) -> int:
        return self._state.max_in_flight

    def reset(self) -> None:
        with self._state.lock:
            self._state.faults.clear()
            self._state.requests.clear()
            self._state.seen_prefixes.clear()
            self._state.max_in_flight = 0

    # -- internals used by the handler -------------------------------------------------------------
    def _reply_text(self, req: LoggedRequest) -> str:
        r = self.reply
        if r is None:
            return f"You said: {req.last_user[:60]}" if req.last_user else "Hello! How can I help?"
        if callable(r):
            return str(r(req))
        if isinstance(r, list):
            with self._state.lock:
                if self._cycle is None:
                    self._cycle = itertools.cycle(r)
                return next(self._cycle)
        return str(r)

    def _take_fault(self, api: str) -> Fault | None:
        with self._state.lock:
            for i, f in enumerate(self._state.faults):
                if f.api in (None, api):
                    del self._state.faults[i]
                    return f
        return None

    def _cache_split(self, prefix: str) -> tuple[bool, int]:
        """(seen before, tokens) for a cacheable prefix; records it as seen."""
        with self._state.lock:
            seen = prefix in self._state.seen_prefixes
            self._state.seen_prefixes.add(prefix)
        return seen, count_tokens(prefix)


def count_tokens(text: str) -> int:
    return math.ceil(len(text) / 4) if text else 0


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(b.get("text", "") if isinstance(b, dict) else str(b) for b in content)
    return ""


def _has_cache_control(system: Any) -> bool:
    return isinstance(system, list) and any(isinstance(b, dict) and b.get("cache_control") for b in system)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256


class _Handler(BaseHTTPRequestHandler):
    server_ref: FakeLLMServer  # set on the per-server subclass
    protocol_version = "HTTP/1.1"  # keep-alive, like real APIs; SSE uses chunked encoding

    def setup(self) -> None:
        super().setup()
        # headers and body go out as separate writes; without NODELAY, Nagle + delayed ACK
        # add ~40 ms to every reply and the benchmark would measure TCP, not the client
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - silence stderr access log
        pass

    # -- routing -----------------------------------------------------------------------------------
    def do_GET(self) -> None:  # noqa: N802
        if self.path.rstrip("/").endswith("/v1/models"):
            self._log("models", {})
            srv = self.server_ref
            if "anthropic-version" in {k.lower() for k in self.headers}:
                data = [{"type": "model", "id": m, "display_name": m, "created_at": "2026-01-01T00:00:00Z"}
                        for m in srv.models]
                self._json(200, {"data": data, "has_more": False, "first_id": data[0]["id"], "last_id": data[-1]["id"]})
            else:
                models = [{"id": m, "object": "model", "created": 0, "owned_by": "fake"} for m in srv.models]
                self._json(200, {"object": "list", "data": models})
            return
        self._json(404, {"error": {"type": "not_found_error", "message": f"no route {self.path}"}})

    def do_POST(self) -> None:  # noqa: N802
        path = self.path.split("?")[0].rstrip("/")
        api = "anthropic" if path.endswith("/v1/messages") else "openai" if path.endswith("/chat/completions") else None
        body = self._read_body()
        if api is None or body is None:
            self._json(404 if api is None else 400,
                       {"error": {"type": "invalid_request_error", "message": "bad request"}})
            return
        srv = self.server_ref
        st = srv._state
        with st.lock:
            st.in_flight += 1
            st.max_in_flight = max(st.max_in_flight, st.in_flight)
        try:
            fault = srv._take_fault(api)
            req = self._log(api, body, fault.kind if fault else None)
            if srv.latency:
                time.sleep(srv.latency)
            if fault and self._apply_fault(api, fault):
                return
            text = srv._reply_text(req)
            if api == "anthropic":
                self._anthropic(body, text)
            else:
                self._openai(body, text)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeout); nothing to answer
        finally:
            with st.lock:
                st.in_flight -= 1

    # -- faults --------------------------------------------------------------------------------------
    def _apply_fault(self, api: str, f: Fault) -> bool:
        """Serve the fault; True when the request is finished (no normal reply)."""
        if f.kind == "slow":
            time.sleep(f.delay)
            return False
        if f.kind == "disconnect":
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return True
        if f.kind == "malformed":
            self._raw(200, b'{"id": "broken", "content": [ this is not json', "application/json")
            return True
        if f.kind == "empty":
            if api == "anthropic":
                self._anthropic(json.loads(json.dumps({"model": "fake"})), "", force_json=True)
            else:
                self._openai({"model": "fake"}, "", force_json=True)
            return True
        if f.kind == "context":
            if api == "anthropic":
                too_long = "prompt is too long: 9000 tokens > 8192 maximum"
                self._json(400, {"type": "error", "error": {"type": "invalid_request_error", "message": too_long}})
            else:
                self._json(400, {"error": {"message": "This model's maximum context length is 8192 tokens. However, "
                                                      "your prompt contains at least 8193 input tokens.",
                                           "type": "BadRequestError", "param": None, "code": 400}})
            return True
        status = int(f.kind)
        etype = {429: "rate_limit_error", 500: "api_error", 529: "overloaded_error"}[status]
        headers = {"retry-after": _fmt(f.retry_after)} if f.retry_after is not None else {}
        if api == "anthropic":
            payload = {"type": "error", "error": {"type": etype, "message": f"injected {status}"}}
        else:
            payload = {"error": {"message": f"injected {status}", "type": etype, "param": None, "code": None}}
        self._json(status, payload, headers)
        return True

    # -- Anthropic Messages ------------------------------------------------------------------------
    def _anthropic(self, body: dict[str, Any], text: str, force_json: bool = False) -> None:
        srv = self.server_ref
        system = body.get("system", "")
        sys_text = _text_of(system)
        rest = "".join(_text_of(m.get("content", "")) for m in body.get("messages", []))
        cache_read = cache_write = 0
        input_tokens = count_tokens(sys_text) + count_tokens(rest)
        if _has_cache_control(system):
            seen, n = srv._cache_split(sys_text)
            cache_read, cache_write = (n, 0) if seen else (0, n)
            input_tokens -= n
        usage = {"input_tokens": input_tokens, "output_tokens": count_tokens(text),
                 "cache_creation_input_tokens": cache_write, "cache_read_input_tokens": cache_read}
        model = body.get("model", "fake")
        mid = f"msg_{uuid.uuid4().hex[:20]}"
        stop = _stop_reason(body, text)
        if body.get("stream") and not force_json:
            self._sse_start()
            start_usage = dict(usage, output_tokens=1)
            self._event("message_start", {"type": "message_start", "message": {
                "id": mid, "type": "message", "role": "assistant", "content": [], "model": model,
                "stop_reason": None, "stop_sequence": None, "usage": start_usage}})
            self._event("content_block_start", {"type": "content_block_start", "index": 0,
                                                 "content_block": {"type": "text", "text": ""}})
            self._event("ping", {"type": "ping"})
            for piece in _chunks(text):
                self._event("content_block_delta", {"type": "content_block_delta", "index": 0,
                                                     "delta": {"type": "text_delta", "text": piece}})
            self._event("content_block_stop", {"type": "content_block_stop", "index": 0})
            self._event("message_delta", {"type": "message_delta",
                                          "delta": {"stop_reason": stop, "stop_sequence": None},
                                          "usage": {"output_tokens": usage["output_tokens"]}})
            self._event("message_stop", {"type": "message_stop"})
            self._sse_end()
            return
        content = [{"type": "text", "text": text}] if text or not force_json else []
        self._json(200, {"id": mid, "type": "message", "role": "assistant", "model": model, "content": content,
                         "stop_reason": stop, "stop_sequence": None, "usage": usage})

    # -- OpenAI chat completions -------------------------------------------------------------------
    def _openai(self, body: dict[str, Any], text: str, force_json: bool = False) -> None:
        srv = self.server_ref
        msgs = body.get("messages", [])
        sys_text = "".join(_text_of(m.get("content", "")) for m in msgs if m.get("role") == "system")
        prompt = sum(count_tokens(_text_of(m.get("content", ""))) for m in msgs)
        cached = 0
        if sys_text:
            seen, n = srv._cache_split("openai:" + sys_text)
            cached = n if seen else 0
        completion = count_tokens(text)
        usage = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
                 "prompt_tokens_details": {"cached_tokens": cached}}
        cid, created, model = f"chatcmpl-{uuid.uuid4().hex[:20]}", int(time.time()), body.get("model", "fake")
        finish = "length" if _stop_reason(body, text) == "max_tokens" else "stop"
        if body.get("stream") and not force_json:
            self._sse_start()

            def chunk(delta: dict[str, Any], fin: str | None) -> dict[str, Any]:
                return {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                        "choices": [{"index": 0, "delta": delta, "finish_reason": fin, "logprobs": None}]}

            self._data(chunk({"role": "assistant", "content": ""}, None))
            for piece in _chunks(text):
                self._data(chunk({"content": piece}, None))
            self._data(chunk({}, finish))
            if (body.get("stream_options") or {}).get("include_usage"):
                self._data({"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                            "choices": [], "usage": usage})
            self._chunk(b"data: [DONE]\n\n")
            self._sse_end()
            return
        self._json(200, {"id": cid, "object": "chat.completion", "created": created, "model": model,
                         "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                      "finish_reason": finish, "logprobs": None}],
                         "usage": usage})

    # -- wire helpers ------------------------------------------------------------------------------
    def _log(self, api: str, body: dict[str, Any], fault: str | None = None) -> LoggedRequest:
        req = LoggedRequest(api, self.path, {k.lower(): v for k, v in self.headers.items()}, body, time.time(), fault)
        st = self.server_ref._state
        with st.lock:
            st.requests.append(req)
        return req

    def _read_body(self) -> dict[str, Any] | None:
        n = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(n) if n else b""
        try:
            data = json.loads(raw or b"{}")
        except json.JSONDecodeError:
            return None
        return data if isinstance(data, dict) else None

    def _json(self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        self._raw(status, json.dumps(payload).encode(), "application/json", headers)

    def _raw(self, status: int, data: bytes, ctype: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("content-type", ctype)
        self.send_header("content-length", str(len(data)))
        self.send_header("request-id", f"req_{uuid.uuid4().hex[:16]}")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def _sse_start(self) -> None:
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("cache-control", "no-cache")
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()
        if self.server_ref.stream_chunk_delay:
            time.sleep(self.server_ref.stream_chunk_delay)

    def _event(self, name: str, payload: dict[str, Any]) -> None:
        self._chunk(f"event: {name}\ndata: {json.dumps(payload)}\n\n".encode())

    def _data(self, payload: dict[str, Any]) -> None:
        self._chunk(f"data: {json.dumps(payload)}\n\n".encode())

    def _sse_end(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()


def _chunks(text: str, size: int = 12) -> list[str]:
    """Split a reply into small SSE deltas (on word boundaries where possible)."""
    out, cur = [], ""
    for word in text.split(" "):
        piece = (" " if cur or out else "") + word
        if len(cur) + len(piece) > size and cur:
            out.append(cur)
            cur = piece
        else:
            cur += piece
    if cur:
        out.append(cur)
    return out


def _stop_reason(body: dict[str, Any], text: str) -> str:
    max_tokens = body.get("max_tokens") or body.get("max_completion_tokens")
    return "max_tokens" if max_tokens and count_tokens(text) >= int(max_tokens) else "end_turn"


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


@pytest.fixture
def fake_llm_server() -> Iterator[FakeLLMServer]:
    """A started FakeLLMServer with default replies; configure `srv.reply`, `srv.latency`, `srv.inject(...)`."""
    with FakeLLMServer() as srv:
        yield srv


def _serve_forever(argv: list[str] | None = None) -> None:
    import argparse

    ap = argparse.ArgumentParser(description="Serve the fake Anthropic/OpenAI API on 127.0.0.1.")
    ap.add_argument("--latency", type=float, default=0.0)
    ap.add_argument("--reply", default=None)
    ap.add_argument("--port", type=int, default=0)
    args = ap.parse_args(argv)
    srv = FakeLLMServer(reply=args.reply, latency=args.latency)
    handler = type("Handler", (_Handler,), {"server_ref": srv})
    srv._httpd = _Server(("127.0.0.1", args.port), handler)
    print(f"PORT {srv.port}", flush=True)
    srv._httpd.serve_forever(poll_interval=0.05)


if __name__ == "__main__":
    _serve_forever()
