"""The `local` backend: a transformers causal LM on this machine (CPU or GPU).

`model` is a local directory, a hub id, or `smollm2-135m` (the bundled model). A model is loaded
once per (path, device, dtype) and shared by every backend object that names it. Generation runs
in a worker thread, never on the event loop; streaming hands tokens over as they are decoded.

Chat turns share almost all of their prompt with the previous turn (the history only grows), so
we keep the KV cache of the last few generations and reuse the longest common token prefix:
a reply after a 10-turn history then prefills only the new user message, not the whole history.
`Usage.input_tokens` still counts the whole prompt (what the model conditioned on).
"""

from __future__ import annotations

import asyncio
import functools
import os
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.backends.base import ChatRequest, ChatResult, Message, StreamEvent, Usage, register
from engine.errors import BackendResponseError, BackendUnavailableError, ContextLengthError

DEFAULT_MODEL = "smollm2-135m"
_PREFIX_SLOTS = 4  # conversations whose KV cache we keep per model
_MIN_PREFIX = 8  # shorter common prefixes are not worth a cache crop


def _cache_kw() -> str:
    # transformers renamed generate's `past_key_values` to `cache` (5.x); older releases know only the first
    from transformers.generation.utils import GenerateDecoderOnlyOutput

    return "cache" if "cache" in GenerateDecoderOnlyOutput.__dataclass_fields__ else "past_key_values"


@register("local", local=True)
class LocalBackend:
    """Backend protocol on a local transformers model (see module docstring)."""

    name = "local"

    def __init__(self, model: str = DEFAULT_MODEL, device: str = "auto", dtype: str = "auto",
                 prefix_cache: bool = True, threads: int | None = None, **_: Any):
        self.model = model
        self.device = device
        self.dtype = dtype
        self.prefix_cache = prefix_cache
        # torch threads for this process (SUBTERRA_TORCH_THREADS): on a CPU shared with other work, fewer
        # threads than cores avoids spin-waiting threads (6x faster prefill measured here at 1 vs 2)
        env_threads = os.environ.get("SUBTERRA_TORCH_THREADS")
        self.threads = threads or (int(env_threads) if env_threads and env_threads.isdigit() else None)
        self.last_prefix_hit = 0  # tokens of the last prompt served from the KV cache (for benchmarks)
        self._running: set[threading.Event] = set()  # cancel flags of this backend's generations

    # -- protocol -------------------------------------------------------------------------------
    async def complete(self, request: ChatRequest) -> ChatResult:
        loaded = await asyncio.to_thread(self.loaded)
        cancel = threading.Event()
        self._running.add(cancel)
        try:
            return await asyncio.to_thread(self._generate, loaded, request, None, cancel)
        finally:
            cancel.set()  # the caller was cancelled (client gone, shutdown): stop at the next token
            self._running.discard(cancel)

    async def stream(self, request: ChatRequest) -> AsyncIterator[StreamEvent]:
        loaded = await asyncio.to_thread(self.loaded)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[str | ChatResult | BaseException] = asyncio.Queue()
        cancel = threading.Event()
        self._running.add(cancel)

        def push(item: str | ChatResult | BaseException) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, item)

        def work() -> None:
            try:
                push(self._generate(loaded, request, push, cancel))
            except BaseException as e:  # handed to the consumer, raised there
                push(e)

        worker = threading.Thread(target=work, name="subterra-local-generate", daemon=True)
        worker.start()
        try:
            while True:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise item
                if isinstance(item, ChatResult):
                    yield StreamEvent(result=item)
                    return
                if item:
                    yield StreamEvent(delta=item)
        finally:
            cancel.set()  # the consumer went away: stop generating at the next token
            self._running.discard(cancel)

    def cancel_all(self) -> None:
        """Stop every running generation at its next token (a server shutting down). Signal-handler safe."""
        for flag in list(self._running):
            flag.set()

    async def aclose(self) -> None:
        """Models stay cached for the process (one load serves every backend of the same model)."""

    # -- loading --------------------------------------------------------------------------------
    def loaded(self) -> _Loaded:
        return load_model(self.model, self.device, self.dtype, self.threads)

    def render_prompt(self, request: ChatRequest) -> list[int]:
        """Token ids of the chat-templated prompt, ending with the assistant header."""
        return _prompt_ids(self.loaded().tokenizer, request)

    def context_length(self) -> int:
        """The most tokens (prompt + reply) the model attends to."""
        config = self.loaded().model.config
        return int(getattr(config, "max_position_embeddings", None) or self.loaded().tokenizer.model_max_length)

    # -- generation (worker thread) -------------------------------------------------------------
    def _generate(self, loaded: _Loaded, request: ChatRequest, push: Any, cancel: threading.Event | None
                  ) -> ChatResult:
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList

        tok, model = loaded.tokenizer, loaded.model
        ids = _prompt_ids(tok, request)
        context = self.context_length()
        if len(ids) >= context:  # checked before generating, as vLLM does: past it the model reads garbage positions
            raise ContextLengthError(f"the prompt does not fit {self.model}'s context window: it takes {len(ids)} "
                                     f"tokens of {context}; shorten the conversation")
        s = request.sampling
        kwargs: dict[str, Any] = {"max_new_tokens": s.max_tokens, "pad_token_id": tok.pad_token_id,
                                  "return_dict_in_generate": True}
        if s.temperature > 0:
            kwargs.update(do_sample=True, temperature=s.temperature, top_p=s.top_p)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        if s.stop:
            kwargs.update(stop_strings=s.stop, tokenizer=tok)
        streamer = None
        if push is not None:
            streamer = _PushStreamer(tok, push)
            kwargs["streamer"] = streamer
        flag = cancel or threading.Event()
        lock = loaded.lock

        class _Turn(StoppingCriteria):
            """Between tokens: stop when cancelled; after a time slice, let a waiting request run (round robin)."""

            def __call__(self, input_ids: Any, scores: Any, **kw: Any) -> Any:
                lock.share_turn()
                return torch.full((input_ids.shape[0],), flag.is_set(), dtype=torch.bool, device=input_ids.device)

        kwargs["stopping_criteria"] = StoppingCriteriaList([_Turn()])

        t0 = time.perf_counter()
        with loaded.lock:  # one generation per model at a time; torch already uses every core
            if flag.is_set():  # the caller went away while waiting for its turn
                raise BackendResponseError("generation cancelled before it started")
            if s.seed is not None:
                torch.manual_seed(s.seed)
            cache, hit = loaded.take_prefix(ids) if self.prefix_cache else (None, 0)
            if cache is not None:
                kwargs[_CACHE_KW] = cache
            input_ids = torch.tensor([ids], device=model.device)  # (1, T)
            try:
                with torch.inference_mode():
                    out = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                                         **kwargs)
            except Exception as e:
                raise BackendResponseError(f"local model {self.model} failed to generate: {e}") from e
            seq = out.sequences[0].tolist()
            kept = getattr(out, _CACHE_KW, None)
            if self.prefix_cache and kept is not None:
                loaded.keep_prefix(seq, kept)
        self.last_prefix_hit = hit
        latency = time.perf_counter() - t0
        new = seq[len(ids):]
        text = tok.decode(new, skip_special_tokens=True)
        text, stopped = _cut_at_stop(text, s.stop)
        eos = set(_eos_ids(loaded))
        finish = "stop" if stopped or (new and new[-1] in eos) or (cancel is not None and cancel.is_set()) \
            else ("length" if len(new) >= s.max_tokens else "stop")
        return ChatResult(
            text=text.strip(), model=self.model, backend=self.name, latency_s=latency,
            ttft_s=streamer.ttft(t0) if streamer else None, finish_reason=finish,
            usage=Usage(input_tokens=len(ids), output_tokens=len(new)),
        )


# -- model cache ---------------------------------------------------------------------------------
@dataclass
class _Loaded:
    model: Any
    tokenizer: Any
    path: str
    lock: _FairLock = field(default_factory=lambda: _FairLock())
    prefixes: list[tuple[list[int], Any]] = field(default_factory=list)  # (token ids in cache, cache)

    def take_prefix(self, ids: list[int]) -> tuple[Any, int]:
        """The cached KV state sharing the longest prefix with `ids`, cropped to it (or None, 0)."""
        best, best_len = -1, 0
        for i, (cached, _) in enumerate(self.prefixes):
            n = _common_prefix(cached, ids)
            if n > best_len:
                best, best_len = i, n
        best_len = min(best_len, len(ids) - 1)  # generate needs at least one new token to process
        if best < 0 or best_len < _MIN_PREFIX:
            return None, 0
        _, cache = self.prefixes.pop(best)
        extra = cache.get_seq_length() - best_len
        if extra > 0:
            cache.crop(-extra)  # transformers 5: a negative count removes that many tokens from the end
        return cache, best_len

    def keep_prefix(self, seq: list[int], cache: Any) -> None:
        n = cache.get_seq_length()
        if not getattr(cache, "is_croppable", True):
            return
        self.prefixes.insert(0, (seq[:n], cache))
        del self.prefixes[_PREFIX_SLOTS:]


_MODELS: dict[tuple[str, str, str], _Loaded] = {}
_CACHE_KW = ""
_MODELS_LOCK = threading.Lock()


def load_model(model: str, device: str = "auto", dtype: str = "auto", threads: int | None = None) -> _Loaded:
    """Load (once per process) a causal LM and its tokenizer; `model` as for `LocalBackend`."""
    import torch

    from engine.base_model import resolve_base_model

    path = resolve_base_model(model)
    if Path(path).expanduser().is_dir():
        path = str(Path(path).expanduser().resolve())
    elif Path(path).expanduser().exists() or path.startswith((".", "/", "~")):
        raise BackendUnavailableError(f"model '{model}' is not a model directory; give a directory with "
                                      "config.json, a hub id, or smollm2-135m")
    dev = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    dt = _pick_dtype(dev) if dtype == "auto" else dtype
    key = (path, dev, dt)
    global _CACHE_KW
    _CACHE_KW = _CACHE_KW or _cache_kw()
    with _MODELS_LOCK:
        if key not in _MODELS:
            if threads:
                torch.set_num_threads(threads)
            _MODELS[key] = _load(path, dev, dt, model)
        return _MODELS[key]


def _load(path: str, device: str, dtype: str, name: str) -> _Loaded:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        tok = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype))
    except (OSError, ValueError) as e:  # missing files surface as either, depending on which is missing
        raise BackendUnavailableError(
            f"cannot load model '{name}' ({e.__class__.__name__}); give a local directory with config.json "
            "and weights, or smollm2-135m for the bundled model (no model hub is reachable offline)"
        ) from e
    if tok.chat_template is None:
        from engine.base_model import CHATML_TEMPLATE

        tok.chat_template = CHATML_TEMPLATE
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    model.to(device).eval()  # type: ignore[arg-type]  # transformers' stubs type .to() narrowly
    return _Loaded(model=model, tokenizer=tok, path=path)


def _pick_dtype(device: str) -> str:
    """bf16 on GPUs; on CPUs fp32 unless SUBTERRA_LOCAL_DTYPE says otherwise.

    Measured here (SmolLM2-135M, 290-token prompt, 1 thread): fp32 prefilled in 2.4 s, bf16 in 14 s;
    at batch 1 a model this small does not reach the bf16 kernels' sweet spot on this CPU.
    """
    return "bfloat16" if device.startswith("cuda") else os.environ.get("SUBTERRA_LOCAL_DTYPE", "float32")


# -- helpers -------------------------------------------------------------------------------------
def _prompt_ids(tok: Any, request: ChatRequest) -> list[int]:
    """The prompt's ids; message content is tokenized as text, never as control tokens (no forged turns)."""
    from engine.chat_template import TemplateError, encode_chat

    msgs: list[Message] = ([Message(role="system", content=request.system)] if request.system else [])
    msgs += request.messages
    try:
        return encode_chat(tok, [m.model_dump() for m in msgs], add_generation_prompt=True)[0]
    except TemplateError:
        raise BackendResponseError("this model's chat template does not print message content verbatim, so it "
                                   "cannot be served safely; use a model with a ChatML-like template") from None


class _FairLock:
    """A lock granted in arrival order, shared in time slices so one long generation never starves the others.

    The holder calls `share_turn()` between tokens: once it has held the lock for `slice_s` and another
    generation is waiting, it goes to the back of the queue (its RNG state saved and restored, so a
    seeded reply is the same whether or not it was interleaved).
    """

    def __init__(self, slice_s: float = 0.5) -> None:
        self._cond = threading.Condition()
        self._next = 0  # the ticket to hand out
        self._serving = 0  # the ticket allowed in
        self._since = 0.0
        self._abandoned: set[int] = set()
        self.slice_s = slice_s

    def acquire(self, timeout: float | None = None) -> bool:
        """Wait for this caller's turn (at most `timeout` seconds: then give the turn up and return False)."""
        with self._cond:
            ticket = self._next
            self._next += 1
            if not self._cond.wait_for(lambda: self._serving == ticket, timeout=timeout):
                self._abandoned.add(ticket)
                self._advance(0)
                return False
            self._since = time.monotonic()
            return True

    def release(self) -> None:
        with self._cond:
            self._advance(1)

    def _advance(self, by: int) -> None:
        self._serving += by
        while self._serving in self._abandoned:  # turns given up by callers that stopped waiting
            self._abandoned.discard(self._serving)
            self._serving += 1
        self._cond.notify_all()

    def __enter__(self) -> None:
        self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    def share_turn(self) -> None:
        with self._cond:
            waiting = self._next - self._serving - 1 - len(self._abandoned)
        if waiting <= 0 or time.monotonic() - self._since < self.slice_s:
            return
        import torch

        state = torch.get_rng_state()
        self.release()
        self.acquire()
        torch.set_rng_state(state)


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def _eos_ids(loaded: _Loaded) -> list[int]:
    eos = loaded.model.generation_config.eos_token_id
    if eos is None:
        eos = loaded.tokenizer.eos_token_id
    return list(eos) if isinstance(eos, list | tuple) else [eos]


def _cut_at_stop(text: str, stop: list[str] | None) -> tuple[str, bool]:
    """Drop a stop string and what follows (OpenAI semantics: the stop string is not returned)."""
    cut = min((i for i in (text.find(s) for s in stop or []) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


@functools.cache
def _push_streamer_class() -> type:
    from transformers import TextIteratorStreamer

    class PushStreamer(TextIteratorStreamer):
        """TextIteratorStreamer that hands each decoded piece to a callback (the event loop's queue)."""

        def __init__(self, tokenizer: Any, push: Any):
            super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
            self._push = push
            self.first_at: float | None = None

        def put(self, value: Any) -> None:
            # the first call carries the prompt; the next one is the first generated token. Text is
            # released at word boundaries, so time the token, not the text, for an honest TTFT.
            if not self.next_tokens_are_prompt and self.first_at is None:
                self.first_at = time.perf_counter()
            super().put(value)

        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            if text:
                self._push(text)

        def ttft(self, t0: float) -> float | None:
            return None if self.first_at is None else self.first_at - t0

    return PushStreamer


def _PushStreamer(tokenizer: Any, push: Any) -> Any:
    return _push_streamer_class()(tokenizer, push)
