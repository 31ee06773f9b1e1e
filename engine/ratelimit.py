"""Client-side rate limiting: requests per minute and tokens per minute, for asyncio code.

Two token buckets refilled continuously. A bucket holds at most one second's worth of its
budget (at least one request), so a run starts smoothly instead of bursting a whole minute's
allowance and then tripping the provider's own limiter.
"""

from __future__ import annotations

import asyncio
import time


class _Bucket:
    def __init__(self, per_minute: float):
        self.rate = per_minute / 60.0
        self.capacity = max(1.0, self.rate)
        self.level = self.capacity
        self.stamp = time.monotonic()

    def _refill(self) -> None:
        t = time.monotonic()
        self.level = min(self.capacity, self.level + (t - self.stamp) * self.rate)
        self.stamp = t

    def wait_for(self, amount: float) -> float:
        """Seconds until `amount` is available (0 when it is now)."""
        self._refill()
        amount = min(amount, self.capacity)  # a request bigger than the bucket waits for a full one
        return 0.0 if self.level >= amount else (amount - self.level) / self.rate

    def take(self, amount: float) -> None:
        self.level -= min(amount, self.capacity)


class RateLimiter:
    """`await limiter.acquire(tokens)` before each call; None limits mean unlimited."""

    def __init__(self, requests_per_minute: float | None = None, tokens_per_minute: float | None = None):
        self.requests = _Bucket(requests_per_minute) if requests_per_minute else None
        self.tokens = _Bucket(tokens_per_minute) if tokens_per_minute else None
        self._lock = asyncio.Lock()

    @property
    def unlimited(self) -> bool:
        return self.requests is None and self.tokens is None

    async def acquire(self, tokens: int = 0) -> None:
        if self.unlimited:
            return
        async with self._lock:  # first come, first served
            while True:
                wait = max(
                    self.requests.wait_for(1) if self.requests else 0.0,
                    self.tokens.wait_for(tokens) if self.tokens and tokens else 0.0,
                )
                if wait <= 0:
                    break
                await asyncio.sleep(wait)
            if self.requests:
                self.requests.take(1)
            if self.tokens and tokens:
                self.tokens.take(tokens)

    def record(self, extra_tokens: int) -> None:
        """Charge tokens learned after the call (actual minus estimated); may go negative = debt."""
        if self.tokens and extra_tokens:
            self.tokens._refill()
            self.tokens.level -= extra_tokens
