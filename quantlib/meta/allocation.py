"""Meta weights across sleeves: `meta_weights` (risk parity / HRP / min variance, then bounded by
`bound_weights`) and `walk_forward_meta`, the out-of-sample meta stream (train on the past only, hold
the weights)."""
from __future__ import annotations

import numpy as np
import pandas as pd

from quantlib.core.enums import MetaMethod
from quantlib.portfolio.optimize import optimize_gated

WEIGHT_TOL = 1e-9          # sum-to-one and bound tolerance of meta weights


def bound_weights(weights: pd.Series, min_weight: float, max_weight: float) -> pd.Series:
    """Deterministic projection onto {min_weight <= w_i <= max_weight, sum w = 1}.

    The fixed point of "clip to the bounds and redistribute the excess proportionally among the
    unclipped weights, iterate": w_i = clip(s * w0_i, min, max) with the unique scale s that makes
    the weights sum to 1 (solved exactly on the piecewise-linear sum). Feasible weights are returned
    unchanged; the unclipped weights keep their relative sizes. ValueError when infeasible
    (n * min_weight > 1, n * max_weight < 1, or min_weight > max_weight).
    """
    w0 = pd.Series(weights, dtype=float)
    n = len(w0)
    lo, hi = float(min_weight), float(max_weight)
    if n == 0:
        raise ValueError("bound_weights: no weights")
    if not (0.0 <= lo <= hi <= 1.0):
        raise ValueError(f"meta weight bounds must satisfy 0 <= min_weight <= max_weight <= 1, "
                         f"got min_weight={lo}, max_weight={hi}")
    if n * lo > 1.0 + WEIGHT_TOL or n * hi < 1.0 - WEIGHT_TOL:
        raise ValueError(f"meta weight bounds infeasible for {n} sleeves: n*min_weight = {n * lo:.4g} "
                         f"and n*max_weight = {n * hi:.4g} must bracket 1; relax min_weight/max_weight")
    x = w0.to_numpy()
    if not np.all(np.isfinite(x)) or (x < 0).any() or x.sum() <= 0:
        raise ValueError(f"bound_weights: weights must be finite, >= 0 and not all 0, got {x.tolist()}")
    x = x / x.sum()
    if (x >= lo - WEIGHT_TOL).all() and (x <= hi + WEIGHT_TOL).all():
        return pd.Series(np.clip(x, lo, hi) / np.clip(x, lo, hi).sum(), index=w0.index, name=w0.name)
    pos = x > 0
    if pos.sum() * hi + (~pos).sum() * lo < 1.0:
        # zero weights must absorb the rest: positives at the cap, the remainder shared equally
        out = np.where(pos, hi, (1.0 - pos.sum() * hi) / (~pos).sum())
        return pd.Series(out, index=w0.index, name=w0.name)

    def total(s: float) -> float:
        return float(np.clip(s * x, lo, hi).sum())

    # breakpoints of the piecewise-linear, non-decreasing total(s)
    bps = np.unique(np.concatenate([lo / x[pos], hi / x[pos], [0.0]]))
    vals = np.array([total(b) for b in bps])
    j = int(np.searchsorted(vals, 1.0))        # first breakpoint with total >= 1
    if j == 0:
        s = bps[0]
    else:
        a, b = bps[j - 1], bps[min(j, len(bps) - 1)]
        fa, fb = vals[j - 1], vals[min(j, len(bps) - 1)]
        s = b if fb == fa else a + (1.0 - fa) * (b - a) / (fb - fa)
    out = np.clip(s * x, lo, hi)
    free = (out > lo + 1e-15) & (out < hi - 1e-15)
    resid = 1.0 - out.sum()
    if free.any() and abs(resid) > 0:
        out[free] += resid * out[free] / out[free].sum()
    return pd.Series(out, index=w0.index, name=w0.name)


def meta_method(method: MetaMethod | str) -> MetaMethod:
    """The `MetaMethod` of a profile's `meta.allocation.method` (the enum or its plain value)."""
    try:
        return MetaMethod(getattr(method, "value", method))
    except ValueError:
        raise ValueError(f"unknown meta allocation method {method!r}; use one of "
                         f"{', '.join(m.value for m in MetaMethod)}") from None


def meta_weights(returns: pd.DataFrame, method: MetaMethod | str = MetaMethod.RISK_PARITY, min_weight: float = 0.05,
                 max_weight: float = 0.95, engine: str = "native") -> pd.Series:
    """Sleeve weights: `method` (a `MetaMethod`: risk_parity | hrp | min_variance) via
    `quantlib.portfolio.optimize` (Stable Sum Gate, atom_cap 1.0, no clusters), then `bound_weights`
    to [min_weight, max_weight].

    `returns`: dates x sleeves, no NaN (the aggregated matrix). One sleeve -> weight 1.0.
    Series indexed by sleeve, named "weight", summing to 1.
    """
    method = meta_method(method)
    if not isinstance(returns, pd.DataFrame) or returns.shape[1] == 0:
        raise ValueError("meta_weights: returns must be a non-empty dates x sleeves DataFrame")
    n = returns.shape[1]
    if n == 1:
        return pd.Series([1.0], index=returns.columns, name="weight")
    if n * float(min_weight) > 1.0 + WEIGHT_TOL or n * float(max_weight) < 1.0 - WEIGHT_TOL \
            or not (0.0 <= float(min_weight) <= float(max_weight) <= 1.0):
        bound_weights(pd.Series(np.full(n, 1.0 / n), index=returns.columns), min_weight, max_weight)
    raw, _ = optimize_gated(returns, method.value, engine, profile_name="meta", atom_cap=1.0, clusters=None)
    return bound_weights(raw, min_weight, max_weight).rename("weight")


def walk_forward_meta(returns: pd.DataFrame, method: MetaMethod | str, min_weight: float, max_weight: float,
                      train_days: int, test_days: int, *, engine: str = "native") -> tuple[pd.Series, pd.DataFrame]:
    """Out-of-sample meta stream: rolling fit on the past `train_days` rows, hold for `test_days` rows.

    At step k the weights are `meta_weights(returns.iloc[t - train_days:t])` with t = train_days +
    k * test_days, and r_meta = sum_s w_s r_s on rows t .. t + test_days - 1 (fixed weights, i.e.
    rebalanced daily to target). Returns (stream named "meta" over rows train_days.., weights
    history indexed by rebalance date = the first date each weight set is held). No look-ahead:
    the stream up to a date uses returns strictly before each rebalance plus that day's returns.
    """
    train_days, test_days = int(train_days), int(test_days)
    if train_days < 2:
        raise ValueError(f"walk_forward_meta: train_days={train_days} must be >= 2")
    if test_days < 1:
        raise ValueError(f"walk_forward_meta: test_days={test_days} must be >= 1")
    if len(returns) < train_days + 1:
        raise ValueError(f"walk_forward_meta: {len(returns)} joined rows < train_days + 1 = {train_days + 1}; "
                         "lower train_days or lengthen the sleeves' common out-of-sample period")
    if returns.isna().any().any():
        bad = returns.columns[returns.isna().any()].tolist()
        raise ValueError(f"walk_forward_meta: NaN returns in sleeves {bad}; aggregate with aggregate_streams first")
    pieces: list[pd.Series] = []
    history: dict[pd.Timestamp, pd.Series] = {}
    for t in range(train_days, len(returns), test_days):
        w = meta_weights(returns.iloc[t - train_days:t], method, min_weight, max_weight, engine)
        test = returns.iloc[t:t + test_days]
        pieces.append(pd.Series(test[w.index].to_numpy(dtype=float) @ w.to_numpy(dtype=float),
                                index=test.index))
        history[returns.index[t]] = w
    stream = pd.concat(pieces).rename("meta")
    stream.index.name = returns.index.name
    weights = pd.DataFrame(history).T
    weights.index.name = "rebalance_date"
    weights.columns.name = "sleeve"
    return stream, weights
