"""The one protocol every LLM backend speaks, and the registry that names them.

Messages + system + sampling settings in; text + token usage out; plus streaming.
Generation, user simulation, judging and the in-context agents all use this interface.
Backends live one per module (anthropic, openai, local, scripted) and register by name.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

from engine.errors import BackendUnavailableError


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "user", "assistant"]
    content: str


class Sampling(BaseModel):
    model_config = ConfigDict(extra="forbid")
    temperature: float = Field(0.7, ge=0, description="0 is greedy.")
    top_p: float = Field(1.0, gt=0, le=1)
    max_tokens: int = Field(512, gt=0, description="Most tokens to generate.")
    seed: int | None = Field(None, description="Per-request seed where the backend supports one.")
    stop: list[str] | None = None


class RenderHints(BaseModel):
    """What an offline, model-free backend needs to produce a turn; model backends ignore it."""

    model_config = ConfigDict(extra="forbid")
    node_id: str | None = None
    examples: list[str] = Field(default_factory=list, description="Example utterance templates for this turn.")
    variables: dict[str, Any] = Field(default_factory=dict, description="Scenario values to fill them with.")


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    system: str = ""
    messages: list[Message] = Field(default_factory=list)
    sampling: Sampling = Field(default_factory=Sampling)
    cache_system: bool = Field(True, description="Mark the stable prefix (system prompt) for prompt caching.")
    hints: RenderHints | None = None


class Usage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(**{k: getattr(self, k) + getattr(other, k) for k in type(self).model_fields})


class ChatResult(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str
    usage: Usage = Field(default_factory=Usage)
    model: str = ""
    backend: str = ""
    latency_s: float = 0.0
    ttft_s: float | None = Field(None, description="Time to first token when streamed.")
    finish_reason: str | None = None


class StreamEvent(BaseModel):
    """A text delta while streaming; the last event carries the full `result`."""

    delta: str = ""
    result: ChatResult | None = None


@runtime_checkable
class Backend(Protocol):
    name: str
    model: str

    async def complete(self, request: ChatRequest) -> ChatResult: ...

    def stream(self, request: ChatRequest) -> AsyncIterator[StreamEvent]: ...

    async def aclose(self) -> None: ...


_REGISTRY: dict[str, Callable[..., Backend]] = {}
_ON_THIS_MACHINE: set[str] = set()


def register(name: str, local: bool = False) -> Callable[[Callable[..., Backend]], Callable[..., Backend]]:
    """Register a backend factory by name; `local=True` for backends that run on this machine (no API bill)."""
    def deco(factory: Callable[..., Backend]) -> Callable[..., Backend]:
        _REGISTRY[name] = factory
        if local:
            _ON_THIS_MACHINE.add(name)
        return factory

    return deco


def get_backend(name: str, **options: Any) -> Backend:
    """Build a backend by registered name (anthropic, openai, local, scripted)."""
    import engine.backends  # noqa: F401  - registers the built-ins

    if name not in _REGISTRY:
        raise BackendUnavailableError(f"unknown backend '{name}'; choose one of {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name](**options)


def backend_names() -> list[str]:
    import engine.backends  # noqa: F401

    return sorted(_REGISTRY)


def is_local_backend(name: str) -> bool:
    """True for backends that run on this machine (scripted, local): they have no per-token price."""
    import engine.backends  # noqa: F401

    return name in _ON_THIS_MACHINE
