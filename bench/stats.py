"""Summaries of repeated runs: median with min and max."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable


def spread(values: Iterable[float]) -> dict[str, float]:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return {"n": 0, "median": math.nan, "min": math.nan, "max": math.nan}
    return {
        "n": len(vals),
        "median": statistics.median(vals),
        "min": min(vals),
        "max": max(vals),
    }


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or math.isnan(a) or math.isnan(b) or b == 0:
        return None
    return a / b
