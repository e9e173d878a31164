"""Retry schedule for failed jobs: exponential backoff with jitter, honouring Retry-After."""

from __future__ import annotations

import random

import msgspec


class RetryPolicy(msgspec.Struct, frozen=True, kw_only=True):
    max_attempts: int = 8
    base_seconds: float = 1.0
    max_seconds: float = 300.0

    def delay(self, attempt: int, retry_after: float | None = None, rng: random.Random | None = None) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based).

        Equal jitter (uniform between half and all of the exponential step) spreads a burst of
        failures so they do not hammer a recovering backend in lockstep. A peer's Retry-After
        is a floor, still capped by ``max_seconds``.
        """
        step = min(self.max_seconds, self.base_seconds * (2 ** max(0, attempt - 1)))
        draw = (rng or random).uniform(step / 2, step)
        if retry_after is not None:
            draw = max(draw, retry_after)
        return min(draw, self.max_seconds)

    def exhausted(self, attempts: int, max_attempts: int | None = None) -> bool:
        return attempts >= (max_attempts or self.max_attempts)
