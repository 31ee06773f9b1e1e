"""`subterra serve` and `subterra chat`: run a compiled model behind an API, or talk to any agent.

    subterra serve MODEL [--host 127.0.0.1] [--port 8000] [--engine transformers|vllm] [--name NAME]
                         [--api-key KEY | SUBTERRA_API_KEY=KEY] [--allow-host NAME ...]
    subterra chat AGENT [--temperature T] [--max-tokens N] [--seed S] [--base-url URL] [--router B[:M]]
    subterra chat --compare AGENT_A AGENT_B

AGENT is compiled:DIR, in-context:FLOW[@backend[:model]], orchestrator:FLOW[@backend[:model]] or
langgraph:FLOW[@backend[:model]]. In a terminal, chat reads a message per prompt; with piped
standard input it reads one user message per line. `/reset` starts over, `/quit` ends.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any, TextIO

import click

from engine.agents import load_agent
from engine.agents.base import Agent, AgentReply, AgentSession
from engine.backends.base import Message
from engine.errors import ServingError
from engine.hosts import is_loopback

ENGINES = ("transformers", "vllm")
LABELS = ("A", "B")


def register(cli: click.Group) -> None:
    cli.add_command(serve_cmd)
    cli.add_command(chat_cmd)


# -- serve -----------------------------------------------------------------------------------------
@click.command("serve")
@click.argument("model", metavar="MODEL")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind (loopback keeps it private).")
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True)
@click.option("--engine", type=click.Choice(ENGINES), default="transformers", show_default=True,
              help="vllm: a managed vLLM server (needs `make vllm-env`); transformers: the built-in server.")
@click.option("--name", "served_name", default=None, help="Model name clients pass (default: the directory name).")
@click.option("--max-model-len", type=click.IntRange(min=64), default=2048, show_default=True,
              help="vllm only: the longest prompt + reply it accepts.")
@click.option("--api-key", envvar="SUBTERRA_API_KEY", default=None,
              help="Require `Authorization: Bearer KEY` on every request (env: SUBTERRA_API_KEY).")
@click.option("--allow-host", "allow_hosts", multiple=True, metavar="NAME",
              help="Accept this Host header besides loopback names and the bound address (repeatable).")
def serve_cmd(model: str, host: str, port: int, engine: str, served_name: str | None, max_model_len: int,
              api_key: str | None, allow_hosts: tuple[str, ...]) -> None:
    """Serve MODEL (a compiled model directory, or smollm2-135m) on an OpenAI-compatible API."""
    from engine.base_model import resolve_base_model

    path = resolve_base_model(model)
    if not (Path(path) / "config.json").is_file():
        raise ServingError(f"{model} is not a model directory (no config.json); give the output directory of "
                           "`subterra compile`, or smollm2-135m")
    warn_if_public(host, api_key)
    if engine == "vllm":
        _serve_vllm(path, host, port, served_name, max_model_len, api_key, allow_hosts)
        return
    from engine.serve.server import default_served_name, serve

    name = served_name or default_served_name(path)
    click.echo(f"serving {name} at http://{host}:{port}/v1 (transformers); Ctrl-C stops", err=True)
    serve(path, host=host, port=port, served_name=name, api_key=api_key, allow_hosts=allow_hosts)


def warn_if_public(host: str, api_key: str | None = None) -> None:
    if not is_loopback(host):
        auth = "anyone who has the API key" if api_key else "with no authentication (set --api-key)"
        click.echo(f"warning: binding {host} exposes the model to every machine that can reach this one, {auth}; "
                   "use --host 127.0.0.1 unless you mean to", err=True)


def _serve_vllm(path: str, host: str, port: int, served_name: str | None, max_model_len: int,
                api_key: str | None = None, allow_hosts: tuple[str, ...] = ()) -> None:
    """Run a managed vLLM until Ctrl-C or SIGTERM (at any moment, even while it starts), then stop it: exit 0.

    The signals only set an event; every wait here watches it, so a stop never lands as an exception in
    the middle of starting or stopping the child (which used to end in click's "aborted", exit 130).
    """
    from engine.serve.vllm import VLLMServer

    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    srv = None
    try:
        srv = VLLMServer(path, host=host, port=port, served_name=served_name, max_model_len=max_model_len,
                         api_key=api_key, allow_hosts=allow_hosts, stop_requested=stop)
        click.echo(f"starting vLLM on {path} (log: {srv.log_path}); the first start takes a minute or two",
                   err=True)
        srv.start()
        if not stop.is_set():
            click.echo(f"serving {srv.served_name} at {srv.base_url} (vllm); Ctrl-C stops", err=True)
        assert srv.proc is not None
        while not stop.wait(0.5):
            code = srv.proc.poll()
            if code is not None:
                raise ServingError(f"vLLM stopped (exit code {code}); its log ({srv.log_path}) ends with:\n"
                                   f"{srv.log_tail()}")
        click.echo("stopping vLLM", err=True)
    finally:
        if srv is not None:
            srv.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# -- chat ------------------------------------------------------------------------------------------
@click.command("chat")
@click.argument("agents", nargs=-1, required=True, metavar="AGENT [AGENT_B]")
@click.option("--compare", is_flag=True, help="Run two agents on the same user messages, side by side.")
@click.option("--temperature", type=click.FloatRange(min=0), default=None, help="Sampling temperature (0 = greedy).")
@click.option("--max-tokens", type=click.IntRange(min=1), default=None, help="Longest reply, in tokens.")
@click.option("--seed", type=int, default=None, help="Sampling seed.")
@click.option("--base-url", default=None,
              help="compiled: talk to this OpenAI-compatible server (subterra serve / vLLM) instead of loading "
                   "the model here; other agents: the backend's endpoint.")
@click.option("--router", default=None,
              help="Orchestrators: backend[:model] of the edge classifier (default: the agent's).")
@click.option("--greet/--no-greet", default=None,
              help="Let the agent open with its greeting before you type, like a support widget (default: in a "
                   "terminal yes, with piped input no).")
def chat_cmd(agents: tuple[str, ...], compare: bool, temperature: float | None, max_tokens: int | None,
             seed: int | None, base_url: str | None, router: str | None, greet: bool | None = None) -> None:
    """Chat with AGENT in the terminal (or over piped stdin, one message per line)."""
    if compare and len(agents) != 2:
        raise click.UsageError("--compare takes exactly two agents: subterra chat --compare AGENT_A AGENT_B")
    if not compare and len(agents) != 1:
        raise click.UsageError("give one agent, or --compare with two")
    opts: dict[str, Any] = {"temperature": temperature, "max_tokens": max_tokens, "seed": seed, "router": router}
    built = [load_agent(spec, **_agent_opts(spec, opts, base_url)) for spec in agents]
    interactive = sys.stdin.isatty()
    greet = interactive if greet is None else greet
    asyncio.run(ChatLoop(built, sys.stdin, interactive=interactive, greet=greet).run())


def _agent_opts(spec: str, opts: dict[str, Any], base_url: str | None) -> dict[str, Any]:
    out = {k: v for k, v in opts.items() if v is not None}
    if base_url:
        if spec.startswith("compiled:"):
            out["base_url"] = base_url
        else:
            out["backend_options"] = {"base_url": base_url}
    if spec.startswith("compiled:"):
        out.pop("router", None)
    return out


class ChatLoop:
    """Reads user messages, runs each agent's session on its own history, prints replies and costs."""

    def __init__(self, agents: list[Agent], stdin: TextIO, interactive: bool, greet: bool = False):
        self.agents = agents
        self.stdin = stdin
        self.interactive = interactive
        self.greet = greet  # the agent speaks first, before the person has typed (after /reset too)
        self.reset()

    def reset(self) -> None:
        self.sessions: list[AgentSession] = [a.session() for a in self.agents]
        self.histories: list[list[Message]] = [[] for _ in self.agents]

    async def run(self) -> None:
        if len(self.agents) > 1:  # columns are labelled A, B: specs are too long for a header
            for label, a in zip(LABELS, self.agents, strict=False):
                click.echo(f"{label}: {a.spec}")
        if self.interactive:
            names = " vs ".join(a.spec for a in self.agents)
            click.echo(f"chatting with {names}; /reset starts over, /quit ends", err=True)
        try:
            await self._greeting()
            while True:
                line = await self._read()
                if line is None or line.strip() == "/quit":
                    break
                text = line.strip()
                if not text:
                    continue
                if text == "/reset":
                    self.reset()
                    click.echo("(conversation reset)")
                    await self._greeting()
                    continue
                if not self.interactive:
                    click.echo(f"you> {text}")
                await (self._turn(text) if len(self.agents) == 1 else self._compare_turn(text))
        finally:
            for a in self.agents:
                await a.aclose()

    async def _greeting(self) -> None:
        """The agent's opening message on an empty history (a compiled model greets as it was trained to)."""
        if not self.greet:
            return
        try:
            replies = await asyncio.gather(*(s.reply([]) for s in self.sessions))
        except Exception as e:  # noqa: BLE001 - an agent that cannot open (no system prompt) still chats
            click.echo(f"(the agent could not open the conversation: {e}; type the first message)", err=True)
            return
        for h, r in zip(self.histories, replies, strict=True):
            h.append(Message(role="assistant", content=r.text))
        if len(self.agents) == 1:
            click.echo(f"agent> {replies[0].text}")
            click.echo(turn_stats(self.agents[0], replies[0]))
        else:
            click.echo(side_by_side([f"[{lb}]" for lb in LABELS[: len(self.agents)]], [r.text for r in replies]))

    async def _read(self) -> str | None:
        if self.interactive:
            try:
                return await asyncio.to_thread(input, "you> ")
            except EOFError:
                return None
        line = await asyncio.to_thread(self.stdin.readline)
        return line or None

    async def _turn(self, text: str) -> None:
        history = self.histories[0]
        history.append(Message(role="user", content=text))
        click.echo("agent> ", nl=False)
        reply: AgentReply | None = None
        async for d in self.sessions[0].stream(history):
            if d.delta:
                click.echo(d.delta, nl=False)
            if d.reply is not None:
                reply = d.reply
        if reply is None:
            raise ServingError(f"{self.agents[0].spec} ended its reply without a result")
        click.echo()
        history.append(Message(role="assistant", content=reply.text))
        click.echo(turn_stats(self.agents[0], reply))
        if reply.done:
            click.echo("(the agent closed the conversation; /reset to start over)")

    async def _compare_turn(self, text: str) -> None:
        for h in self.histories:
            h.append(Message(role="user", content=text))
        replies = await asyncio.gather(*(s.reply(list(h)) for s, h in zip(self.sessions, self.histories, strict=True)))
        for h, r in zip(self.histories, replies, strict=True):
            h.append(Message(role="assistant", content=r.text))
        labels = LABELS[: len(self.agents)]
        click.echo(side_by_side([f"[{lb}]" for lb in labels], [r.text for r in replies]))
        for lb, a, r in zip(labels, self.agents, replies, strict=True):
            click.echo(f"[{lb}] {turn_stats(a, r).strip()}")


def turn_stats(agent: Agent, reply: AgentReply) -> str:
    """`  ↳ 412 tokens in · 38 out · 1 call · 0.84 s (first token 0.21 s) · $0.000000`"""
    u = reply.usage
    first = f" (first token {reply.ttft_s:.2f} s)" if reply.ttft_s is not None else ""
    node = f" · at {reply.node_id}" if reply.node_id else ""
    return (f"  ↳ {u.input_tokens + u.cache_read_tokens + u.cache_write_tokens} tokens in · {u.output_tokens} out · "
            f"{reply.calls} call{'s' if reply.calls != 1 else ''} · {reply.latency_s:.2f} s{first} · "
            f"{_cost(agent, reply)}{node}")


def _cost(agent: Agent, reply: AgentReply) -> str:
    from engine.backends.pricing import cost

    backend = getattr(agent, "backend", None)
    c = cost(reply.usage, agent.model, getattr(backend, "name", ""))
    return f"${c.usd:.6f}" if c.known else f"cost unknown for {agent.model}"


def side_by_side(titles: list[str], texts: list[str], width: int | None = None) -> str:
    """Two (or more) texts in columns, wrapped to the terminal width."""
    total = width or shutil.get_terminal_size((120, 24)).columns
    col = max(20, (total - 3 * (len(texts) - 1)) // len(texts))
    wrapped = [[t[:col] for t in [title, "-" * min(col, len(title))]] +
               [ln for para in text.splitlines() or [""] for ln in (textwrap.wrap(para, col) or [""])]
               for title, text in zip(titles, texts, strict=True)]
    rows = max(len(w) for w in wrapped)
    lines = []
    for i in range(rows):
        cells = [(w[i] if i < len(w) else "").ljust(col) for w in wrapped]
        lines.append(" | ".join(cells).rstrip())
    return "\n".join(lines)
