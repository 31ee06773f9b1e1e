"""LLM backends, one module each, registered by name in `engine.backends.base`."""

# The built-in backends register themselves through the same `register` path a third-party one uses.
from engine.backends import anthropic, local, openai, scripted  # noqa: E402, F401
from engine.backends.base import (  # noqa: F401
    Backend,
    ChatRequest,
    ChatResult,
    Message,
    RenderHints,
    Sampling,
    StreamEvent,
    Usage,
    backend_names,
    get_backend,
    register,
)
