"""Two independent simulators of a rebalanced long-only portfolio (SPEC §2.7): pure functions, no I/O.

`simulate_reference` is a numpy model of vectorbt's order logic; `simulate_vectorbt` runs
`vbt.Portfolio.from_orders(..., size_type="targetpercent", group_by=True, cash_sharing=True,
call_seq="auto")`. Both return the same `SimResult`; they agree to ~1e-14 on the equity path
(tests require 1e-6). vectorbt is imported lazily, only inside `simulate_vectorbt`.

Inputs
- `prices`: DataFrame dates x assets (strategy atoms), strictly positive where defined.
- `targets`: DataFrame with the same index and columns: target weights on rebalance days
  (>= 0, row sum <= 1, the rest is cash), all-NaN rows on other days. A row with at least one
  non-NaN value is a rebalance day; NaN entries of a rebalance row mean target 0.
  Orders execute at that day's close, the valuation price of the targets is the same close.
- `fees`: cost as a fraction of traded notional (slippage + commission), paid on buys and sells.
- `exits` (optional): a boolean DataFrame like `prices`; True on the last bar of an asset that stops
  trading (a delisting). Its whole position is sold at that close into cash (fees paid), nothing
  else trades that day unless it is also a rebalance day (then the exited asset's target is 0).
  An exit needs a finite positive price that day.
- `init_cash`: starting wealth (all cash).

Conventions
- Wealth and holdings carry across rebalances (never reset); between rebalances the share counts
  are constant, so each asset's value is its value after the last rebalance times the cumulative
  product of its price relatives (computed as shares x price, which needs no division).
- Order logic (vectorbt's, read from `vectorbt/portfolio/nb.py`): on a rebalance day the portfolio
  value V is cash + sum(shares x close) before trading; asset i's order is
  `w_i * V / close_i - shares_i` shares. Orders run in ascending order of their value
  `w_i * V - shares_i * close_i` (stable sort, `call_seq="auto"`): sells first (each receives
  notional x (1 - fees)), then buys from the smallest to the largest, each limited by the cash left
  (notional x (1 + fees) <= cash); once cash runs out the current buy is partially filled and
  later buys are rejected. With fees and a fully invested target the largest buy is therefore a
  little short of its target (vectorbt's behaviour; a naive simulator is ~7e-5 off).
- Zero prices: a price <= `ZERO_PRICE` (1e-12, vectorbt's absolute tolerance, below which
  vectorbt refuses to value an order) marks the asset dead from that day on: its price is 0 for
  every later day, its position is worth 0, it cannot be traded (its target weight stays in cash)
  and its weight is 0. A SHORT atom whose underlying gains >= 100 % in a day is such an asset.
- Missing prices (NaN): the asset is valued at its last price and cannot be traded that day
  (before its first price it is worth 0 and cannot be bought; the target weight stays in cash).
- `equity`: value after each day's close including that day's trades (net of their fees).
- `returns`: equity.pct_change, the first day relative to `init_cash`; once equity is 0 the
  following returns are 0 (nothing left to lose), never NaN.
- `weights`: held asset value / equity after trading each day (0 when equity is 0); the rest is cash.
- `turnover` (L-B3): 0.5 x sum_i |w_after_i - w_before_i| on rebalance days, 0 elsewhere, where
  w_before are the drifted weights just before trading (shares x close / value before trading) and
  w_after the weights after trading (denominator: equity after fees). The first allocation from
  the all-cash start therefore counts 0.5 x sum|w| of the held weights (0.5 when fully invested).
- `costs`: fees paid each day, in currency.
"""
from __future__ import annotations

import os
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["SimResult", "ZERO_PRICE", "simulate_reference", "simulate_vectorbt"]

ZERO_PRICE = 1e-12
"""Prices at or below this are 0: the asset is dead from that day on (see module docstring)."""

# vectorbt's float tolerances (vectorbt/utils/math_.py), used where its order logic rounds.
_REL_TOL = 1e-9
_ABS_TOL = 1e-12
_SUM_TOL = 1e-9


@dataclass(frozen=True)
class SimResult:
    """Daily paths of one simulation (see the module docstring for each field's convention)."""

    equity: pd.Series
    returns: pd.Series
    weights: pd.DataFrame
    turnover: pd.Series
    costs: pd.Series


# --------------------------------------------------------------------------------------- inputs
@dataclass(frozen=True)
class _Inputs:
    close: np.ndarray       # T x N (may view the caller's data: never write), NaN = missing,
                            # 0 = dead (from the first price <= ZERO_PRICE on)
    val: np.ndarray         # T x N (never write) valuation price: close forward-filled, 0 before the first price
    reb_days: np.ndarray    # K row numbers of the rebalance days
    weights: np.ndarray     # K x N target weights on rebalance days (NaN -> 0)
    tradeable: np.ndarray   # K x N bool on rebalance days: close finite and > 0
    exit_days: np.ndarray   # E row numbers of days with an exit (sorted)
    exits: np.ndarray       # E x N bool: the assets liquidated on those days
    index: pd.Index
    columns: pd.Index
    fees: float
    init_cash: float


def _ffill(a: np.ndarray) -> np.ndarray:
    """Forward-fill NaN down the rows of a 2-D array (vectorized); NaN before the first value stays."""
    mask = np.isnan(a)
    rows = np.where(~mask, np.arange(a.shape[0])[:, None], 0)
    np.maximum.accumulate(rows, axis=0, out=rows)
    return a[rows, np.arange(a.shape[1])[None, :]]


def _prepare(prices: pd.DataFrame, targets: pd.DataFrame, fees: float, init_cash: float,
             exits: pd.DataFrame | None = None) -> _Inputs:
    """Validate the inputs and derive the arrays both simulators use (large arrays are only
    copied when they must change: allocation dominates the reference simulator's run time)."""
    if not isinstance(prices, pd.DataFrame) or not isinstance(targets, pd.DataFrame):
        raise TypeError("prices and targets must be pandas DataFrames (dates x assets)")
    if not prices.index.equals(targets.index) or not prices.columns.equals(targets.columns):
        raise ValueError("targets must have exactly the index (dates) and columns (assets) of prices")
    if prices.columns.has_duplicates:
        raise ValueError("prices has duplicate asset columns")
    if not prices.index.is_monotonic_increasing:
        raise ValueError("prices index must be sorted ascending by date")
    if prices.shape[0] == 0 or prices.shape[1] == 0:
        raise ValueError("prices is empty (no dates or no assets)")
    fees = float(fees)
    init_cash = float(init_cash)
    if not np.isfinite(fees) or fees < 0 or fees >= 1:
        raise ValueError(f"fees must be a fraction in [0, 1), got {fees!r}")
    if not np.isfinite(init_cash) or init_cash <= 0:
        raise ValueError(f"init_cash must be positive and finite, got {init_cash!r}")

    close = prices.to_numpy(dtype=np.float64)
    if np.isinf(close).any():
        raise ValueError("prices contain infinite values")
    low = close <= ZERO_PRICE                                  # NaN compares False
    if low.any():                                              # dead from the first zero price on
        close = close.copy()
        close[np.logical_or.accumulate(low, axis=0)] = 0.0
    missing = np.isnan(close)
    if missing.any():
        val = _ffill(close)
        val[np.isnan(val)] = 0.0
    else:
        val = close

    w_all = targets.to_numpy(dtype=np.float64)
    reb_days = np.flatnonzero(~np.isnan(w_all).all(axis=1))
    w = w_all[reb_days]                                        # a copy (fancy indexing)
    w[np.isnan(w)] = 0.0
    if np.isinf(w).any():
        raise ValueError("targets contain infinite weights")
    if (w < -_SUM_TOL).any():
        raise ValueError("targets must be >= 0 (long-only)")
    over = w.sum(axis=1) > 1.0 + _SUM_TOL
    if over.any():
        raise ValueError(f"target weights sum to more than 1 on {targets.index[reb_days[over][0]]} (no leverage)")
    np.clip(w, 0.0, None, out=w)
    exit_days, exit_mask = _exit_events(prices, exits, close)
    c = close[reb_days]
    tradeable = np.isfinite(c) & (c > 0.0)
    on_reb = np.isin(reb_days, exit_days)
    if on_reb.any():                          # an exit on a rebalance day: the target is 0
        rows = np.searchsorted(exit_days, reb_days[on_reb])
        w[on_reb] = np.where(exit_mask[rows], 0.0, w[on_reb])
    return _Inputs(close, val, reb_days, w, tradeable, exit_days, exit_mask, prices.index, prices.columns,
                   fees, init_cash)


def _exit_events(prices: pd.DataFrame, exits: pd.DataFrame | None, close: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Rows with at least one exit and the (rows x assets) exit mask; validated against prices."""
    if exits is None:
        return np.zeros(0, dtype=int), np.zeros((0, close.shape[1]), dtype=bool)
    if not exits.index.equals(prices.index) or not exits.columns.equals(prices.columns):
        raise ValueError("exits must have exactly the index (dates) and columns (assets) of prices")
    mask = exits.to_numpy(dtype=bool)
    bad = mask & ~(np.isfinite(close) & (close > 0.0))
    if bad.any():
        t, i = np.argwhere(bad)[0]
        raise ValueError(f"exit of {prices.columns[i]} on {prices.index[t]} has no positive price to sell at")
    days = np.flatnonzero(mask.any(axis=1))
    return days, mask[days]


def _result(inp: _Inputs, equity: np.ndarray, asset_value: np.ndarray, turnover: np.ndarray,
            costs: np.ndarray) -> SimResult:
    """Assemble a SimResult from daily arrays (shared by both simulators; asset_value is consumed)."""
    prev = np.empty_like(equity)
    prev[0] = inp.init_cash
    prev[1:] = equity[:-1]
    alive = equity > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        returns = np.where(prev > 0, equity / prev - 1.0, 0.0)
        weights = np.divide(asset_value, equity[:, None], out=asset_value)
    if not alive.all():
        weights[~alive] = 0.0
    idx, cols = inp.index, inp.columns
    return SimResult(
        equity=pd.Series(equity, index=idx, name="equity"),
        returns=pd.Series(returns, index=idx, name="returns"),
        weights=pd.DataFrame(weights, index=idx, columns=cols, copy=False),
        turnover=pd.Series(turnover, index=idx, name="turnover"),
        costs=pd.Series(costs, index=idx, name="costs"),
    )


def _turnover(pos_before: np.ndarray, cash_before: np.ndarray, pos_after: np.ndarray,
              cash_after: np.ndarray, val: np.ndarray) -> np.ndarray:
    """0.5 x sum|w_after - w_before| per row, from share counts and cash around the trades."""
    av_before = pos_before * val
    av_after = pos_after * val
    v_before = cash_before + av_before.sum(axis=1)
    v_after = cash_after + av_after.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        wb = np.where(v_before[:, None] > 0, av_before / v_before[:, None], 0.0)
        wa = np.where(v_after[:, None] > 0, av_after / v_after[:, None], 0.0)
    return 0.5 * np.abs(wa - wb).sum(axis=1)


# ------------------------------------------------------------------------------------ reference
def _is_close(a, b):
    """vectorbt's is_close_nb, vectorized (finite inputs)."""
    return np.abs(a - b) <= np.maximum(_REL_TOL * np.maximum(np.abs(a), np.abs(b)), _ABS_TOL)


def _rebalance(pos: np.ndarray, cash: float, w: np.ndarray, p: np.ndarray, ps: np.ndarray,
               m: np.ndarray, fees: float) -> tuple[np.ndarray, float, float]:
    """One rebalance at close p (vectorbt's from_orders logic); returns new shares, cash, fees paid.

    `m` marks the tradeable assets; `w` is the target with 0 and `ps` the close with 1 for the
    others (their order size is forced to 0, never divided by a zero price)."""
    value = cash + float(pos @ p)
    if value <= _ABS_TOL:
        return pos, cash, 0.0          # vectorbt rejects target-percent orders at value <= 0
    tv = w * value
    size = tv / ps - pos
    size[~m] = 0.0                     # untradeable (dead or missing price): no order
    sell = (size < -_ABS_TOL).nonzero()[0]    # |size| <= 1e-12 shares: vectorbt ignores the order
    buy = (size > _ABS_TOL).nonzero()[0]
    pos = pos.copy()
    paid = 0.0

    # sells first (their order among themselves does not matter: they only add cash)
    if sell.size:
        old = pos[sell]
        s = -size[sell]
        acq = s * p[sell]
        fee = acq * fees
        cash += float((acq - fee).sum())
        paid += float(fee.sum())
        new = old - s
        new[_is_close(old, s)] = 0.0               # vectorbt's add_nb rounds a closed position to 0
        pos[sell] = new
    if cash <= _ABS_TOL:
        cash = 0.0

    # buys in ascending order of order value, each limited by the cash left
    if buy.size and cash > 0.0:
        key = tv[buy] - pos[buy] * p[buy]
        buy = buy[np.argsort(key, kind="stable")]
        s = size[buy]
        req = s * p[buy]
        need = req + req * fees
        left = np.empty_like(need)                 # cash before each buy if all earlier ones fill
        left[0] = cash
        np.cumsum(need[:-1], out=left[1:])
        left[1:] = cash - left[1:]
        emptied = _is_close(need, left)            # the fill uses (almost) all cash: cash becomes 0
        no_cash = left <= _ABS_TOL
        no_cash[1:] |= emptied[:-1]
        stop = (((need > left) & ~emptied) | no_cash).nonzero()[0]
        n_full = int(stop[0]) if stop.size else buy.size
        if n_full:
            pos[buy[:n_full]] += s[:n_full]
            paid += float((req[:n_full] * fees).sum())
            cash = 0.0 if emptied[n_full - 1] else float(left[n_full - 1] - need[n_full - 1])
        if n_full < buy.size and not no_cash[n_full]:
            j = buy[n_full]                        # partial fill with the cash left, then stop
            max_req = cash / (1.0 + fees)
            pos[j] += max_req / p[j]
            paid += cash - max_req
            cash = 0.0
    return pos, cash, paid


def _liquidate(pos: np.ndarray, cash: float, p: np.ndarray, m: np.ndarray, fees: float
               ) -> tuple[np.ndarray, float, float]:
    """Sell the whole position of the assets `m` at close p (an exit); returns shares, cash, fees."""
    pos = pos.copy()
    acq = pos[m] * p[m]
    fee = acq * fees
    pos[m] = 0.0
    return pos, cash + float((acq - fee).sum()), float(fee.sum())


def simulate_reference(prices: pd.DataFrame, targets: pd.DataFrame, fees: float,
                       init_cash: float = 1.0, exits: pd.DataFrame | None = None) -> SimResult:
    """Numpy simulator of the rebalanced portfolio: a loop over trading days only (rebalances and
    exits, vectorized across assets), holdings constant in shares in between (vectorized over time)."""
    inp = _prepare(prices, targets, fees, init_cash, exits)
    T, N = inp.close.shape
    days = np.union1d(inp.reb_days, inp.exit_days)
    K = days.size
    reb_row = {int(t): k for k, t in enumerate(inp.reb_days)}
    exit_row = {int(t): e for e, t in enumerate(inp.exit_days)}
    pos_tab = np.zeros((K + 1, N))          # row k+1: shares after trading day k; row 0: the start
    cash_tab = np.empty(K + 1)
    cash_tab[0] = inp.init_cash
    paid = np.zeros(K)
    pos, cash = pos_tab[0], inp.init_cash
    for k, t in enumerate(days):
        p = inp.val[t]
        if t in reb_row:
            r = reb_row[t]
            m = inp.tradeable[r]
            pos, cash, paid[k] = _rebalance(pos, cash, np.where(m, inp.weights[r], 0.0), p, np.where(m, p, 1.0),
                                            m, inp.fees)
        else:
            pos, cash, paid[k] = _liquidate(pos, cash, p, inp.exits[exit_row[t]], inp.fees)
        pos_tab[k + 1] = pos
        cash_tab[k + 1] = cash

    counts = np.diff(np.concatenate(([0], days, [T])))         # days each row of pos_tab is held
    asset_value = np.repeat(pos_tab, counts, axis=0)
    asset_value *= inp.val
    equity = np.repeat(cash_tab, counts) + asset_value.sum(axis=1)
    costs = np.zeros(T)
    costs[days] = paid
    turnover = np.zeros(T)
    turnover[days] = _turnover(pos_tab[:-1], cash_tab[:-1], pos_tab[1:], cash_tab[1:], inp.val[days])
    return _result(inp, equity, asset_value, turnover, costs)


# ------------------------------------------------------------------------------------- vectorbt
def _numba_cache_dir() -> str:
    """A writable numba cache: <repo>/.numba_cache in a source checkout, else a temp dir."""
    for cand in (Path(__file__).resolve().parents[2] / ".numba_cache",
                 Path(tempfile.gettempdir()) / "quantlib-numba-cache"):
        try:
            cand.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        if os.access(cand, os.W_OK):
            return str(cand)
    return tempfile.mkdtemp(prefix="quantlib-numba-")


def _import_vectorbt():
    """Import vectorbt lazily with a writable NUMBA_CACHE_DIR (set before numba is configured)."""
    if "vectorbt" not in sys.modules and not os.environ.get("NUMBA_CACHE_DIR"):
        os.environ["NUMBA_CACHE_DIR"] = _numba_cache_dir()
        if "numba" in sys.modules:   # numba read its config already: make it see the cache dir
            from numba.core import config as numba_config
            numba_config.reload_config()
    with warnings.catch_warnings():
        _filter_vectorbt_warnings()
        import vectorbt as vbt
    return vbt


def _filter_vectorbt_warnings() -> None:
    """Silence vectorbt's known, harmless warnings (call inside warnings.catch_warnings())."""
    pandas_dep = getattr(pd.errors, "Pandas4Warning", FutureWarning)
    for cat in {pandas_dep, FutureWarning, DeprecationWarning}:
        warnings.filterwarnings("ignore", message=r"The inplace keyword in DataFrame\.rename is deprecated",
                                category=cat)
    try:
        from numba.core.errors import NumbaDeprecationWarning, NumbaPendingDeprecationWarning
    except ImportError:  # pragma: no cover - numba always ships with vectorbt
        return
    for cat in (NumbaDeprecationWarning, NumbaPendingDeprecationWarning):
        warnings.filterwarnings("ignore", message=r"(?s).*reflected list", category=cat)


def simulate_vectorbt(prices: pd.DataFrame, targets: pd.DataFrame, fees: float,
                      init_cash: float = 1.0, exits: pd.DataFrame | None = None) -> SimResult:
    """The same portfolio simulated by vectorbt's `Portfolio.from_orders` (target percent,
    one cash-sharing group, auto call sequence, long-only, `min_size=0`: vectorbt's default
    minimum order of 1e-8 shares would skip small rebalancing trades at `init_cash=1`).
    Dead / missing prices are not traded (NaN size), since vectorbt refuses orders at a price <= 0."""
    inp = _prepare(prices, targets, fees, init_cash, exits)
    vbt = _import_vectorbt()
    size = np.full(inp.close.shape, np.nan)
    size[inp.reb_days] = np.where(inp.tradeable, inp.weights, np.nan)
    exit_rows, exit_cols = np.nonzero(inp.exits)
    size[inp.exit_days[exit_rows], exit_cols] = 0.0         # target 0 %: sell the whole position
    reb = np.union1d(inp.reb_days, inp.exit_days)
    close = pd.DataFrame(inp.close, index=inp.index, columns=inp.columns)
    size_df = pd.DataFrame(size, index=inp.index, columns=inp.columns, copy=False)
    freq = "1D" if isinstance(inp.index, pd.DatetimeIndex) else None
    with warnings.catch_warnings():
        _filter_vectorbt_warnings()
        pf = vbt.Portfolio.from_orders(
            close=close, size=size_df, size_type="targetpercent", group_by=True, cash_sharing=True,
            call_seq="auto", fees=inp.fees, freq=freq, init_cash=inp.init_cash,
            # pinned so that global vectorbt settings cannot change the model; min_size defaults to
            # 1e-8 *shares*, which silently skips small orders at init_cash=1 (scale-dependent)
            direction="longonly", min_size=0.0, max_size=np.inf, size_granularity=np.nan,
            fixed_fees=0.0, slippage=0.0, reject_prob=0.0, lock_cash=False, allow_partial=True,
            val_price=np.inf, ffill_val_price=True, update_value=False,
        )
        equity = np.asarray(pf.value(), dtype=np.float64).reshape(-1)
        asset_value = np.asarray(pf.asset_value(group_by=False), dtype=np.float64)
        shares = np.asarray(pf.assets(), dtype=np.float64)
        cash = np.asarray(pf.cash(), dtype=np.float64).reshape(-1)
        records = pf.orders.values
    T = equity.size
    costs = np.zeros(T)
    np.add.at(costs, records["idx"], records["fees"])
    prev = reb - 1                                  # the day before each rebalance (-1: the start)
    shares_before = np.where((prev >= 0)[:, None], shares[np.maximum(prev, 0)], 0.0)
    cash_before = np.where(prev >= 0, cash[np.maximum(prev, 0)], inp.init_cash)
    turnover = np.zeros(T)
    turnover[reb] = _turnover(shares_before, cash_before, shares[reb], cash[reb], inp.val[reb])
    asset_value = np.nan_to_num(asset_value, nan=0.0)
    return _result(inp, equity, asset_value, turnover, costs)
