"""The one bounds policy for daily returns (SPEC §1.3, LESSONS L-D4): symmetric in log space.

A daily return r is *toxic* when |ln(1 + r)| >= ln(1 + toxic_return). With the default
toxic_return = 5.0 that is a gain of +500 % or more, or a loss of 1 - 1/6 = 83.3 % or more
(a x6 move either way). Ingestion, strict health and the look-ahead audit all call `is_toxic`,
so a move the guard rejects on the way in is the move health rejects on the way out.
"""
from __future__ import annotations

import numpy as np

__all__ = ["log_bound", "is_toxic", "downside_threshold"]


def log_bound(toxic_return: float) -> float:
    """ln(1 + toxic_return): the largest |log return| a healthy bar may have (exclusive)."""
    if not np.isfinite(toxic_return) or toxic_return <= 0:
        raise ValueError(f"toxic_return must be a positive number (data.toxic_return), got {toxic_return!r}")
    return float(np.log1p(toxic_return))


def downside_threshold(toxic_return: float) -> float:
    """The simple return that is toxic downward: 1 / (1 + toxic_return) - 1 (-0.833 for 5.0)."""
    return float(np.expm1(-log_bound(toxic_return)))


def is_toxic(returns: np.ndarray | float, toxic_return: float) -> np.ndarray:
    """Element-wise |ln(1 + r)| >= ln(1 + toxic_return); NaN is not toxic, r <= -1 always is."""
    r = np.asarray(returns, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        magnitude = np.abs(np.log1p(np.where(r <= -1.0, -1.0, r)))  # r <= -1 -> inf (a total loss)
    return np.where(np.isnan(r), False, magnitude >= log_bound(toxic_return))
