"""Strict-health aggregation (SPEC §2.1): a daily returns matrix and a per-symbol health table.

Pure functions on a close-price panel (timestamps x symbols, NaN where a symbol has no bar).
The calendar of a venue is the union of the timestamps its symbols trade (24x7 for crypto, weekdays
without holidays for equities), so no calendar is ever invented and no missing day is zero-filled.
Within the window a symbol is:
  MISSING        no bar at all
  TOXIC          in the toxic registry, or any |r| >= toxic_return (the one bounds policy, LESSONS L-D4)
  STALE          last bar older than the window end (delisted or not updated)
  GAPS           a missing bar after its first bar (strict health: dropped)
  SHORT_HISTORY  fewer than `min_history_days` returns
  ZERO_VARIANCE  all returns equal (a flat or dead market)
  OK             kept
Returns are r_t = close_t / close_{t-1} - 1; a later listing has NaN before its first return.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd

STATUSES = ("OK", "MISSING", "TOXIC", "STALE", "GAPS", "SHORT_HISTORY", "ZERO_VARIANCE")


@dataclass(frozen=True)
class HealthResult:
    returns: pd.DataFrame  # dates x healthy symbols
    health: pd.DataFrame   # symbol, status, bars, first_bar, last_bar, max_abs_return, detail
    window: tuple[pd.Timestamp, pd.Timestamp]

    @property
    def healthy(self) -> list[str]:
        return list(self.returns.columns)

    def counts(self) -> dict[str, int]:
        return {k: int(v) for k, v in self.health["status"].value_counts().items()}


def window_of(close: pd.DataFrame, lookback_days: int) -> pd.DataFrame:
    """The last `lookback_days` rows of the venue calendar (rows where any symbol has a bar)."""
    calendar = close.dropna(how="all")
    return calendar.iloc[-lookback_days:]


def assess(close: pd.DataFrame, symbols: Iterable[str], *, lookback_days: int, min_history_days: int,
           toxic_return: float, toxic: Iterable[str] = ()) -> HealthResult:
    """Health of each of `symbols` on the window of `close` and the returns of the healthy ones."""
    window = window_of(close, lookback_days)
    if window.empty:
        raise ValueError("no bars in the panel: nothing to aggregate")
    end = window.index[-1]
    toxic = set(toxic)
    rows, keep = [], []
    for symbol in symbols:
        col = window[symbol] if symbol in window.columns else pd.Series(np.nan, index=window.index)
        present = col.notna().to_numpy()
        row = {"symbol": symbol, "bars": int(present.sum()), "first_bar": None, "last_bar": None,
               "max_abs_return": np.nan, "detail": ""}
        if not present.any():
            rows.append(row | {"status": "MISSING", "detail": "no bar in the window"})
            continue
        first, last = int(np.argmax(present)), len(present) - 1 - int(np.argmax(present[::-1]))
        row.update(first_bar=window.index[first], last_bar=window.index[last])
        values = col.to_numpy()[first:last + 1]
        r = values[1:] / values[:-1] - 1.0
        max_abs = float(np.nanmax(np.abs(r))) if np.isfinite(r).any() else np.nan
        row["max_abs_return"] = max_abs
        gaps = int((~present[first:last + 1]).sum())
        if symbol in toxic:
            status, detail = "TOXIC", "in the toxic registry"
        elif np.isfinite(max_abs) and max_abs >= toxic_return:
            status, detail = "TOXIC", f"|r| = {max_abs:.2f} >= {toxic_return}"
        elif last < len(present) - 1:
            status, detail = "STALE", f"last bar {window.index[last]} before window end {end}"
        elif gaps:
            status, detail = "GAPS", f"{gaps} missing bar(s) after the first bar"
        elif len(r) < min_history_days:
            status, detail = "SHORT_HISTORY", f"{len(r)} returns < min_history_days {min_history_days}"
        elif np.nanstd(r) == 0.0:
            status, detail = "ZERO_VARIANCE", "all returns equal"
        else:
            status, detail = "OK", ""
            keep.append(symbol)
        rows.append(row | {"status": status, "detail": detail})
    health = pd.DataFrame(rows, columns=["symbol", "status", "bars", "first_bar", "last_bar",
                                         "max_abs_return", "detail"])
    prices = window[keep] if keep else pd.DataFrame(index=window.index)
    returns = (prices / prices.shift(1) - 1.0).iloc[1:]
    returns.index.name = "date"
    return HealthResult(returns=returns, health=health, window=(window.index[0], end))
