"""Small statistics helpers (no numpy: the hub's venv is all the suite may assume)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence


def percentiles(samples: Sequence[float], points: Iterable[float]) -> dict[float, float]:
    """Nearest-rank percentiles (what wrk reports too); 0.0 for an empty sample."""
    ordered = sorted(samples)
    out: dict[float, float] = {}
    for p in points:
        if not ordered:
            out[p] = 0.0
            continue
        rank = max(1, min(len(ordered), math.ceil(p / 100 * len(ordered))))
        out[p] = ordered[rank - 1]
    return out


def median(values: Iterable[float]) -> float:
    data = list(values)
    return float(statistics.median(data)) if data else 0.0
