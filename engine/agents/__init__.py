"""Agents: a conversation so far in, the next agent message out (see `engine.agents.base`).

`load_agent(spec)` builds one from a spec string:

    compiled:DIR                        a compiled model directory, minimal system prompt only
    in-context:FLOW[@backend[:model]]   the whole flowchart serialized into the system prompt
    orchestrator:FLOW[@backend[:model]] surface orchestrator: flowchart state, node prompt injected
    langgraph:FLOW[@backend[:model]]    the same procedure as a LangGraph StateGraph (optional extra)

FLOW is a flow file or a stored flow name (`name@3` for version 3). The backend defaults to `local`
(the bundled SmolLM2-135M); `local:DIR` runs another local model, e.g. the compiled one's base.
"""

from __future__ import annotations

from typing import Any

from engine.agents.base import Agent, AgentDelta, AgentReply, AgentSession  # noqa: F401
from engine.backends.base import Backend, Sampling, get_backend
from engine.errors import ServingError

KINDS = ("compiled", "in-context", "orchestrator", "langgraph")
_ALIASES = {"incontext": "in-context", "in_context": "in-context", "surface": "orchestrator",
            "orchestrated": "orchestrator", "lg": "langgraph"}
DEFAULT_BACKEND = "local"
_SAMPLING_KEYS = ("temperature", "top_p", "max_tokens", "seed")


def parse_spec(spec: str) -> tuple[str, str, str | None, str | None]:
    """`kind:target[@backend[:model]]` → (kind, target, backend, model); target is DIR or FLOW."""
    kind, sep, rest = spec.partition(":")
    kind = _ALIASES.get(kind.strip().lower(), kind.strip().lower())
    if not sep or kind not in KINDS or not rest.strip():
        raise ServingError(f"cannot read agent '{spec}'; write compiled:DIR, in-context:FLOW[@backend[:model]], "
                           "orchestrator:FLOW[@backend[:model]] or langgraph:FLOW[@backend[:model]]")
    if kind == "compiled":
        return kind, rest, None, None
    parts = rest.split("@")
    flow_ref = parts[0]
    parts = parts[1:]
    if parts and parts[0].isdigit():  # name@3: a stored flow's version, not a backend
        flow_ref, parts = f"{flow_ref}@{parts[0]}", parts[1:]
    if len(parts) > 1:
        raise ServingError(f"agent '{spec}' has too many '@'; write FLOW[@version][@backend[:model]]")
    backend, model = DEFAULT_BACKEND, None
    if parts:
        name, _, model_part = parts[0].partition(":")
        backend, model = name or DEFAULT_BACKEND, model_part or None
    return kind, flow_ref, backend, model


def load_agent(spec: str, **opts: Any) -> Agent:
    """Build the agent a spec names. Options: temperature, top_p, max_tokens, seed (sampling);
    backend_options (dict for the backend, e.g. base_url); router (a `backend[:model]` for the
    orchestrators' classifier); flow (a Flow for compiled agents without subterra.json); for
    compiled: base_url, served_model, device, dtype."""
    kind, target, backend_name, model = parse_spec(spec)
    sampling = _sampling(opts)
    if kind == "compiled":
        from engine.agents.compiled import CompiledAgent

        extra = {k: v for k, v in opts.items() if k not in _SAMPLING_KEYS}
        return CompiledAgent(target, sampling=sampling, spec=spec, **extra)

    from engine.store import load_flow

    flow = load_flow(target)
    backend = _backend(backend_name or DEFAULT_BACKEND, model, opts.get("backend_options") or {})
    if kind == "in-context":
        from engine.agents.in_context import InContextAgent

        return InContextAgent(flow, backend, sampling=sampling, spec=spec)
    router = None
    if opts.get("router"):
        r_name, _, r_model = str(opts["router"]).partition(":")
        router = _backend(r_name, r_model or None, opts.get("router_options") or {})
    if kind == "orchestrator":
        from engine.agents.orchestrator import OrchestratorAgent

        return OrchestratorAgent(flow, backend, router_backend=router, sampling=sampling, spec=spec)
    from engine.agents.langgraph_agent import LangGraphAgent, require_langgraph

    require_langgraph()
    return LangGraphAgent(flow, backend, router_backend=router, sampling=sampling, spec=spec)


def _backend(name: str, model: str | None, options: dict[str, Any]) -> Backend:
    if name == "local" and model is None:
        model = "smollm2-135m"
    return get_backend(name, **({"model": model} if model else {}), **options)


def _sampling(opts: dict[str, Any]) -> Sampling | None:
    given = {k: opts[k] for k in _SAMPLING_KEYS if opts.get(k) is not None}
    return Sampling(**{"temperature": 0.7, "max_tokens": 256} | given) if given else None
