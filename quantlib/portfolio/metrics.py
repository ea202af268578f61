"""Performance metrics of daily simple-return series, shared by tearsheets and the backtest (SPEC §2.7).

Conventions (one definition for every consumer, L-B3):
- Returns are simple (not log) per-period returns; `annualization` A is periods per year
  (365 crypto, 252 equities). N is the number of observations used.
- NaN returns mean "no observation" and are dropped (never filled with 0, L-D5); `n_days` counts
  the observations actually used. An empty series gives NaN everywhere and `n_days` 0; metrics that
  need more data than is available (std of one point, 0/0) are NaN, never an exception.
- Wealth starts at 1.0 before the first return; wealth_t is the value after return t (no extra row).
- Bankruptcy: once wealth reaches <= 0 (a return <= -100 %), wealth is 0 from that bar on (a
  negative value would flip the sign of later compounding), drawdown is -1 and CAGR is -1.
- vol / Sharpe use std with ddof=1; Sharpe has rf = 0.
- Sortino = mean * A / (downside deviation * sqrt(A)), downside deviation = sqrt(mean(min(r, 0)^2))
  over all N days (target 0); NaN when there are no negative days.
- hit_rate = share of days with r > 0 among all N days (zero-return days count as misses).
- var95 = -q05, cvar95 = -mean(r[r <= q05]) with numpy's default (linear) quantile; losses are
  positive numbers.
- max_drawdown <= 0 (0 when wealth never falls below its running max, which includes the initial 1.0);
  calmar = cagr / |max_drawdown|, NaN when max_drawdown == 0.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

METRIC_COLUMNS = ["cagr", "vol", "sharpe", "sortino", "max_drawdown", "calmar", "hit_rate",
                  "var95", "cvar95", "total_return", "n_days"]


def _check_annualization(annualization: int) -> None:
    if not annualization or annualization <= 0:
        raise ValueError(f"annualization must be a positive number of periods per year, got {annualization!r}")


def _wealth_array(r: np.ndarray) -> np.ndarray:
    """Compounded wealth after each return; 0 from the first bar where it reaches <= 0."""
    w = np.cumprod(1.0 + r)
    broke = np.flatnonzero(w <= 0.0)
    if broke.size:
        w[broke[0]:] = 0.0
    return w


def _drawdown_array(w: np.ndarray) -> np.ndarray:
    peak = np.maximum.accumulate(np.concatenate(([1.0], w)))[1:]
    return w / peak - 1.0


def wealth(returns: pd.Series) -> pd.Series:
    """Compounded wealth cumprod(1 + r) from an initial 1.0 (value after each return; NaN dropped).

    Bankrupt paths: from the first bar where wealth <= 0 it stays exactly 0.
    """
    r = returns.dropna().astype(float)
    return pd.Series(_wealth_array(r.to_numpy()), index=r.index, name=returns.name)


def drawdown(returns: pd.Series) -> pd.Series:
    """Drawdown wealth / running max - 1 (running max includes the initial 1.0; values <= 0)."""
    w = wealth(returns)
    return pd.Series(_drawdown_array(w.to_numpy()), index=w.index, name=returns.name)


def performance_metrics(returns: pd.Series, annualization: int) -> dict:
    """CAGR, vol, Sharpe, Sortino, max drawdown, Calmar, hit rate, VaR95/CVaR95, total return, n_days.

    Plain Python floats (n_days an int); NaN where undefined. See the module docstring for definitions.
    """
    _check_annualization(annualization)
    r = pd.Series(returns, dtype=float).dropna().to_numpy()
    n = int(r.size)
    out = {k: float("nan") for k in METRIC_COLUMNS}
    out["n_days"] = n
    if n == 0:
        return out
    a = float(annualization)
    w = _wealth_array(r)
    end = float(w[-1])
    mdd = float(min(0.0, _drawdown_array(w).min()))
    cagr = -1.0 if end <= 0.0 else end ** (a / n) - 1.0
    mean = float(r.mean())
    std = float(r.std(ddof=1)) if n > 1 else float("nan")
    downside = math.sqrt(float(np.mean(np.minimum(r, 0.0) ** 2)))
    q05 = float(np.quantile(r, 0.05))
    out.update(
        cagr=float(cagr),
        vol=std * math.sqrt(a),
        sharpe=mean / std * math.sqrt(a) if std > 0 else float("nan"),
        sortino=mean * a / (downside * math.sqrt(a)) if downside > 0 else float("nan"),
        max_drawdown=mdd,
        calmar=float(cagr / abs(mdd)) if mdd < 0 else float("nan"),
        hit_rate=float(np.mean(r > 0.0)),
        var95=-q05,
        cvar95=-float(r[r <= q05].mean()),
        total_return=end - 1.0,
    )
    return out


def turnover(w_prev: pd.Series, w_next: pd.Series) -> float:
    """One-way turnover 0.5 * sum |w_next - w_prev| over the union of names (missing or NaN = 0)."""
    for name, w in (("w_prev", w_prev), ("w_next", w_next)):
        if not w.index.is_unique:
            raise ValueError(f"{name} has duplicate names: {list(w.index[w.index.duplicated()])}")
    idx = w_prev.index.union(w_next.index)
    prev = w_prev.reindex(idx).astype(float).fillna(0.0).to_numpy()
    nxt = w_next.reindex(idx).astype(float).fillna(0.0).to_numpy()
    return float(0.5 * np.abs(nxt - prev).sum())


def metrics_table(returns: pd.DataFrame, annualization: int) -> pd.DataFrame:
    """`performance_metrics` for each column (profile) of a dates x profile frame; one row per column.

    Each column is evaluated on its own non-NaN observations (profiles may cover different spans).
    """
    _check_annualization(annualization)
    rows = [performance_metrics(returns[c], annualization) for c in returns.columns]
    table = pd.DataFrame(rows, index=returns.columns, columns=METRIC_COLUMNS)
    table.index.name = returns.columns.name or "profile"
    return table.astype({"n_days": "int64"})
