"""LLM backends, one module each, registered by name in `engine.backends.base`."""

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

# Built-in backends register themselves on import (added by their modules as they land).
for _mod in ("scripted", "anthropic", "openai", "local"):
    try:
        __import__(f"engine.backends.{_mod}")
    except ModuleNotFoundError as _e:  # a module not written yet, not a missing dependency
        if _e.name != f"engine.backends.{_mod}":
            raise
