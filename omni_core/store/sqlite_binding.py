"""Parameter binding for Python's ``sqlite3``: ``None`` and ``bytes`` without the slow path.

``sqlite3`` binds ``int``, ``float`` and ``str`` parameters directly. Every other value,
``None`` and ``bytes`` included, first goes through its adaptation protocol (PEP 246): a
registry lookup, which misses, then ``__adapt__`` looked up on ``PrepareProtocol``, a type
object, whose failed lookup builds and clears an ``AttributeError`` with a formatted message,
then ``__conform__`` on the value. The hub binds many of both (nullable columns, message bodies
and trace details), and py-spy on the SQLite writer showed ~12% of its transaction time in that
adaptation (``python -m bench.writer_pages --sync OFF``: 74-80 -> 69-70 µs per webhook with
identity adapters). A registered adapter turns the miss into one dict hit and one call that
returns the value unchanged, so what SQLite receives is exactly what it received before.
"""

from __future__ import annotations

import sqlite3
from typing import Any

#: The values given a fast path: each is returned as it is, so SQLite still binds ``None`` as
#: NULL and ``bytes`` as a BLOB.
FAST_TYPES: tuple[type[Any], ...] = (type(None), bytes)


def _same(value: Any) -> Any:
    return value


def install() -> None:
    """Register identity adapters for :data:`FAST_TYPES`, leaving any adapter already registered.

    Adapters are process-wide in ``sqlite3``; an application that registered its own adapter for
    one of these types keeps it.
    """
    for kind in FAST_TYPES:
        if (kind, sqlite3.PrepareProtocol) not in sqlite3.adapters:
            # bytes(b) returns b itself for an exact bytes object: a call without Python frames.
            sqlite3.register_adapter(kind, bytes if kind is bytes else _same)
