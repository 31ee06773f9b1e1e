"""Our own retry loop around an LLM call, on top of whatever the SDK already retries.

Providers shed load with 429 / 529 and a `retry-after` header; a long generation run must ride
those out instead of failing slots. Each backend classifies its own exceptions into
`Retryable` (with the server's suggested wait, if any) or not; this module only waits and
tries again with exponential backoff and jitter, honouring `retry-after` when it is longer.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from engine.errors import BackendResponseError, BackendUnavailableError, ContextLengthError

T = TypeVar("T")


class RetryPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid")
    attempts: int = Field(5, ge=1, description="Tries in all, the first included.")
    base_delay: float = Field(0.5, ge=0, description="Seconds before the first retry; doubles each time.")
    max_delay: float = Field(30.0, ge=0, description="Cap on one wait (a longer retry-after is capped too).")
    jitter: float = Field(0.25, ge=0, le=1, description="Random +/- fraction added to each wait.")


@dataclass
class Retryable:
    """A failure worth another try; `retry_after` is the server's hint in seconds."""

    reason: str
    retry_after: float | None = None
    unreachable: bool = False  # the server could not be reached at all (vs. answered badly)


Classifier = Callable[[BaseException], Retryable | None]


async def with_retries(
    call: Callable[[], Awaitable[T]],
    classify: Classifier,
    policy: RetryPolicy,
    on_retry: Callable[[int, Retryable, float], None] | None = None,
    translate: Callable[[BaseException], BaseException | None] | None = None,
) -> T:
    """Run `call` until it succeeds, a failure is not retryable, or the attempts run out.

    The last retryable failure is raised as a BackendError naming its reason; a
    non-retryable one goes through `translate` (SDK error -> SubterraError with a message that
    says what to do) and is raised as it is when that returns None.
    """
    for attempt in range(1, policy.attempts + 1):
        try:
            return await call()
        except asyncio.CancelledError:
            raise
        except BaseException as e:  # noqa: BLE001 - classified below
            r = classify(e)
            if r is None:
                mapped = translate(e) if translate else None
                if mapped is not None:
                    raise mapped from e
                raise
            if attempt == policy.attempts:
                cls = BackendUnavailableError if r.unreachable else BackendResponseError
                raise cls(f"{r.reason} (gave up after {policy.attempts} tries)") from e
            wait = backoff(attempt, policy, r.retry_after)
            if on_retry:
                on_retry(attempt, r, wait)
            await asyncio.sleep(wait)
    raise AssertionError("unreachable")


def backoff(attempt: int, policy: RetryPolicy, retry_after: float | None = None) -> float:
    """Seconds to wait after failed try number `attempt` (1-based)."""
    wait = min(policy.max_delay, policy.base_delay * 2 ** (attempt - 1))
    wait *= 1 + random.uniform(-policy.jitter, policy.jitter)
    if retry_after is not None:
        wait = max(wait, min(retry_after, policy.max_delay))
    return max(0.0, wait)


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a `retry-after` (or `retry-after-ms`) header value; HTTP dates are ignored."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


# how servers say a prompt is longer than the model's context: vLLM and subterra serve ("maximum context
# length"), OpenAI (code context_length_exceeded), Anthropic ("prompt is too long")
CONTEXT_OVERFLOW = ("maximum context length", "context_length_exceeded", "prompt is too long")


class SDKErrors:
    """`check()` and `translate()` for backends built on an official SDK (anthropic, openai): both SDKs
    raise `APIStatusError` / `APIConnectionError`, so one mapping to messages that say what to do serves both."""

    service: str  # "the Anthropic API", used in messages
    key_env: str  # environment variable that holds the key
    base_url: str | None
    model: str
    client: Any
    load_sdk: Callable[[], Any]

    async def check(self) -> None:
        """Fail fast (BackendUnavailableError) when the endpoint cannot be reached or refuses the key."""
        sdk = self.load_sdk()
        try:
            await self.client.with_options(max_retries=0, timeout=10.0).models.list()
        except sdk.APIStatusError as e:
            mapped = self.translate(e)
            if e.status_code in (401, 403) and mapped is not None:
                raise mapped from None
            # servers without a models endpoint still answer: reachable is all we check here
        except sdk.APIConnectionError as e:
            raise BackendUnavailableError(
                f"cannot reach {self.service} at {self.base_url or 'the default endpoint'} ({e.__cause__ or e}); "
                "check --base-url and that the server is running"
            ) from None

    def classify(self, e: BaseException) -> Retryable | None:
        """Which failures are worth another try (rate limits, overload, 5xx, timeouts, garbage)."""
        sdk = self.load_sdk()
        if isinstance(e, sdk.APIStatusError):
            status = e.status_code
            if status in (408, 409, 429) or status >= 500:
                headers = e.response.headers
                ms = parse_retry_after(headers.get("retry-after-ms"))
                wait = ms / 1000 if ms is not None else parse_retry_after(headers.get("retry-after"))
                return Retryable(f"{self.service} answered {status} ({self.status_message(e)})", wait)
            return None
        if isinstance(e, sdk.APITimeoutError):
            return Retryable(f"{self.service} timed out")
        if isinstance(e, sdk.APIConnectionError):
            return Retryable(f"cannot reach {self.service} ({e.__cause__ or e})", unreachable=True)
        if isinstance(e, json.JSONDecodeError | sdk.APIResponseValidationError):
            return Retryable(f"{self.service} sent a malformed reply")
        if isinstance(e, BackendResponseError) and not isinstance(e, ContextLengthError):
            return Retryable(str(e))
        return None

    def status_message(self, e: Any) -> str:
        """The server's own words from an `APIStatusError`, short."""
        return str(e.message)[:200]

    def translate(self, e: BaseException) -> BaseException | None:
        """An SDK error that retrying will not fix, as a message that says what to do."""
        if not isinstance(e, self.load_sdk().APIStatusError):
            return None
        if e.status_code in (401, 403):
            return BackendUnavailableError(f"{self.service} refused the key ({e.status_code}); check {self.key_env}")
        if e.status_code == 404:
            return BackendUnavailableError(f"{self.service} does not know model '{self.model}' (404); check --model")
        said = str(e.message)
        if e.status_code in (400, 413) and any(s in said.lower() for s in CONTEXT_OVERFLOW):
            return ContextLengthError(f"the prompt does not fit {self.model or 'the model'}'s context window "
                                      f"({e.status_code}: {said[:200]}); shorten the conversation")
        return BackendResponseError(f"{self.service} rejected the request ({e.status_code}: {said[:200]})")
