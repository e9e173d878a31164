"""Time-sortable identifiers for hub objects (``msg_``, ``job_``, ``ten_`` ... + ULID)."""

from __future__ import annotations

from ulid import ULID


def new_id(prefix: str) -> str:
    """Return ``prefix_`` followed by a fresh ULID: unique and sortable by creation time."""
    return f"{prefix}_{ULID()}"
