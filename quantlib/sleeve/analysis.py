"""Pre-optimization analysis of atom returns (SPEC §2.4): antifragility stats, basket regime, clusters.

Pure functions on a dates x atom_id frame of daily simple returns (no NaN; a NaN raises). The caller
chooses the window: in a walk-forward backtest pass only data strictly before the test window (L-B1).

Definitions where the spec is silent:
- vol is std with ddof=1, annualized by sqrt(A).
- skew / kurtosis are scipy.stats.skew / kurtosis(fisher=True, i.e. excess) with bias=True (population
  moments); a zero-variance series has undefined skew/kurtosis and reports NaN.
- Quantiles use numpy's default (linear interpolation). tail_gain = mean of r strictly above q95 (falls
  back to r >= q95 when nothing is strictly above, e.g. ties at the maximum). var95 = -q05,
  cvar95 = -mean(r[r <= q05]) (losses positive). tail_ratio = q95 / |q05|, NaN when q05 == 0.
- max_drawdown is that of compounded wealth from 1.0 (metrics.drawdown), <= 0.
- minmax(x) = (x - min) / (max - min) across atoms; a constant column maps to 0 and a NaN (undefined
  skew) maps to 0, so an atom with undefined stats never ranks as antifragile.
- Regime: vol_ratio uses std ddof=1 for both the last 10 days and the full sample; clustering is the
  Pearson correlation of |r_b|[1:] with |r_b|[:-1] (pandas autocorr), not clipped. Degenerate inputs use
  neutral values so the score stays defined: vol_ratio 1 when the full std is 0, clustering 0 when
  |r_b| is constant, fat_tail 0 when kurtosis is undefined, trend 0 when the Hurst exponent is NaN
  (fewer than 32 days); the reported `hurst` is then None (JSON null).
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from quantlib.portfolio import clustering
from quantlib.portfolio.metrics import drawdown
from quantlib.portfolio.stats import hurst_rs

ANTIFRAGILITY_COLUMNS = ["vol", "skew", "kurtosis", "tail_gain", "var95", "cvar95", "tail_ratio",
                         "max_drawdown", "significance", "antifragility"]
REGIME_WINDOW = 10
REGIME_WEIGHTS = {"vol_ratio": 0.45, "clustering": 0.2, "fat_tail": 0.2, "trend": 0.15}
CRISIS, TURBULENT, NORMAL, QUIET = "CRISIS", "TURBULENT", "NORMAL", "QUIET"
REGIME_CAPS = {TURBULENT: 0.20, CRISIS: 0.15}


def _check_returns(returns: pd.DataFrame, min_rows: int = 1) -> None:
    if len(returns) < min_rows:
        raise ValueError(f"need at least {min_rows} days of returns, got {len(returns)}")
    if returns.shape[1] == 0:
        raise ValueError("returns has no atoms (columns)")
    if returns.isna().to_numpy().any():
        bad = list(returns.columns[returns.isna().any()])
        raise ValueError(f"returns contain NaN (align calendars before analysis): {bad[:10]}")


def _minmax(x: pd.Series) -> pd.Series:
    """Scale to [0, 1] across atoms; a constant column (or all NaN) maps to 0, NaN entries to 0."""
    lo, hi = x.min(), x.max()
    if not np.isfinite(lo) or not np.isfinite(hi) or hi <= lo:
        return pd.Series(0.0, index=x.index)
    return ((x - lo) / (hi - lo)).fillna(0.0)


def _moments(r: np.ndarray) -> tuple[float, float]:
    """(skew, excess kurtosis) from the central moments, bias=True (scipy.stats' `skew` / `kurtosis(fisher=True)`,
    whose import costs a stage kernel ~0.5 s); NaN for a zero-variance series."""
    if r.size < 2 or np.ptp(r) == 0.0:
        return float("nan"), float("nan")
    d = r - r.mean()
    m2, m3, m4 = (np.mean(d ** k) for k in (2, 3, 4))
    return float(m3 / m2 ** 1.5), float(m4 / m2 ** 2 - 3.0)


def antifragility(returns: pd.DataFrame, annualization: int) -> pd.DataFrame:
    """Per-atom tail statistics and the antifragility score (index atom_id, ANTIFRAGILITY_COLUMNS).

    antifragility = (minmax(skew) + minmax(tail_gain)) * significance, significance = min(1, N / A).
    """
    if annualization <= 0:
        raise ValueError(f"annualization must be positive, got {annualization!r}")
    _check_returns(returns)
    n = len(returns)
    rows = {}
    for atom in returns.columns:
        r = returns[atom].to_numpy(dtype=float)
        q05, q95 = np.quantile(r, [0.05, 0.95])
        above = r[r > q95]
        if above.size == 0:
            above = r[r >= q95]
        skew, kurt = _moments(r)
        rows[atom] = {
            "vol": float(np.std(r, ddof=1) * math.sqrt(annualization)) if n > 1 else float("nan"),
            "skew": skew,
            "kurtosis": kurt,
            "tail_gain": float(above.mean()),
            "var95": float(-q05),
            "cvar95": float(-r[r <= q05].mean()),
            "tail_ratio": float(q95 / abs(q05)) if q05 != 0 else float("nan"),
            "max_drawdown": float(min(0.0, drawdown(pd.Series(r)).min())),
        }
    out = pd.DataFrame.from_dict(rows, orient="index")
    out["significance"] = min(1.0, n / annualization)
    out["antifragility"] = (_minmax(out["skew"]) + _minmax(out["tail_gain"])) * out["significance"]
    out.index.name = "atom_id"
    return out[ANTIFRAGILITY_COLUMNS].astype(float)


def regime_label(score: float) -> str:
    """CRISIS if score >= 1.8, TURBULENT >= 1.2, QUIET < 0.7, else NORMAL."""
    if score >= 1.8:
        return CRISIS
    if score >= 1.2:
        return TURBULENT
    if score < 0.7:
        return QUIET
    return NORMAL


def regime(returns: pd.DataFrame) -> dict:
    """Market regime of the equal-weight basket r_b = mean across atoms per day (JSON-ready dict).

    score = 0.45*vol_ratio + 0.2*clustering + 0.2*fat_tail + 0.15*trend, with vol_ratio =
    std(last 10) / std(full), clustering = lag-1 autocorrelation of |r_b|, fat_tail =
    min(1, |excess kurtosis| / 10), trend = 2*|H - 0.5| (H = stats.hurst_rs(r_b)).
    """
    _check_returns(returns, min_rows=2)
    rb = returns.mean(axis=1).astype(float)
    full_std = float(rb.std(ddof=1))
    recent = rb.iloc[-REGIME_WINDOW:]
    recent_std = float(recent.std(ddof=1)) if len(recent) > 1 else float("nan")
    vol_ratio = recent_std / full_std if full_std > 0 and np.isfinite(recent_std) else 1.0
    ab = rb.abs()
    clust = float(ab.autocorr(lag=1)) if len(ab) > 2 else float("nan")
    clust = clust if np.isfinite(clust) else 0.0
    _, kurt = _moments(rb.to_numpy())
    fat_tail = min(1.0, abs(kurt) / 10.0) if np.isfinite(kurt) else 0.0
    h = hurst_rs(rb.to_numpy())
    trend = 2.0 * abs(h - 0.5) if np.isfinite(h) else 0.0
    terms = {"vol_ratio": vol_ratio, "clustering": clust, "fat_tail": fat_tail, "trend": trend}
    score = float(sum(REGIME_WEIGHTS[k] * v for k, v in terms.items()))
    return {
        "score": score,
        "label": regime_label(score),
        "vol_ratio": float(vol_ratio),
        "clustering": float(clust),
        "fat_tail": float(fat_tail),
        "hurst": float(h) if np.isfinite(h) else None,
        "trend": float(trend),
        "n_days": int(len(rb)),
    }


def regime_cluster_cap(label: str, base_cap: float = 0.25) -> float:
    """Per-cluster weight cap for a regime: base_cap for NORMAL/QUIET, 0.20 TURBULENT, 0.15 CRISIS.

    A regime cap never loosens the base cap (min(base_cap, regime cap)). Not floored here: the
    optimizer raises it to 1/n_clusters (and further if the caps cannot add up to 1) in one place,
    `quantlib.portfolio.caps.effective_caps`.
    """
    if label in (NORMAL, QUIET):
        cap = base_cap
    elif label in REGIME_CAPS:
        cap = min(base_cap, REGIME_CAPS[label])
    else:
        raise ValueError(f"unknown regime label {label!r}; expected one of {CRISIS, TURBULENT, NORMAL, QUIET}")
    return float(cap)


def atom_clusters(returns: pd.DataFrame, threshold: float = 0.45, max_clusters: int = 25) -> dict:
    """JSON-ready clusters document from clustering.ward_clusters (clusters.json).

    {"threshold", "n_clusters", "clusters": {"1": [atom ids in column order], ...},
     "labels": {atom_id: cluster id (int)}, "linkage": Ward linkage rows as lists of floats}.
    """
    _check_returns(returns, min_rows=2)
    cl = clustering.ward_clusters(returns, threshold=threshold, max_clusters=max_clusters)
    labels = {str(atom): int(c) for atom, c in cl.labels.items()}
    groups: dict[str, list[str]] = {}
    for atom, c in labels.items():
        groups.setdefault(str(c), []).append(atom)
    groups = {k: groups[k] for k in sorted(groups, key=int)}
    return {
        "threshold": float(threshold),
        "n_clusters": len(groups),
        "clusters": groups,
        "labels": labels,
        "linkage": [[float(v) for v in row] for row in np.asarray(cl.linkage)],
    }
