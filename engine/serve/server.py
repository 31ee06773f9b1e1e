"""The built-in OpenAI-compatible server: a model directory served on transformers.

For machines without vLLM (`subterra serve MODEL --engine transformers`). It speaks the subset of
the OpenAI API that chat clients use, so the official `openai` SDK, `subterra chat` (through the
`openai` backend) and evaluation all work against it unchanged:

    GET  /v1/models               the one model served (its name, and the directory as an alias)
    POST /v1/chat/completions     messages in, one choice out; "stream": true answers with SSE chunks
                                  ("stream_options": {"include_usage": true} adds a usage chunk)
    GET  /health                  200 once the model is loaded

Requests are answered one generation at a time per model (the `local` backend serializes them in
arrival order: torch already uses every core for one); vLLM is the engine for batched throughput.
Every request passes `engine.serve.guard` first (Host, API key, content type, body size); a request
is then checked whole before any token is generated (finite numbers, a 64-bit seed, prompt plus
`max_tokens` within the model's context), and a generation whose client went away is cancelled.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Literal

from fastapi import FastAPI, Request  # module level: FastAPI resolves the handlers' annotations here
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from engine.backends.base import ChatRequest, ChatResult, Message, Sampling
from engine.errors import ServingError
from engine.serve.guard import BodyTooLarge, Guard

SEED_RANGE = (-(2**63), 2**64 - 1)
"""Seeds torch accepts; others are refused with 400 rather than failing mid-request."""
_DISCONNECT_POLL_S = 0.25


class WireMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")  # clients send name, tool fields... we read role and content
    role: str
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):  # content parts: keep the text ones
            return "".join(p.get("text", "") for p in self.content if p.get("type") == "text")
        return self.content or ""


class CompletionRequest(BaseModel):
    """The fields of an OpenAI chat completions request this server honours (others are ignored)."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)
    model: str = Field("", description="Served model name (or the model directory).")
    messages: list[WireMessage] = Field(min_length=1, description="The conversation, oldest first.")
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    max_tokens: int | None = Field(None, gt=0)
    max_completion_tokens: int | None = Field(None, gt=0)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=SEED_RANGE[0], le=SEED_RANGE[1])
    n: int = Field(1, ge=1, le=1, description="Only one choice per request.")
    stream: bool = False
    stream_options: dict[str, Any] | None = None

    def to_chat(self, default_max_tokens: int) -> ChatRequest:
        system = "\n\n".join(m.text() for m in self.messages if m.role in ("system", "developer"))
        turns = []
        for m in self.messages:
            if m.role in ("system", "developer"):
                continue
            if m.role not in ("user", "assistant"):
                raise ServingError(f"messages with role '{m.role}' are not supported; send system, user and "
                                   "assistant messages only")
            turns.append(Message(role=m.role, content=m.text()))  # type: ignore[arg-type]
        stop = [self.stop] if isinstance(self.stop, str) else self.stop
        sampling = Sampling(temperature=self.temperature, top_p=self.top_p, seed=self.seed, stop=stop or None,
                            max_tokens=self.max_completion_tokens or self.max_tokens or default_max_tokens)
        return ChatRequest(system=system, messages=turns, sampling=sampling)


def create_app(model: str, served_name: str | None = None, device: str = "auto", dtype: str = "auto",
               default_max_tokens: int = 512, api_key: str | None = None, allow_hosts: tuple[str, ...] = (),
               max_body: int | None = None) -> Any:
    """The FastAPI app serving `model` (a directory, hub id or `smollm2-135m`), behind `Guard`."""
    from engine.backends.local import LocalBackend

    backend = LocalBackend(model=model, device=device, dtype=dtype)
    name = served_name or default_served_name(model)
    aliases = {name, model, str(Path(model).expanduser().resolve()) if Path(model).expanduser().exists() else model}

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        import asyncio

        await asyncio.to_thread(backend.loaded)  # load before accepting requests: ready means loaded
        yield
        backend.cancel_all()

    app = FastAPI(title="subterra", lifespan=lifespan)
    app.state.backend = backend
    app.add_middleware(Guard, allow_hosts=allow_hosts, api_key=api_key, max_body=max_body)

    def error(status: int, message: str, kind: str = "invalid_request_error") -> Any:
        return JSONResponse({"error": {"message": message, "type": kind, "code": status}}, status_code=status)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": name, "object": "model", "created": 0, "owned_by": "subterra",
                                            "root": model}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        try:
            raw = await request.body()
        except BodyTooLarge as e:
            return error(413, str(e))
        try:
            body = CompletionRequest.model_validate(parse_json(raw))
            chat = body.to_chat(default_max_tokens)
        except (ValidationError, ServingError, ValueError) as e:
            return error(400, _short(e))
        if body.model and body.model not in aliases:
            return error(404, f"the model '{body.model}' does not exist; this server serves '{name}'",
                         "NotFoundError")
        if not chat.messages:
            return error(400, "messages has no user or assistant message; add the user's message")
        asked = body.max_completion_tokens or body.max_tokens
        try:
            chat = await asyncio.to_thread(fit_context, backend, chat, asked)
        except ServingError as e:
            return error(400, str(e))
        cid = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        if body.stream:  # Starlette cancels the stream when the client goes away; the backend then stops
            usage = bool((body.stream_options or {}).get("include_usage"))
            return StreamingResponse(_sse(backend, chat, cid, name, usage), media_type="text/event-stream")
        result = await _unless_disconnected(request, backend.complete(chat))
        if result is None:
            return error(499, "the client closed the connection; generation cancelled")
        return _completion(result, cid, name)

    return app


def parse_json(raw: bytes) -> Any:
    """The request body as JSON; NaN/Infinity and absurd nesting are refused (ValueError) before any work."""
    def no_constant(name: str) -> Any:
        raise ValueError(f"the request body contains {name}, which is not JSON; send finite numbers")

    try:
        return json.loads(raw, parse_constant=no_constant)
    except RecursionError:
        raise ValueError("the request body is nested too deeply to be a chat request") from None
    except UnicodeDecodeError:
        raise ValueError("the request body is not UTF-8 JSON") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"the request body is not JSON ({e.msg} at line {e.lineno} column {e.colno})") from None


def fit_context(backend: Any, chat: ChatRequest, asked: int | None) -> ChatRequest:
    """`chat` with max_tokens that fits the model's context; a request asking for more is refused.

    Checked before generating (as vLLM does), so a request for a billion tokens costs nothing.
    """
    context = backend.context_length()
    prompt = len(backend.render_prompt(chat))
    room = context - prompt
    if room <= 0 or (asked is not None and asked > room):
        raise ServingError(f"this model's maximum context length is {context} tokens; the messages take {prompt} "
                           f"and max_tokens asks for {asked or chat.sampling.max_tokens}: shorten the conversation "
                           f"or ask for at most {max(room, 0)} tokens")
    if asked is None and chat.sampling.max_tokens > room:
        chat = chat.model_copy(update={"sampling": chat.sampling.model_copy(update={"max_tokens": room})})
    return chat


async def _unless_disconnected(request: Request, work: Any) -> Any:
    """Await `work` unless the client disconnects first: then cancel it (the backend stops generating)."""
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=_DISCONNECT_POLL_S)
            if done:
                return task.result()
            if await request.is_disconnected():
                task.cancel()
                return None
    finally:
        if not task.done():
            task.cancel()


def default_served_name(model: str) -> str:
    """The name clients pass as `model`: the directory's name (`compiled-travel`), or the id as given."""
    p = Path(model).expanduser()
    return p.resolve().name if p.is_dir() else model


async def _sse(backend: Any, chat: ChatRequest, cid: str, name: str, include_usage: bool) -> AsyncIterator[str]:
    created = int(time.time())

    def chunk(delta: dict[str, Any], finish: str | None = None, usage: dict[str, int] | None = None,
              choices: bool = True) -> str:
        body: dict[str, Any] = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": name,
                                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}] if choices else []}
        if usage is not None:
            body["usage"] = usage
        return f"data: {json.dumps(body)}\n\n"

    yield chunk({"role": "assistant", "content": ""})
    async for event in backend.stream(chat):
        if event.delta:
            yield chunk({"content": event.delta})
        if event.result is not None:
            yield chunk({}, finish=event.result.finish_reason or "stop")
            if include_usage:
                yield chunk({}, usage=_usage(event.result), choices=False)
    yield "data: [DONE]\n\n"


def _completion(result: ChatResult, cid: str, name: str) -> dict[str, Any]:
    return {"id": cid, "object": "chat.completion", "created": int(time.time()), "model": name,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": result.text},
                         "finish_reason": result.finish_reason or "stop"}],
            "usage": _usage(result)}


def _usage(result: ChatResult) -> dict[str, int]:
    u = result.usage
    return {"prompt_tokens": u.input_tokens, "completion_tokens": u.output_tokens,
            "total_tokens": u.input_tokens + u.output_tokens}


def _short(e: Exception) -> str:
    if isinstance(e, ValidationError):
        return "; ".join(f"{'.'.join(str(x) for x in err['loc'])}: {err['msg']}" for err in e.errors()[:5])
    return str(e)


# -- running ---------------------------------------------------------------------------------------
def serve(model: str, host: str = "127.0.0.1", port: int = 8000, served_name: str | None = None,
          device: str = "auto", dtype: str = "auto", log_level: str = "warning", api_key: str | None = None,
          allow_hosts: tuple[str, ...] = ()) -> None:
    """Serve until Ctrl-C or SIGTERM, then return (the CLI's `subterra serve --engine transformers`).

    Running generations are cancelled at shutdown (they stop at their next token), so a stop never waits
    for a long reply; the signal is not raised again afterwards, so the command exits 0.
    """
    import uvicorn

    app = create_app(model, served_name, device, dtype, api_key=api_key, allow_hosts=(*allow_hosts, host))
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=1)

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            super().handle_exit(sig, frame)
            self._captured_signals.clear()  # a stop we asked for is a clean exit (0), not an abort
            app.state.backend.cancel_all()  # running replies end now (finish_reason "stop"), not in minutes

    Server(config).run()


class ServerThread:
    """The built-in server on a background thread (tests, benchmarks, `chat` against a model dir).

        with ServerThread(model_dir) as srv:
            openai.OpenAI(base_url=srv.base_url, api_key="x")
    """

    def __init__(self, model: str, host: str = "127.0.0.1", port: int = 0, served_name: str | None = None,
                 **options: Any):
        import uvicorn

        self.host = host
        self.served_name = served_name or default_served_name(model)
        config = uvicorn.Config(create_app(model, self.served_name, **options), host=host, port=port,
                                log_level="warning", lifespan="on", timeout_graceful_shutdown=1)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="subterra-serve", daemon=True)
        self.port = port

    def start(self, timeout: float = 300.0) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise ServingError("the built-in server did not start; see the log above")
            time.sleep(0.05)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


Engine = Literal["transformers", "vllm"]
