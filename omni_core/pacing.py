"""Send pacing: per-chat and per-instance rates, and pauses after a platform says "too fast".

Platforms throttle by chat (Slack ~1 message/s per channel, Telegram ~1/s per chat, WhatsApp
Cloud's pair rate) and by account (Discord 50 requests/s per bot, Telegram 30/s, WhatsApp Cloud
80/s per number). A message that would exceed a limit waits in the queue instead of failing;
a 429 / Retry-After pauses only the instance or chat it concerns.

Token buckets live in each hub process: with several replicas the effective limit per instance
is up to replicas x rate, so configure per-instance rates with that in mind.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, Literal

import msgspec

Scope = Literal["instance", "chat"]


class PaceLimits(msgspec.Struct, frozen=True, kw_only=True):
    """Sustained messages per second and burst, per chat and per instance; 0 means no limit."""

    per_chat_per_second: float = 0.0
    per_chat_burst: int = 1
    per_instance_per_second: float = 0.0
    per_instance_burst: int = 1


#: Defaults from the platforms' published (or widely observed) limits.
CHANNEL_DEFAULTS: dict[str, PaceLimits] = {
    "whatsapp": PaceLimits(
        per_chat_per_second=1.0, per_chat_burst=3, per_instance_per_second=20.0, per_instance_burst=40
    ),
    "whatsapp_cloud": PaceLimits(
        per_chat_per_second=1 / 6, per_chat_burst=2, per_instance_per_second=80.0, per_instance_burst=80
    ),
    "slack": PaceLimits(per_chat_per_second=1.0, per_chat_burst=3, per_instance_per_second=10.0, per_instance_burst=20),
    "discord": PaceLimits(
        per_chat_per_second=1.0, per_chat_burst=5, per_instance_per_second=50.0, per_instance_burst=50
    ),
    "telegram": PaceLimits(
        per_chat_per_second=1.0, per_chat_burst=1, per_instance_per_second=30.0, per_instance_burst=30
    ),
}

#: After this many rate-limit deferrals in a row a job's next 429 counts as a failed attempt, so
#: a platform that never stops refusing cannot keep a message waiting forever.
MAX_RATE_LIMIT_DEFERRALS = 20


def limits_for(channel: str, config: Mapping[str, Any]) -> PaceLimits:
    """The channel's defaults, overridden by the instance config's ``pacing`` object."""
    base = CHANNEL_DEFAULTS.get(channel, PaceLimits())
    override = config.get("pacing")
    if not isinstance(override, Mapping):
        return base
    merged = {**msgspec.structs.asdict(base), **{k: v for k, v in override.items() if k in base.__struct_fields__}}
    try:
        return msgspec.convert(merged, PaceLimits)
    except msgspec.ValidationError:
        return base


class TokenBucket:
    """A token bucket that lends: a send that finds no token takes one on credit and learns when
    its turn comes, so N waiting sends are spread over N/rate seconds instead of all retrying
    together each time a single token frees up."""

    __slots__ = ("burst", "rate", "tokens", "updated")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate = rate
        self.burst = max(1, burst)
        self.tokens = float(self.burst)
        self.updated = now

    def take(self, now: float) -> float:
        """Take a token; seconds until it is really available (0: now)."""
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        self.tokens -= 1
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate


class Pacer:
    def __init__(self) -> None:
        self._buckets: dict[tuple[str, ...], TokenBucket] = {}
        self._paused: dict[tuple[str, ...], float] = {}
        self._deferrals: dict[str, int] = {}
        #: job id -> when its reserved turn comes (it already holds its tokens).
        self._granted: dict[str, float] = {}

    def _bucket(self, key: tuple[str, ...], rate: float, burst: int, now: float) -> TokenBucket | None:
        if rate <= 0:
            return None
        bucket = self._buckets.get(key)
        if bucket is None or bucket.rate != rate or bucket.burst != max(1, burst):
            bucket = self._buckets[key] = TokenBucket(rate, burst, now)
        return bucket

    def reserve(
        self, instance_id: str, chat_id: str, limits: PaceLimits, now: float | None = None, job_id: str | None = None
    ) -> float:
        """0 when the send may go now, else the seconds until its turn (the turn is kept for ``job_id``)."""
        now = time.monotonic() if now is None else now
        instance_key, chat_key = (instance_id,), (instance_id, chat_id)
        paused = max(self._paused.get(instance_key, 0.0), self._paused.get(chat_key, 0.0))
        if paused > now:
            return paused - now
        if job_id is not None and job_id in self._granted:
            ready = self._granted[job_id]
            if ready <= now + 0.001:
                del self._granted[job_id]
                return 0.0
            return ready - now
        chat = self._bucket(chat_key, limits.per_chat_per_second, limits.per_chat_burst, now)
        account = self._bucket(instance_key, limits.per_instance_per_second, limits.per_instance_burst, now)
        wait = max(chat.take(now) if chat else 0.0, account.take(now) if account else 0.0)
        if wait > 0 and job_id is not None:
            self._granted[job_id] = now + wait
        return wait

    def pause(self, instance_id: str, chat_id: str, scope: Scope, seconds: float, now: float | None = None) -> None:
        """Hold sends to the instance (or only that chat) for ``seconds``, as the platform asked."""
        now = time.monotonic() if now is None else now
        key = (instance_id,) if scope == "instance" else (instance_id, chat_id)
        self._paused[key] = max(self._paused.get(key, 0.0), now + seconds)

    def note_deferral(self, job_id: str) -> int:
        count = self._deferrals.get(job_id, 0) + 1
        self._deferrals[job_id] = count
        return count

    def forget(self, job_id: str) -> None:
        self._deferrals.pop(job_id, None)
        self._granted.pop(job_id, None)
