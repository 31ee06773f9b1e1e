"""The compiled agent: a fine-tuned model directory run with only the flow's minimal system prompt.

No procedure, no state, no router: the procedure lives in the weights (step 4 of the method).
The model runs in-process on transformers (the `local` backend: CPU or GPU, streaming), or on an
OpenAI-compatible server that serves the same directory (`base_url=`: vLLM or `subterra serve`).

The system prompt comes from the directory's `subterra.json` (written by `subterra compile`), else
from the flow passed in, else none.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from engine.agents.base import AgentDelta, AgentReply
from engine.agents.calls import call_reply, call_stream
from engine.backends.base import Backend, ChatRequest, Message, Sampling, get_backend
from engine.errors import ServingError
from engine.flow import Flow

MANIFEST = "subterra.json"


def read_manifest(model_dir: Path) -> dict[str, Any]:
    """`subterra.json` of a compiled model directory ({} when it has none)."""
    path = model_dir / MANIFEST
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ServingError(f"{path} is not valid JSON ({e.msg} at line {e.lineno}); fix or delete it") from e
    return data if isinstance(data, dict) else {}


def check_model_dir(model_dir: str | Path) -> Path:
    path = Path(model_dir).expanduser()
    if not path.is_dir():
        raise ServingError(f"no model directory at {path}; give the output directory of `subterra compile`")
    if not (path / "config.json").is_file():
        raise ServingError(f"{path} has no config.json, so it is not a model directory; "
                           "give the output directory of `subterra compile`")
    return path.resolve()


class CompiledAgent:
    kind = "compiled"

    def __init__(self, model_dir: str | Path, flow: Flow | None = None, base_url: str | None = None,
                 served_model: str | None = None, sampling: Sampling | None = None, spec: str = "",
                 backend: Backend | None = None, backend_options: dict[str, Any] | None = None,
                 **local_options: Any):
        self.model_dir = check_model_dir(model_dir)
        manifest = read_manifest(self.model_dir)
        trained_with = manifest.get("system_prompt") or (manifest.get("config") or {}).get("system_prompt")
        self.system_prompt: str = trained_with or (flow.system_prompt if flow else "") or ""
        self.flow_name: str | None = manifest.get("flow") or (flow.name if flow else None)
        self.spec = spec or f"compiled:{self.model_dir}"
        self.sampling = sampling or Sampling(temperature=0.7, max_tokens=256)
        if backend is not None:
            self.backend = backend
        elif base_url:
            self.backend = get_backend("openai", base_url=base_url, model=served_model or str(self.model_dir),
                                       **(backend_options or {}))
        else:
            self.backend = get_backend("local", model=str(self.model_dir), **local_options)
        self.model = self.backend.model or self.model_dir.name

    def session(self) -> CompiledSession:
        return CompiledSession(self)

    def request(self, history: list[Message]) -> ChatRequest:
        return ChatRequest(system=self.system_prompt, messages=list(history), sampling=self.sampling)

    async def aclose(self) -> None:
        await self.backend.aclose()


class CompiledSession:
    """Stateless apart from the history the caller passes: the model carries the procedure."""

    def __init__(self, agent: CompiledAgent):
        self.agent = agent

    async def reply(self, history: list[Message]) -> AgentReply:
        return await call_reply(self.agent.backend, self.agent.request(history))

    def stream(self, history: list[Message]) -> AsyncIterator[AgentDelta]:
        return call_stream(self.agent.backend, self.agent.request(history))
