"""The native engine (numpy/scipy): HRP, equal risk contribution, min variance and max Sharpe.

- `native_hrp`: Lopez de Prado (2016) HRP exactly as riskfolio's ``HCPortfolio(model="HRP",
  codependence="pearson", rm="MV", leaf_order=False)`` with the Ledoit-Wolf covariance as
  ``custom_cov``: distance sqrt(0.5(1-rho)) of the Pearson correlation of the returns, scipy linkage
  with the given method (always passed explicitly; riskfolio's default would be single), the plain
  leaf order of the linkage (no optimal leaf ordering, as skfolio; see HRP_OPTIMAL_LEAF_ORDER),
  bisection of the leaf order into halves, inverse-variance cluster variances from the shrunk
  covariance. It reproduces riskfolio (and skfolio) to round-off (~1e-17).
- `native_erc`: equal risk contribution w_i (Sw)_i = const, long-only, unconstrained, by Newton's
  method on 1/2 x'Sx - sum(log x) to round-off.
- `native_min_variance`: min w'Sw over the capped simplex by the active-set QP (`qp.QP`), with the
  interior-point fallback (`qp.ipm_qp`) for degenerate active sets.
- `native_max_sharpe`: max (mu-rf)'w / sqrt(w'Sw) by a bracketed parametric search along the
  constrained efficient frontier (exact tangency inside one active set), with a homogeneous
  interior-point fallback.
- `closed_form`: the answer of a convex profile when no solve is needed (one atom, or caps that
  force 1/n).

`blas_single_thread` limits BLAS/OpenMP pools to one thread around each solve, for both engines.
"""
from __future__ import annotations

import contextlib
import sys
from typing import Any

import numpy as np

from quantlib.core.enums import Linkage
from quantlib.portfolio.problem import Problem, SolverFailure
from quantlib.portfolio.qp import chol, chol_solve, ipm_qp

#: HRP seriation: the plain linkage leaf order of Lopez de Prado (2016), as skfolio does; scipy's
#: optimal leaf ordering (riskfolio's default) costs O(n^3) and would dominate the native solve.
#: The riskfolio engine is given the same setting.
HRP_OPTIMAL_LEAF_ORDER = False

_CONTROLLER: Any = None
_CONTROLLER_MODULES = -1


def blas_single_thread() -> contextlib.AbstractContextManager:
    """Limit BLAS/OpenMP pools to one thread around a solve (DESIGN.md: multi-threaded OpenBLAS
    stalls small solves on 2 cores; measured here with neighbours busy: min-variance + risk parity
    at 200 atoms, median 5.9 ms / p90 6.4 ms with one thread vs 16 ms / 80-90 ms without).

    numpy and scipy each load their own OpenBLAS (riskfolio's dependencies add more), and a
    ThreadpoolController only sees libraries loaded when it is built (~0.8 ms), so it is rebuilt
    whenever modules were imported since.
    """
    global _CONTROLLER, _CONTROLLER_MODULES
    try:
        import scipy.linalg.lapack  # noqa: F401  (load scipy's OpenBLAS before scanning)
        from threadpoolctl import ThreadpoolController

        if _CONTROLLER is None or _CONTROLLER_MODULES != len(sys.modules):
            _CONTROLLER = ThreadpoolController()
            _CONTROLLER_MODULES = len(sys.modules)
        return _CONTROLLER.limit(limits=1)
    except (ImportError, OSError, RuntimeError):  # pragma: no cover - threadpoolctl is optional
        return contextlib.nullcontext()


def native_hrp(emp: np.ndarray, cov: np.ndarray, linkage: Linkage | str) -> np.ndarray:
    """HRP exactly as riskfolio's HCPortfolio(model="HRP", codependence="pearson", rm="MV").

    `emp`: sample covariance (its correlation is the Pearson correlation of the returns);
    `cov`: the (shrunk) covariance used for the cluster variances.
    """
    from scipy.cluster.hierarchy import leaves_list
    from scipy.cluster.hierarchy import linkage as sp_linkage
    from scipy.spatial.distance import squareform

    n = emp.shape[0]
    if n == 1:
        return np.ones(1)
    sd = np.sqrt(np.diag(emp))
    corr = np.clip(emp / np.outer(sd, sd), -1.0, 1.0)
    dist = np.sqrt(np.clip((1.0 - corr) / 2.0, 0.0, 1.0))
    z = sp_linkage(squareform(dist, checks=False), method=str(linkage), optimal_ordering=HRP_OPTIMAL_LEAF_ORDER)
    order = leaves_list(z)
    # the bisection only ever splits contiguous ranges of the leaf order
    c_ord = cov[np.ix_(order, order)]
    v_ord = 1.0 / np.diag(c_ord)
    w_ord = np.ones(n)

    def cluster_var(i: int, j: int) -> float:
        v = v_ord[i:j] / v_ord[i:j].sum()
        return float(v @ c_ord[i:j, i:j] @ v)

    items = [(0, n)]
    while items:
        items = [r for i, j in items if j - i > 1 for r in ((i, i + (j - i) // 2), (i + (j - i) // 2, j))]
        for a in range(0, len(items), 2):
            (li, lj), (ri, rj) = items[a], items[a + 1]
            lvar, rvar = cluster_var(li, lj), cluster_var(ri, rj)
            alpha = 1.0 - lvar / (lvar + rvar)
            w_ord[li:lj] *= alpha
            w_ord[ri:rj] *= 1.0 - alpha
    w = np.empty(n)
    w[order] = w_ord
    return w


def native_erc(cov: np.ndarray, max_iter: int = 100) -> np.ndarray:
    """Equal risk contribution, long-only: Newton with backtracking on 1/2 x'Px - sum(log x).

    Returns the raw (unnormalized) solution x, with x_i (Px)_i = 1 for P = n cov / mean(diag cov).
    """
    n = cov.shape[0]
    if n == 1:
        return np.ones(1)
    p = cov / np.mean(np.diag(cov)) * n
    x = 1.0 / np.sqrt(np.diag(p))
    x *= np.sqrt(n / (x @ p @ x))            # optimal scale along the start direction

    def f(v: np.ndarray) -> float:
        return 0.5 * float(v @ p @ v) - float(np.sum(np.log(v)))

    fx = f(x)
    polished = 0
    for _ in range(max_iter):
        px = p @ x
        g = px - 1.0 / x
        h = p.copy()
        h[np.diag_indices(n)] += 1.0 / (x * x)
        try:
            cf = chol(h)
        except np.linalg.LinAlgError as exc:
            raise SolverFailure(f"risk parity Hessian not positive definite: {exc}") from exc
        dx = chol_solve(cf, g)
        lam2 = float(g @ dx)                  # squared Newton decrement
        if lam2 < 1e-24:
            break
        step = 1.0
        neg = dx > 0
        if neg.any():                         # stay strictly inside the positive orthant
            step = min(1.0, 0.99 * float(np.min(x[neg] / dx[neg])))
        polish = lam2 < 1e-10                 # quadratic region: full steps (f is at round-off)
        while True:                           # Armijo backtracking
            x_new = x - step * dx
            f_new = f(x_new)
            if polish or f_new <= fx - 0.25 * step * lam2 or step < 1e-12:
                break
            step *= 0.5
        x, fx = x_new, f_new
        if not np.all(np.isfinite(x)) or np.any(x <= 0):
            raise SolverFailure("risk parity Newton left the positive orthant")
        polished += polish
        if lam2 < 1e-20 or polished >= 2:
            break
    rc = x * (p @ x)
    if not np.all(np.isfinite(rc)) or rc.max() - rc.min() > 1e-9 * rc.mean():
        raise SolverFailure("risk parity Newton did not converge")
    return x


def closed_form(pb: Problem) -> np.ndarray | None:
    """The answer of a convex profile when no solve is needed: one atom, or caps that force 1/n."""
    if pb.n == 1:
        return np.ones(1)
    if pb.u * pb.n <= 1.0 + 1e-12:
        return np.full(pb.n, 1.0 / pb.n)
    return None


def native_min_variance(pb: Problem) -> np.ndarray:
    fixed = closed_form(pb)
    if fixed is not None:
        return fixed
    n = pb.n
    p = pb.cov / np.mean(np.diag(pb.cov))
    res = pb.qp(p, np.zeros(n)).solve(0.0)
    if res is not None:
        return np.clip(res[0][:, 0], 0.0, pb.u)
    a, b, g, h = pb.ipm_constraints()
    x = ipm_qp(p, np.zeros(n), a, b, g, h)
    if x is None:
        raise SolverFailure("min_variance: active-set and interior-point solvers failed")
    return np.clip(x, 0.0, pb.u)


def native_max_sharpe(pb: Problem) -> np.ndarray:
    """Tangency portfolio by a parametric search along the constrained efficient frontier.

    w(t) = argmin 1/2 w'Pw - t e'w over the feasible set is piecewise affine in t; the max-Sharpe
    portfolio is the w(t*) with t* e'w = w'Pw. Within one active set the root is explicit, so a
    bracketed search over active sets finds the exact KKT point in a few QP solves.
    """
    fixed = closed_form(pb)
    if fixed is not None:
        return fixed
    n = pb.n
    p = pb.cov / np.mean(np.diag(pb.cov))
    e = pb.excess / np.abs(pb.excess).max()
    qp = pb.qp(p, e)
    lo, hi, t, state = 0.0, np.inf, 0.0, None
    try:   # start at the t of the budget-only tangency portfolio (saves about half the solves)
        y0 = np.linalg.solve(p, e)
        if y0.sum() > 0 and e @ y0 > 0:
            w0 = y0 / y0.sum()
            t = float(w0 @ p @ w0 / (e @ w0))
    except np.linalg.LinAlgError:
        pass
    for _ in range(100):
        res = qp.solve(t, state)
        if res is None:
            if t <= lo or t - lo <= 1e-12 * max(1.0, t):
                break
            t = lo + 0.25 * (t - lo)      # degenerate working set (vertex region): back off
            state = None
            continue
        xx, z, grad, state = res
        a, b = xx[:, 0], xx[:, 1]
        x = a + t * b
        h_t = t * (e @ x) - x @ p @ x
        slope = e @ a - 2.0 * (a @ p @ b)
        t_lo, t_hi = qp.interval(state[0], state[1], xx, z, grad)
        tstar = (a @ p @ a) / slope if slope > 0 else None
        eps = 1e-12 * max(1.0, abs(tstar)) if tstar is not None else 0.0
        if tstar is not None and t_lo - eps <= tstar <= t_hi + eps:
            return np.clip(a + tstar * b, 0.0, pb.u)
        if h_t < 0:
            lo = max(lo, t_hi if np.isfinite(t_hi) else t)
        else:
            hi = min(hi, t_lo)
        if np.isfinite(hi) and hi - lo <= 1e-14 * max(1.0, hi):
            break
        grow = 4.0 * max(lo, t, 1e-3)       # no wild extrapolation while hi is unknown
        if tstar is not None and lo < tstar < hi and tstar <= grow:
            t = tstar
        elif np.isfinite(hi):
            t = 0.5 * (lo + hi)
        else:
            t = grow
    # fallback: homogeneous reformulation y = k w: min y'Py s.t. e'y = 1, 0 <= y, caps * sum(y)
    a, b, g, h = pb.ipm_constraints(homogeneous=e)
    y = ipm_qp(p, np.zeros(n), a, b, g, h)
    if y is None or y.sum() <= 0:
        raise SolverFailure("max_sharpe: parametric active-set and interior-point solvers failed")
    return np.clip(y / y.sum(), 0.0, pb.u)


__all__ = ["HRP_OPTIMAL_LEAF_ORDER", "blas_single_thread", "closed_form", "native_erc", "native_hrp",
           "native_max_sharpe", "native_min_variance"]
