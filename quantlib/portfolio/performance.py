"""Performance analytics of daily simple-return series beyond `metrics`: calendar returns, rolling risk,
relative-to-benchmark statistics, drawdown episodes, contributions (what the run report draws).

Conventions are those of `quantlib.portfolio.metrics` (simple returns, NaN = no observation, std with
ddof=1, rf = 0, `annualization` A periods per year). Relative statistics use the dates both series have:
- beta = cov(r, m) / var(m); alpha = (mean(r) - beta mean(m)) A (Jensen's alpha, annualized arithmetically);
- tracking error TE = std(r - m) sqrt(A); information ratio IR = mean(r - m) A / TE;
- rolling statistics over `window` observations are NaN until the window is full, and NaN where undefined
  (a window without variation: no Sharpe, no beta).
Dates: tz-aware stamps are read as UTC dates (`utc_naive`, the one rule the meta's streams and the report use).
A drawdown episode runs from the first period under water (wealth below its running max, which includes
the initial 1.0) to the period wealth first gets back to that max (the recovery; None while under water);
its length counts the periods under water.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from quantlib.portfolio.metrics import drawdown, turnover

DRAWDOWN_COLUMNS = ["start", "trough", "recovery", "depth", "length"]


def utc_naive(index: pd.Index) -> pd.DatetimeIndex:
    """`index` as tz-naive dates: tz-aware stamps converted to UTC first (never their local wall time), so a
    crypto stream's UTC dates line up with the plain dates of equities."""
    idx = pd.DatetimeIndex(index)
    return idx.tz_convert("UTC").tz_localize(None) if idx.tz is not None else idx


def _clean(returns: pd.Series) -> pd.Series:
    return pd.Series(returns, dtype=float).dropna()


def _aligned(returns: pd.Series, benchmark: pd.Series) -> pd.DataFrame:
    """Both series on the dates both observed (NaN rows dropped)."""
    return pd.concat({"r": pd.Series(returns, dtype=float), "m": pd.Series(benchmark, dtype=float)},
                     axis=1, join="inner").dropna()


def period_returns(returns: pd.Series, freq: str) -> pd.Series:
    """Compounded return per calendar period (`freq` "M" months, "Y" years), indexed by the period."""
    r = _clean(returns)
    if r.empty:
        return pd.Series(dtype=float)
    periods = utc_naive(r.index).to_period(freq)
    return (1.0 + r).groupby(np.asarray(periods)).prod() - 1.0


def monthly_table(returns: pd.Series) -> pd.DataFrame:
    """Year x month (1..12) compounded monthly returns; NaN where a month has no observation."""
    monthly = period_returns(returns, "M")
    table = pd.DataFrame({"year": [p.year for p in monthly.index], "month": [p.month for p in monthly.index],
                          "ret": monthly.to_numpy()})
    return table.pivot(index="year", columns="month", values="ret").reindex(columns=range(1, 13))


def yearly_returns(returns: pd.Series) -> pd.Series:
    """Compounded return per calendar year, indexed by the year (int)."""
    yearly = period_returns(returns, "Y")
    return pd.Series(yearly.to_numpy(), index=[p.year for p in yearly.index], dtype=float)


def rolling_vol(returns: pd.Series, window: int, annualization: int) -> pd.Series:
    """Annualized rolling volatility std(r, ddof=1) sqrt(A) over `window` observations."""
    return _clean(returns).rolling(window, min_periods=window).std(ddof=1) * math.sqrt(annualization)


def rolling_sharpe(returns: pd.Series, window: int, annualization: int) -> pd.Series:
    """Annualized rolling Sharpe mean / std sqrt(A) (rf = 0) over `window` observations; NaN where the window's
    std is 0."""
    roll = _clean(returns).rolling(window, min_periods=window)
    std = roll.std(ddof=1)
    return roll.mean() / std.where(std > 0) * math.sqrt(annualization)


def rolling_beta(returns: pd.Series, benchmark: pd.Series, window: int) -> pd.Series:
    """Rolling cov(r, m) / var(m) over `window` common observations; NaN where var(m) is 0, empty when the
    two series share no date."""
    both = _aligned(returns, benchmark)
    if both.empty:
        return pd.Series(dtype=float, index=pd.DatetimeIndex([]), name="beta")
    cov = both["r"].rolling(window, min_periods=window).cov(both["m"])
    var = both["m"].rolling(window, min_periods=window).var()
    return (cov / var.where(var > 0)).rename("beta")


def relative_stats(returns: pd.Series, benchmark: pd.Series, annualization: int) -> dict:
    """alpha, beta, information ratio, tracking error and correlation against `benchmark` (module docstring);
    NaN where undefined (fewer than 2 common observations, a flat benchmark or no active risk)."""
    both = _aligned(returns, benchmark)
    out = {"alpha": math.nan, "beta": math.nan, "information_ratio": math.nan, "tracking_error": math.nan,
           "correlation": math.nan, "n_days": int(len(both))}
    if len(both) < 2:
        return out
    r, m = both["r"].to_numpy(), both["m"].to_numpy()
    var_m = float(np.var(m, ddof=1))
    active = r - m
    te = float(np.std(active, ddof=1)) * math.sqrt(annualization)
    if var_m > 0:
        beta = float(np.cov(r, m, ddof=1)[0, 1]) / var_m
        out.update(beta=beta, alpha=(float(r.mean()) - beta * float(m.mean())) * annualization)
        if np.std(r) > 0:
            out["correlation"] = float(np.corrcoef(r, m)[0, 1])
    out["tracking_error"] = te
    if te > 0:
        out["information_ratio"] = float(active.mean()) * annualization / te
    return out


def drawdown_table(returns: pd.Series, top: int = 5) -> pd.DataFrame:
    """The `top` deepest drawdown episodes (start, trough, recovery or NaT while under water, depth <= 0, length in periods),
    deepest first."""
    dd = drawdown(_clean(returns))
    rows = []
    under = dd.to_numpy() < 0
    i, n = 0, len(dd)
    while i < n:
        if not under[i]:
            i += 1
            continue
        j = i
        while j < n and under[j]:
            j += 1
        part = dd.iloc[i:j]
        rows.append({"start": dd.index[i], "trough": part.idxmin(), "recovery": dd.index[j] if j < n else None,
                     "depth": float(part.min()), "length": int(j - i)})
        i = j
    table = pd.DataFrame(rows, columns=DRAWDOWN_COLUMNS)
    return table.sort_values("depth", kind="stable").head(top).reset_index(drop=True)


def held_weights(history: pd.DataFrame, index: pd.Index) -> pd.DataFrame:
    """Rebalance-date weights (rows: the first date each set is held) as the weights held on each date of
    `index` (forward-filled; NaN before the first rebalance)."""
    return history.sort_index().reindex(pd.Index(index).union(history.index)).ffill().reindex(index)


def contributions(weights: pd.DataFrame, returns: pd.DataFrame) -> pd.DataFrame:
    """Each asset's contribution w_{s,t} r_{s,t} to a fixed-weight book's daily return (rows sum to it)."""
    held = weights.reindex(index=returns.index, columns=returns.columns)
    return held * returns


def equal_weight(returns: pd.DataFrame) -> pd.Series:
    """The equal-weight (rebalanced every period) return of the columns observed on each date."""
    return returns.mean(axis=1, skipna=True).rename("equal_weight")


def turnover_series(history: pd.DataFrame) -> pd.Series:
    """`metrics.turnover` ½ Σ|w_t - w_{t-1}| at each rebalance of a weights history (the first: from cash, ½ Σ|w|)."""
    rows = history.sort_index()
    previous = pd.Series(dtype=float)
    out = []
    for _, weights in rows.iterrows():
        out.append(turnover(previous, weights))
        previous = weights
    return pd.Series(out, index=rows.index, dtype=float, name="turnover")

