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
    __slots__ = ("burst", "rate", "tokens", "updated")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate = rate
        self.burst = max(1, burst)
        self.tokens = float(self.burst)
        self.updated = now

    def _refill(self, now: float) -> None:
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now

    def wait(self, now: float) -> float:
        """Seconds until a token is available (0: available now). Does not take it."""
        self._refill(now)
        return 0.0 if self.tokens >= 1 else (1 - self.tokens) / self.rate

    def take(self) -> None:
        self.tokens -= 1


class Pacer:
    def __init__(self) -> None:
        self._buckets: dict[tuple[str, ...], TokenBucket] = {}
        self._paused: dict[tuple[str, ...], float] = {}
        self._deferrals: dict[str, int] = {}

    def _bucket(self, key: tuple[str, ...], rate: float, burst: int, now: float) -> TokenBucket | None:
        if rate <= 0:
            return None
        bucket = self._buckets.get(key)
        if bucket is None or bucket.rate != rate or bucket.burst != max(1, burst):
            bucket = self._buckets[key] = TokenBucket(rate, burst, now)
        return bucket

    def reserve(self, instance_id: str, chat_id: str, limits: PaceLimits, now: float | None = None) -> float:
        """0 and a send slot taken, or the seconds to wait before trying again."""
        now = time.monotonic() if now is None else now
        instance_key, chat_key = (instance_id,), (instance_id, chat_id)
        paused = max(self._paused.get(instance_key, 0.0), self._paused.get(chat_key, 0.0))
        if paused > now:
            return paused - now
        chat = self._bucket(chat_key, limits.per_chat_per_second, limits.per_chat_burst, now)
        account = self._bucket(instance_key, limits.per_instance_per_second, limits.per_instance_burst, now)
        wait = max(chat.wait(now) if chat else 0.0, account.wait(now) if account else 0.0)
        if wait > 0:
            return wait
        for bucket in (chat, account):
            if bucket is not None:
                bucket.take()
        return 0.0

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
