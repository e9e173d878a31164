"""Time-sortable identifiers for hub objects (``msg_``, ``job_``, ``ten_`` ... + ULID).

Monotonic ULIDs: the first 48 bits are the millisecond, the other 80 random; within one
millisecond each new id increments the previous one, so ids made by this process sort in
creation order (history pagination relies on it).
"""

from __future__ import annotations

import os
import time

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
#: Every 10-bit value as its two Crockford characters: 13 lookups encode a whole ULID.
_PAIRS = [a + b for a in _CROCKFORD for b in _CROCKFORD]
_RANDOM_MASK = (1 << 80) - 1
_last_ms = 0
_last_random = 0


def _encode(value: int) -> str:
    """26 Crockford base32 characters for a 128-bit value (the top character carries 3 bits)."""
    pairs = _PAIRS
    return "".join([pairs[(value >> shift) & 1023] for shift in range(120, -10, -10)])


def new_ulid() -> str:
    global _last_ms, _last_random
    ms = time.time_ns() // 1_000_000
    if ms <= _last_ms:
        # Same millisecond (or the clock stepped back): continue from the previous id.
        ms = _last_ms
        rand = (_last_random + 1) & _RANDOM_MASK
        if rand == 0:  # 2**80 ids in one millisecond: borrow the next one
            ms += 1
    else:
        rand = int.from_bytes(os.urandom(10), "big")
    _last_ms, _last_random = ms, rand
    return _encode((ms << 80) | rand)


def new_id(prefix: str) -> str:
    """Return ``prefix_`` followed by a fresh ULID: unique and sortable by creation time."""
    return f"{prefix}_{new_ulid()}"


def id_time(hub_id: str) -> float | None:
    """When a hub id was made (epoch seconds), from its ULID's first 10 characters; None if not an id."""
    _, _, ulid = hub_id.rpartition("_")
    if len(ulid) != 26:
        return None
    ms = 0
    for char in ulid[:10]:
        index = _CROCKFORD.find(char)
        if index < 0:
            return None
        ms = ms * 32 + index
    return ms / 1000
