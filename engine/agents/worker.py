"""Local models in worker processes: the `local` backend run in a child process, spoken to over a pipe.

The studio must never freeze while a model loads (seconds on CPU, a minute for the first conversion of
the bundled SmolLM2) or generates. Threads in the studio's own process would share its GIL with the web
server, so each local model gets a process of its own instead: `python -m engine.agents.worker MODEL`
loads it at once and then streams completions, one JSON object per line:

    parent → child   {"op": "stream", "id": 3, "request": {ChatRequest}}   {"op": "cancel", "id": 3}
    child → parent   {"op": "ready", "load_s": 4.2}   {"op": "load_error", "error": "..."}
                     {"id": 3, "delta": "Hel"} ... {"id": 3, "result": {ChatResult}}   {"id": 3, "error": "..."}

`WorkerBackend` speaks the backend protocol on top (its name is `local`: it is the local backend, and
costs as self-hosted). Workers are shared per model by everything in the process (`worker_for`) and
stop when the parent exits (the child ends when its stdin closes).
"""

from __future__ import annotations

import asyncio
import atexit
import itertools
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from engine.backends.base import ChatRequest, ChatResult, StreamEvent
from engine.errors import BackendResponseError, BackendUnavailableError

LOAD_TIMEOUT_S = 900.0  # the first use of the bundled model converts it (~1 min on 2 cores)


class ModelWorker:
    """One child process serving one local model; thread-safe, usable from any event loop."""

    def __init__(self, model: str, device: str = "auto", dtype: str = "auto", threads: int | None = None):
        self.model, self.device, self.dtype = model, device, dtype
        self.threads = threads or _default_threads()
        self.loaded = False
        self.load_error: str | None = None
        self.load_s: float | None = None
        self.started_at = 0.0
        self._ready = threading.Event()
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._waiters: dict[int, tuple[asyncio.AbstractEventLoop, asyncio.Queue[dict[str, Any]]]] = {}
        self.proc: subprocess.Popen[str] | None = None
        self.log_path: Path | None = None

    # -- lifecycle --------------------------------------------------------------------------------
    def start(self) -> ModelWorker:
        with self._lock:
            if self.proc is not None and self.proc.poll() is None:
                return self
            from engine.store import data_dir

            logs = data_dir() / "logs"
            logs.mkdir(parents=True, exist_ok=True)
            self.log_path = logs / f"worker-{Path(self.model).name or 'model'}.log"
            env = {**os.environ, "SUBTERRA_TORCH_THREADS": str(self.threads), "TOKENIZERS_PARALLELISM": "false",
                   "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
            env.pop("PYTEST_CURRENT_TEST", None)
            self.loaded, self.load_error = False, None
            self._ready.clear()
            self.started_at = time.perf_counter()
            log = open(self.log_path, "a")  # noqa: SIM115 - handed to the child, closed with it
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "engine.agents.worker", self.model, "--device", self.device,
                 "--dtype", self.dtype], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True,
                bufsize=1, env=env, cwd=str(Path(__file__).resolve().parents[2]))
            log.close()
            threading.Thread(target=self._read, args=(self.proc,), name="subterra-worker-reader", daemon=True).start()
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        with self._lock:
            proc, self.proc = self.proc, None
        if proc is None:
            return
        try:
            if proc.stdin:
                proc.stdin.close()  # the child exits when its stdin closes
            proc.wait(5)
        except (OSError, subprocess.TimeoutExpired):
            proc.kill()
            proc.wait(5)

    async def wait_loaded(self, timeout: float = LOAD_TIMEOUT_S) -> None:
        self.start()
        if not await asyncio.to_thread(self._ready.wait, timeout):
            raise BackendUnavailableError(f"the worker for {self.model} did not load it within {timeout:.0f} s; "
                                          f"see {self.log_path}")
        if self.load_error:
            raise BackendUnavailableError(self.load_error)

    # -- requests ---------------------------------------------------------------------------------
    async def stream(self, request: ChatRequest) -> AsyncIterator[StreamEvent]:
        await self.wait_loaded()
        rid = next(self._ids)
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._waiters[rid] = (asyncio.get_running_loop(), queue)
        finished = False
        try:
            self._send({"op": "stream", "id": rid, "request": request.model_dump(mode="json")})
            while True:
                msg = await queue.get()
                if "delta" in msg:
                    yield StreamEvent(delta=msg["delta"])
                elif "result" in msg:
                    finished = True
                    yield StreamEvent(result=ChatResult.model_validate(msg["result"]))
                    return
                else:
                    finished = True
                    raise BackendResponseError(msg.get("error") or f"the worker for {self.model} failed")
        finally:
            self._waiters.pop(rid, None)
            if not finished and self.alive():
                self._send({"op": "cancel", "id": rid})

    def _send(self, msg: dict[str, Any]) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None or proc.stdin is None:
            raise BackendUnavailableError(f"the worker for {self.model} is not running; see {self.log_path}")
        with self._lock:
            try:
                proc.stdin.write(json.dumps(msg) + "\n")
                proc.stdin.flush()
            except OSError as e:
                raise BackendUnavailableError(f"the worker for {self.model} went away ({e}); "
                                              f"see {self.log_path}") from e

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            try:
                msg = json.loads(line)
            except json.JSONDecodeError:
                continue
            op = msg.get("op")
            if op == "ready":
                self.loaded, self.load_s = True, float(msg.get("load_s") or 0.0)
                self._ready.set()
            elif op == "load_error":
                self.load_error = str(msg.get("error"))
                self._ready.set()
            elif "id" in msg:
                self._dispatch(int(msg["id"]), msg)
        # the child ended: wake everyone who waits on it
        code = proc.wait()
        if not self._ready.is_set():
            self.load_error = f"the worker for {self.model} exited (code {code}) before loading; see {self.log_path}"
            self._ready.set()
        for rid in list(self._waiters):
            self._dispatch(rid, {"error": f"the worker for {self.model} exited (code {code}); see {self.log_path}"})

    def _dispatch(self, rid: int, msg: dict[str, Any]) -> None:
        waiter = self._waiters.get(rid)
        if waiter is None:
            return
        loop, queue = waiter
        try:
            loop.call_soon_threadsafe(queue.put_nowait, msg)
        except RuntimeError:  # that event loop is closed: its caller is gone
            self._waiters.pop(rid, None)


class WorkerBackend:
    """The backend protocol over a `ModelWorker` (a local model in its own process)."""

    name = "local"

    def __init__(self, model: str, device: str = "auto", dtype: str = "auto"):
        self.model = model
        self.worker = worker_for(model, device, dtype)

    @property
    def loaded(self) -> bool:
        return self.worker.loaded and self.worker.alive()

    async def complete(self, request: ChatRequest) -> ChatResult:
        async for event in self.stream(request):
            if event.result is not None:
                return event.result
        raise BackendResponseError(f"the worker for {self.model} ended without a result")

    def stream(self, request: ChatRequest) -> AsyncIterator[StreamEvent]:
        return self.worker.stream(request)

    async def aclose(self) -> None:
        """Workers are shared by the process; `shutdown_workers()` stops them."""


_WORKERS: dict[tuple[str, str, str], ModelWorker] = {}
_POOL_LOCK = threading.Lock()


def worker_for(model: str, device: str = "auto", dtype: str = "auto") -> ModelWorker:
    """The process-wide worker for a model (started on first use, restarted if it died)."""
    key = (_model_key(model), device, dtype)
    with _POOL_LOCK:
        w = _WORKERS.get(key)
        if w is None:
            w = _WORKERS[key] = ModelWorker(key[0], device, dtype)
    return w.start()


def shutdown_workers() -> None:
    with _POOL_LOCK:
        workers = list(_WORKERS.values())
        _WORKERS.clear()
    for w in workers:
        w.stop()


atexit.register(shutdown_workers)


def _model_key(model: str) -> str:
    p = Path(model).expanduser()
    return str(p.resolve()) if p.is_dir() else model


def _default_threads() -> int:
    # two models on a 2-core machine: one thread each beats two spinning threads each
    env = os.environ.get("SUBTERRA_TORCH_THREADS")
    if env and env.isdigit():
        return int(env)
    return max(1, (os.cpu_count() or 2) // 2)


# ----------------------------------------------------------------------------------------------
# the child process


def _child(model: str, device: str, dtype: str) -> None:
    # the protocol owns the real stdout; anything else printed goes to the log (stderr)
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    def say(msg: dict[str, Any]) -> None:
        proto.write(json.dumps(msg) + "\n")
        proto.flush()

    from engine.backends.local import LocalBackend

    backend = LocalBackend(model=model, device=device, dtype=dtype)
    t0 = time.perf_counter()
    try:
        backend.loaded()
    except Exception as e:  # noqa: BLE001 - reported to the parent as one line
        say({"op": "load_error", "error": str(e) or type(e).__name__})
        return
    say({"op": "ready", "load_s": round(time.perf_counter() - t0, 3)})
    asyncio.run(_serve(backend, say))


async def _serve(backend: Any, say: Any) -> None:
    loop = asyncio.get_running_loop()
    lines: asyncio.Queue[str | None] = asyncio.Queue()

    def read() -> None:
        for line in sys.stdin:
            loop.call_soon_threadsafe(lines.put_nowait, line)
        loop.call_soon_threadsafe(lines.put_nowait, None)

    threading.Thread(target=read, daemon=True).start()
    tasks: dict[int, asyncio.Task[None]] = {}

    async def run(rid: int, request: ChatRequest) -> None:
        try:
            async for event in backend.stream(request):
                if event.delta:
                    say({"id": rid, "delta": event.delta})
                if event.result is not None:
                    say({"id": rid, "result": event.result.model_dump(mode="json")})
        except asyncio.CancelledError:
            say({"id": rid, "error": "cancelled"})
        except Exception as e:  # noqa: BLE001
            say({"id": rid, "error": str(e) or type(e).__name__})
        finally:
            tasks.pop(rid, None)

    while (line := await lines.get()) is not None:
        try:
            msg = json.loads(line)
        except json.JSONDecodeError:
            continue
        if msg.get("op") == "stream":
            rid = int(msg["id"])
            tasks[rid] = asyncio.create_task(run(rid, ChatRequest.model_validate(msg["request"])))
        elif msg.get("op") == "cancel" and (task := tasks.get(int(msg["id"]))):
            task.cancel()
    for task in list(tasks.values()):
        task.cancel()


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="subterra model worker (spoken to over stdin/stdout)")
    parser.add_argument("model")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    args = parser.parse_args()
    _child(args.model, args.device, args.dtype)
