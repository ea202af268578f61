"""Long-only, fully invested portfolio optimization (SPEC §2.5): one dispatcher, two engines.

`optimize(returns, method, engine)` and `optimize_gated` (the same behind the Stable Sum Gate) are
the interface; this module validates the inputs, dispatches to an engine and post-processes the
raw weights the same way for both. Output: a Series of weights indexed by atom, >= 0, summing to 1,
caps respected.

Input: a (dates x atoms) DataFrame of synthetic daily returns. NaN policy: none allowed -- a column
with a NaN, or a constant (zero-variance) column, is an `OptimizationError` naming the atoms (the
caller drops degenerate columns first; nothing is dropped silently).

Methods (`core.enums.RiskMethod`), engines (`core.enums.Engine`) and HRP linkages
(`core.enums.Linkage`, scipy's seven) are enum members or their plain string values. Both engines
solve the same `problem.Problem` (Ledoit-Wolf covariance, sample mean, effective caps):
- `equal_weight`: 1/n, then caps.
- `hrp`: Lopez de Prado (2016) HRP as riskfolio's HCPortfolio (`native.native_hrp`).
- `min_variance`: min w'Sw subject to the caps.
- `max_sharpe`: max (mu-rf)'w / sqrt(w'Sw) subject to the caps. If no feasible portfolio has a
  positive excess mean (e.g. no atom has mu > rf), both engines fall back to `min_variance`
  (reported as ``fallback="min_variance"`` in the info / ``Series.attrs``).
- `risk_parity`: equal risk contribution w_i (Sw)_i = const, long-only, unconstrained.

Where the rest lives: `covariance` (Ledoit-Wolf), `caps` (effective caps and the cap projection
`apply_caps`: constraints for min variance / max Sharpe, a projection of the unconstrained weights
for the others), `qp` (the native QP solvers), `native` (the native engine), `riskfolio_engine`
(the riskfolio-lib adapter and why its answers differ at solver tolerance).

Post-processing, identical for both engines: the raw solver output is clipped at 0, normalized
and passed through `caps.apply_caps_array` (for the constrained methods this only repairs cap
violations at solver tolerance). Every attempt runs with BLAS limited to one thread.

Stable Sum Gate (`stable_sum_gate`, `optimize_gated`): the raw solver output must be finite, >= 0
and sum > 1e-6 before normalization; otherwise retry once with shrinkage `RETRY_SHRINKAGE`, then
raise `OptimizationError` naming the profile, method and engine.
"""
from __future__ import annotations

from enum import Enum
from typing import Any

import numpy as np
import pandas as pd

from quantlib.core.enums import Engine, Linkage, RiskMethod
from quantlib.core.errors import OptimizationError
from quantlib.portfolio.caps import apply_caps_array
from quantlib.portfolio.native import (
    blas_single_thread,
    native_erc,
    native_hrp,
    native_max_sharpe,
    native_min_variance,
)
from quantlib.portfolio.problem import Problem, SolverFailure
from quantlib.portfolio.riskfolio_engine import riskfolio_raw

#: Shrinkage intensity of the single Stable-Sum-Gate retry: 1.0 = the scaled identity target,
#: which is perfectly conditioned, so the retry cannot fail for numerical reasons.
RETRY_SHRINKAGE = 1.0
GATE_NEG_TOL = -1e-12
GATE_MIN_SUM = 1e-6


class _AttemptFailed(OptimizationError):
    """One solve attempt failed (solver failure or Stable Sum Gate); `optimize_gated` retries once."""

    def __init__(self, label: str, reason: str, fix: str):
        super().__init__(f"{label}: {reason}; {fix}")
        self.reason = reason


def stable_sum_gate(raw: np.ndarray) -> bool:
    """Stable Sum Gate on raw (pre-normalization) weights: finite, all >= -1e-12, sum > 1e-6."""
    try:
        x = np.asarray(raw, dtype=float).ravel()
    except (TypeError, ValueError):
        return False
    if x.size == 0 or not np.all(np.isfinite(x)):
        return False
    return bool(np.all(x >= GATE_NEG_TOL) and x.sum() > GATE_MIN_SUM)


def _member(kind: type[Enum], value: Any, what: str, label: str) -> Any:
    """`value` as a member of the str enum `kind`, or an OptimizationError listing the allowed values."""
    try:
        return kind(value)
    except ValueError:
        allowed = ", ".join(m.value for m in kind)
        raise OptimizationError(f"{label}: unknown {what} {value!r}; use one of {allowed}") from None


def _validate(returns: pd.DataFrame, method: RiskMethod | str, engine: Engine | str, linkage: Linkage | str,
              label: str) -> tuple[RiskMethod, Engine, Linkage | str]:
    """The method, engine and (for HRP) linkage as enum members; OptimizationError on bad input."""
    method = _member(RiskMethod, method, "method", label)
    engine = _member(Engine, engine, "engine", label)
    if method == RiskMethod.HRP:
        linkage = _member(Linkage, linkage, "HRP linkage", label)
    if not isinstance(returns, pd.DataFrame) or returns.shape[1] == 0:
        raise OptimizationError(f"{label}: returns must be a non-empty (dates x atoms) DataFrame")
    if returns.columns.has_duplicates:
        dup = returns.columns[returns.columns.duplicated()].tolist()
        raise OptimizationError(f"{label}: duplicated atom columns {dup[:10]}; de-duplicate them first")
    if len(returns) < 2:
        raise OptimizationError(f"{label}: need at least 2 return rows, got {len(returns)}; "
                                "lengthen the training window")
    x = returns.to_numpy(dtype=float)
    bad = ~np.isfinite(x).all(axis=0)
    if bad.any():
        raise OptimizationError(f"{label}: atoms {returns.columns[bad].tolist()[:10]} contain NaN/inf "
                                "returns; drop or fill degenerate columns before optimizing")
    flat = np.ptp(x, axis=0) == 0
    if flat.any() and returns.shape[1] > 1:
        raise OptimizationError(f"{label}: atoms {returns.columns[flat].tolist()[:10]} have zero variance; "
                                "drop degenerate columns before optimizing")
    return method, engine, linkage


def _solve(pb: Problem, method: RiskMethod, engine: Engine, linkage: Linkage | str) -> np.ndarray | None:
    """Raw (pre-normalization) weights in atom order; the monkeypatch point for gate tests."""
    n = pb.n
    if method == RiskMethod.EQUAL_WEIGHT or n == 1:
        return np.full(n, 1.0 / n)
    if engine == Engine.RISKFOLIO:
        return riskfolio_raw(pb, method, linkage)
    if method == RiskMethod.HRP:
        return native_hrp(pb.emp, pb.cov, linkage)
    if method == RiskMethod.RISK_PARITY:
        return native_erc(pb.cov)
    if method == RiskMethod.MIN_VARIANCE:
        return native_min_variance(pb)
    return native_max_sharpe(pb)


def _attempt(returns: pd.DataFrame, method: RiskMethod, engine: Engine, clusters: pd.Series | None,
             cluster_cap: float, atom_cap: float, linkage: Linkage | str, risk_free: float,
             shrinkage: float | None, label: str) -> tuple[pd.Series, dict]:
    with blas_single_thread():
        return _attempt_inner(returns, method, engine, clusters, cluster_cap, atom_cap, linkage,
                              risk_free, shrinkage, label)


def _attempt_inner(returns: pd.DataFrame, method: RiskMethod, engine: Engine, clusters: pd.Series | None,
                   cluster_cap: float, atom_cap: float, linkage: Linkage | str, risk_free: float,
                   shrinkage: float | None, label: str) -> tuple[pd.Series, dict]:
    pb = Problem(returns, clusters, cluster_cap, atom_cap, risk_free, shrinkage, label)
    solve_method, fallback = method, None
    if method == RiskMethod.MAX_SHARPE and pb.n > 1 and pb.max_excess_return() <= 0.0:
        solve_method, fallback = RiskMethod.MIN_VARIANCE, RiskMethod.MIN_VARIANCE.value
    try:
        raw = _solve(pb, solve_method, engine, linkage)
    except (SolverFailure, np.linalg.LinAlgError, ArithmeticError) as exc:
        reason = " ".join(str(exc).split())[:300]          # one line, bounded
        raise _AttemptFailed(label, f"solver failed ({reason})",
                             "use optimize_gated (retries with more shrinkage) or drop collinear atoms") from exc
    if raw is None or not stable_sum_gate(raw):
        raise _AttemptFailed(label, "Stable Sum Gate failed (raw weights not finite, negative or summing "
                             "to <= 1e-6)", "use optimize_gated (retries with more shrinkage) or drop "
                             "collinear atoms")
    w = np.clip(np.asarray(raw, dtype=float).ravel(), 0.0, None)
    total = w.sum()
    if abs(total - 1.0) > 1e-15:      # leave weights that already sum to 1 bit-exact (1/n stays 1/n)
        w = w / total
    # heuristic weights (hrp, risk_parity, equal_weight) get their caps here; for the constrained
    # solvers this only repairs violations at solver tolerance (riskfolio: ~1e-9; native: none)
    w = apply_caps_array(w, pb.labels, pb.u, pb.c)
    weights = pd.Series(w, index=pb.atoms, name="weight")
    # the info is a record (optimization.json): plain strings, not enum members
    info = {"method": method.value, "engine": engine.value, "shrinkage": pb.shrinkage, "fallback": fallback,
            "atom_cap": pb.u, "cluster_cap": pb.c}
    weights.attrs["fallback"] = fallback
    return weights, info


def optimize(returns: pd.DataFrame, method: RiskMethod | str, engine: Engine | str = Engine.NATIVE, *,
             clusters: pd.Series | None = None, cluster_cap: float = 1.0, atom_cap: float = 0.25,
             linkage: Linkage | str = Linkage.WARD, risk_free: float = 0.0,
             shrinkage: float | None = None) -> pd.Series:
    """Long-only, fully invested weights (Series indexed by atom, >= 0, sum 1, caps respected).

    `returns`: (dates x atoms) daily returns, no NaN/inf, no constant column (else
    OptimizationError). `clusters`: atom -> cluster id (None = no cluster caps); `risk_free` is
    daily; `shrinkage` None = Ledoit-Wolf estimate, a float in [0, 1] forces the intensity.
    One attempt: a solver failure or a failed Stable Sum Gate raises OptimizationError.
    """
    label = f"optimize {method}/{engine}"
    method, engine, linkage = _validate(returns, method, engine, linkage, label)
    weights, _ = _attempt(returns, method, engine, clusters, cluster_cap, atom_cap, linkage,
                          risk_free, shrinkage, label)
    return weights


def optimize_gated(returns: pd.DataFrame, method: RiskMethod | str, engine: Engine | str = Engine.NATIVE, *,
                   profile_name: str = "", **kw: Any) -> tuple[pd.Series, dict]:
    """`optimize` behind the Stable Sum Gate with exactly one retry at shrinkage RETRY_SHRINKAGE.

    Returns (weights, info) with info = {method, engine, attempts, shrinkage, gate_passed,
    retried, fallback, atom_cap, cluster_cap}; raises OptimizationError naming the profile,
    method and engine when both attempts fail.
    """
    label = f"profile {profile_name or '<unnamed>'} ({method}/{engine})"
    method, engine, linkage = _validate(returns, method, engine, kw.get("linkage", Linkage.WARD), label)
    unknown = set(kw) - {"clusters", "cluster_cap", "atom_cap", "linkage", "risk_free", "shrinkage"}
    if unknown:
        raise OptimizationError(f"{label}: unknown optimizer options {sorted(unknown)}")
    opts: dict[str, Any] = {"clusters": None, "cluster_cap": 1.0, "atom_cap": 0.25, "risk_free": 0.0,
                            "shrinkage": None}
    opts.update(kw)
    opts["linkage"] = linkage
    reasons: list[str] = []
    for attempt, shrink in enumerate((opts["shrinkage"], RETRY_SHRINKAGE), start=1):
        try:
            weights, info = _attempt(returns, method, engine, opts["clusters"], opts["cluster_cap"],
                                     opts["atom_cap"], opts["linkage"], opts["risk_free"], shrink, label)
        except _AttemptFailed as exc:
            reasons.append(exc.reason)
            continue
        info.update(attempts=attempt, gate_passed=True, retried=attempt > 1)
        return weights, info
    first = "Ledoit-Wolf" if opts["shrinkage"] is None else f"shrinkage={opts['shrinkage']}"
    raise OptimizationError(
        f"{label}: Stable Sum Gate failed on both attempts ({first}: {reasons[0]}; retry with "
        f"shrinkage={RETRY_SHRINKAGE}: {reasons[1]}); drop collinear or degenerate atoms from the "
        "training window or choose another method/engine")


__all__ = ["RETRY_SHRINKAGE", "optimize", "optimize_gated", "stable_sum_gate"]
