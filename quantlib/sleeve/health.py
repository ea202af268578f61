"""Strict health (SPEC §2.1): a function of a window, vectorized over symbols.

Pure functions on a returns matrix (dates x symbols, NaN where a symbol has no return): the calendar
of a venue is the union of the dates its symbols trade (24x7 for crypto, weekdays without holidays
for equities), so no calendar is ever invented and no missing day is zero-filled. The production
decision assesses the last `lookback_days` bars; the walk-forward re-assesses every training window
on its own rows only (never on bars after the decision). Within the window a symbol is:
  MISSING        no return at all
  TOXIC          in the toxic registry, or any |ln(1 + r)| >= ln(1 + toxic_return) (`quantlib.data.bounds`)
  STALE          last return before the window end (delisted or not updated)
  GAPS           a missing return after its first one (strict health: dropped)
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

from quantlib.data.bounds import is_toxic

STATUSES = ("OK", "MISSING", "TOXIC", "STALE", "GAPS", "SHORT_HISTORY", "ZERO_VARIANCE")
HEALTH_COLUMNS = ["symbol", "status", "returns", "first_return", "last_return", "max_abs_return", "detail"]


@dataclass(frozen=True)
class HealthResult:
    returns: pd.DataFrame  # dates x healthy symbols
    health: pd.DataFrame   # HEALTH_COLUMNS
    window: tuple[pd.Timestamp, pd.Timestamp]

    @property
    def healthy(self) -> list[str]:
        return list(self.returns.columns)

    def counts(self) -> dict[str, int]:
        return {k: int(v) for k, v in self.health["status"].value_counts().items()}


def close_to_returns(close: pd.DataFrame) -> pd.DataFrame:
    """Simple returns close_t / close_{t-1} - 1 on the panel's own calendar (first row dropped);
    NaN wherever either bar is missing (never a zero-filled day)."""
    returns = (close / close.shift(1) - 1.0).iloc[1:]
    returns.index.name = "date"
    return returns


def assess_window(window: pd.DataFrame, symbols: Iterable[str], *, min_history_days: int,
                  toxic_return: float, toxic: Iterable[str] = ()) -> pd.DataFrame:
    """The health table (HEALTH_COLUMNS, one row per symbol in the order given) of the returns
    `window` (its rows are the window: the caller slices it; columns absent from it are MISSING)."""
    symbols = list(dict.fromkeys(symbols))
    r = window.reindex(columns=symbols).to_numpy(dtype=float)
    n_rows = r.shape[0]
    present = ~np.isnan(r)
    count = present.sum(axis=0)
    seen = count > 0
    first = np.argmax(present, axis=0)
    last = n_rows - 1 - np.argmax(present[::-1], axis=0)
    gaps = np.where(seen, last - first + 1 - count, 0)
    max_abs = np.where(seen, np.max(np.abs(r), axis=0, initial=-np.inf, where=present), np.nan)
    spread = np.max(r, axis=0, initial=-np.inf, where=present) - np.min(r, axis=0, initial=np.inf, where=present)
    registered = np.isin(np.array(symbols, dtype=object), list(set(toxic)))
    spiked = is_toxic(r, toxic_return).any(axis=0) if n_rows else np.zeros(len(symbols), bool)
    conditions = [~seen, registered | spiked, seen & (last < n_rows - 1), gaps > 0,
                  count < min_history_days, spread == 0.0]
    status = np.select(conditions, STATUSES[1:], default="OK")
    end = window.index[-1] if n_rows else None
    details = {
        "MISSING": lambda j: "no return in the window",
        "TOXIC": lambda j: ("in the toxic registry" if registered[j]
                            else f"|ln(1 + r)| >= ln(1 + {toxic_return}) (max |r| = {max_abs[j]:.2f})"),
        "STALE": lambda j: f"last return {window.index[last[j]]} before window end {end}",
        "GAPS": lambda j: f"{gaps[j]} missing return(s) after the first one",
        "SHORT_HISTORY": lambda j: f"{count[j]} returns < min_history_days {min_history_days}",
        "ZERO_VARIANCE": lambda j: "all returns equal",
        "OK": lambda j: "",
    }
    index = window.index
    return pd.DataFrame({
        "symbol": symbols, "status": status, "returns": count,
        "first_return": [index[f] if s else pd.NaT for f, s in zip(first, seen)],
        "last_return": [index[x] if s else pd.NaT for x, s in zip(last, seen)],
        "max_abs_return": max_abs,
        "detail": [details[s](j) for j, s in enumerate(status)],
    }, columns=HEALTH_COLUMNS)


def assess(close: pd.DataFrame, symbols: Iterable[str], *, lookback_days: int, min_history_days: int,
           toxic_return: float, toxic: Iterable[str] = ()) -> HealthResult:
    """Health of each of `symbols` on the last `lookback_days` bars of the close panel (its
    calendar: rows where any symbol has a bar) and the returns of the healthy ones."""
    calendar = close.dropna(how="all")
    window = calendar.iloc[-lookback_days:]
    if window.empty:
        raise ValueError("no bars in the panel: nothing to aggregate")
    returns = close_to_returns(window)
    health = assess_window(returns, symbols, min_history_days=min_history_days, toxic_return=toxic_return,
                           toxic=toxic)
    keep = health.loc[health["status"].eq("OK"), "symbol"].tolist()
    return HealthResult(returns=returns[keep], health=health, window=(window.index[0], window.index[-1]))
