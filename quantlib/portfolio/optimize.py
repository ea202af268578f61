"""Long-only, fully invested portfolio optimization (SPEC §2.5) with two engines behind one interface.

Input: a (dates x atoms) DataFrame of synthetic daily returns. NaN policy: none allowed -- a column
with a NaN, or a constant (zero-variance) column, is an `OptimizationError` naming the atoms (the
caller drops degenerate columns first; nothing is dropped silently). Output: a Series of weights
indexed by atom, >= 0, summing to 1, caps respected.

Covariance: Ledoit-Wolf shrinkage of the (biased, 1/T) sample covariance towards the scaled
identity (exactly `sklearn.covariance.LedoitWolf(assume_centered=False)`), or a forced intensity
(`shrinkage=`). Expected returns: the sample mean. Both engines receive the SAME covariance/mean.

Methods
- `equal_weight`: 1/n, then caps.
- `hrp`: Lopez de Prado (2016) HRP as riskfolio's ``HCPortfolio(model="HRP",
  codependence="pearson", rm="MV", leaf_order=False)`` with the LW covariance as ``custom_cov``:
  distance sqrt(0.5(1-rho)) of the Pearson correlation of the returns, scipy linkage with the given
  method (always passed explicitly; riskfolio's default would be single), the plain leaf order of
  the linkage (no optimal leaf ordering, as skfolio; see HRP_OPTIMAL_LEAF_ORDER), bisection of the
  leaf order into halves, inverse-variance cluster variances from the shrunk covariance. The
  native engine reproduces riskfolio (and skfolio) to round-off (~1e-17).
- `min_variance`: min w'Sw subject to the constraints below.
- `max_sharpe`: max (mu-rf)'w / sqrt(w'Sw) subject to the constraints below. If no feasible
  portfolio has a positive excess mean (e.g. no atom has mu > rf), both engines fall back to
  `min_variance` (reported as ``fallback="min_variance"`` in the info / ``Series.attrs``).
- `risk_parity`: equal risk contribution w_i (Sw)_i = const, long-only, unconstrained.

Caps (the same effective caps for both engines, see `effective_caps`): the per-atom cap is raised to
1/n if lower; the cluster cap to 1/n_clusters if lower, and further, if needed, to the smallest
value for which sum_c min(cap, n_c * atom_cap) >= 1 (so the problem is always feasible).
- For `min_variance` and `max_sharpe` the caps are constraints of the optimization
  (0 <= w_i <= atom_cap, sum over a cluster <= cluster_cap).
- For `hrp`, `risk_parity` and `equal_weight` the weights are computed unconstrained and then passed
  through ONE deterministic projection `apply_caps` shared by both engines: first the cluster totals
  are clipped to min(cluster_cap, n_c * atom_cap) and the excess is redistributed to the uncapped
  clusters in proportion to their weight (repeated until no cluster exceeds its cap); the atoms of
  each cluster are rescaled to the new total; then, within each cluster, atoms are clipped to
  atom_cap and the excess is redistributed proportionally among the uncapped atoms of that cluster
  (repeated). Feasible weights are returned unchanged. It is not a Euclidean projection: it keeps
  the relative weights of uncapped names, which is what capping a heuristic allocation should do.

Engines
- ``native`` (numpy/scipy, BLAS limited to one thread around each call): min variance and the
  max-Sharpe subproblems by a primal-dual active-set QP that stops only on an exact KKT point, with
  a dense Mehrotra interior-point fallback for degenerate active sets; max Sharpe by a bracketed
  parametric search along the constrained efficient frontier (exact tangency inside one active
  set); risk parity by Newton's method on 1/2 x'Sx - sum(log x) to round-off; HRP as above.
- ``riskfolio`` (riskfolio-lib): ``Portfolio.optimization(model="Classic", rm="MV",
  obj="MinRisk"|"Sharpe")`` with ``upperlng`` = atom cap and ``ainequality``/``binequality`` = cluster
  caps; ``rp_optimization(model="Classic", rm="MV", b=None)``; ``HCPortfolio`` for HRP.
Differences between the engines, and why: riskfolio's convex solutions are Clarabel solutions at
solver tolerance (tightened to 1e-10, `RISKFOLIO_CLARABEL`; ~1e-7 from the native KKT point, ERC
risk contributions equal to ~1e-5 relative) while the native ones are exact to round-off; riskfolio
is given mu and cov rescaled to unit mean variance (weights are scale invariant) because at daily
scale Clarabel declares feasible Sharpe problems infeasible; a riskfolio ERC answer whose risk
contributions are not equal (it returns one on a singular covariance, where the native Newton
fails) is treated as a solver failure, so both engines then take the same gate retry. Solver output
is finally passed through `apply_caps`, which for the constrained methods only repairs cap
violations at solver tolerance.

Stable Sum Gate (`stable_sum_gate`, `optimize_gated`): the raw solver output must be finite, >= 0
and sum > 1e-6 before normalization; otherwise retry once with shrinkage `RETRY_SHRINKAGE`, then
raise `OptimizationError` naming the profile, method and engine.
"""
from __future__ import annotations

import contextlib
import io
import sys
import warnings
from typing import Any, Literal

import numpy as np
import pandas as pd

from quantlib.core.errors import GateError

Method = Literal["hrp", "min_variance", "max_sharpe", "risk_parity", "equal_weight"]
Engine = Literal["native", "riskfolio"]
METHODS: tuple[str, ...] = ("hrp", "min_variance", "max_sharpe", "risk_parity", "equal_weight")
ENGINES: tuple[str, ...] = ("native", "riskfolio")
LINKAGES = ("single", "complete", "average", "weighted", "centroid", "median", "ward")

#: Shrinkage intensity of the single Stable-Sum-Gate retry: 1.0 = the scaled identity target,
#: which is perfectly conditioned, so the retry cannot fail for numerical reasons.
RETRY_SHRINKAGE = 1.0
#: HRP seriation: the plain linkage leaf order of Lopez de Prado (2016), as skfolio does; scipy's
#: optimal leaf ordering (riskfolio's default) costs O(n^3) and would dominate the native solve.
HRP_OPTIMAL_LEAF_ORDER = False
#: Clarabel tolerances for the riskfolio engine (defaults are 1e-8): at 1e-10 its convex solutions
#: agree with the exact native ones to ~1e-7 instead of ~1e-5 at 200 atoms, for ~10-40% more time.
RISKFOLIO_CLARABEL = {"tol_gap_abs": 1e-10, "tol_gap_rel": 1e-10, "tol_feas": 1e-10}
GATE_NEG_TOL = -1e-12
GATE_MIN_SUM = 1e-6


class OptimizationError(GateError):
    """An optimization could not produce valid weights (message names method/profile and the fix)."""


class _AttemptFailed(OptimizationError):
    """One solve attempt failed (solver failure or Stable Sum Gate); `optimize_gated` retries once."""

    def __init__(self, label: str, reason: str, fix: str):
        super().__init__(f"{label}: {reason}; {fix}")
        self.reason = reason


class _SolverFailure(Exception):
    """Internal: a solver returned no usable solution."""


# --------------------------------------------------------------------------------------------
# Covariance
# --------------------------------------------------------------------------------------------

def _sample_cov(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(biased sample covariance, per-row sum of squared centered values) of a (T x n) array.

    Computed as X'X/T - m m' without a centered copy of X (saves a T x n temporary); when a mean
    is large against its standard deviation (cancellation) the centered formula is used instead.
    """
    t = x.shape[0]
    m = x.mean(axis=0)
    emp = x.T @ x
    emp /= t
    emp -= np.outer(m, m)
    if np.any(m * m > np.diag(emp)):
        xc = x - m
        emp = (xc.T @ xc) / t
        return emp, np.einsum("ij,ij->i", xc, xc)
    return emp, np.einsum("ij,ij->i", x, x) - 2.0 * (x @ m) + m @ m


def _lw_intensity(emp: np.ndarray, rowsq: np.ndarray) -> float:
    """Ledoit-Wolf shrinkage intensity (sklearn's formula, non-blocked)."""
    p, t = emp.shape[0], rowsq.shape[0]
    if p == 1:
        return 0.0
    trace = np.diag(emp)
    mu = trace.sum() / p
    beta_ = float(rowsq @ rowsq)                       # = sum(X2'X2), X2 = centered X squared
    delta_ = float(np.vdot(emp, emp))                  # = sum((X'X)**2) / T**2
    beta = 1.0 / (p * t) * (beta_ / t - delta_)
    delta = (delta_ - 2.0 * mu * trace.sum() + p * mu ** 2) / p
    beta = min(beta, delta)
    return 0.0 if beta == 0 else float(beta / delta)


def _shrink(emp: np.ndarray, intensity: float) -> np.ndarray:
    p = emp.shape[0]
    mu = np.trace(emp) / p
    cov = (1.0 - intensity) * emp
    cov[np.diag_indices(p)] += intensity * mu
    return cov


def ledoit_wolf(returns: np.ndarray) -> tuple[np.ndarray, float]:
    """Ledoit-Wolf covariance of a (T x n) array (no NaN) and its shrinkage intensity.

    Shrinks the biased sample covariance towards mu*I, mu = mean variance; identical to
    ``sklearn.covariance.LedoitWolf(assume_centered=False)``.
    """
    x = np.asarray(returns, dtype=float)
    if x.ndim != 2:
        raise ValueError("ledoit_wolf expects a 2-D (dates x assets) array")
    emp, rowsq = _sample_cov(x)
    delta = _lw_intensity(emp, rowsq)
    return _shrink(emp, delta), delta


# --------------------------------------------------------------------------------------------
# Caps
# --------------------------------------------------------------------------------------------

def effective_caps(n_atoms: int, cluster_sizes: np.ndarray | None, cluster_cap: float,
                   atom_cap: float) -> tuple[float, float]:
    """(atom cap, cluster cap) actually used: raised so that the capped problem is feasible.

    atom cap >= 1/n; cluster cap >= 1/n_clusters and >= the smallest c with
    sum_k min(c, n_k * atom_cap) >= 1. Without clusters the cluster cap is 1.
    """
    u = min(1.0, max(float(atom_cap), 1.0 / n_atoms))
    if cluster_sizes is None or len(cluster_sizes) <= 1:
        return u, 1.0
    sizes = np.asarray(cluster_sizes, dtype=float)
    c = min(1.0, max(float(cluster_cap), 1.0 / len(sizes)))
    cap_k = np.sort(sizes * u)
    if np.minimum(c, cap_k).sum() < 1.0 - 1e-12:
        # smallest c with sum min(c, cap_k) = 1: clusters with cap_k <= c contribute cap_k, the rest c
        for j in range(len(cap_k)):
            rest = len(cap_k) - j
            cand = (1.0 - cap_k[:j].sum()) / rest
            if cand <= cap_k[j] + 1e-15:
                c = max(c, float(cand))
                break
        c = min(c, 1.0)
    return float(u), float(c)


def _waterfill(v: np.ndarray, cap: np.ndarray) -> np.ndarray:
    """Clip v to cap and redistribute the excess proportionally among the uncapped entries, repeatedly."""
    v = v.astype(float).copy()
    fixed = np.zeros(len(v), dtype=bool)
    limit = cap * (1.0 + 1e-14)          # ignore round-off excess (1/n * n may exceed 1 by an ulp)
    for _ in range(len(v) + 1):
        over = (~fixed) & (v > limit)
        if not over.any():
            break
        excess = float(np.sum(v[over] - cap[over]))
        v[over] = cap[over]
        fixed |= over
        free = ~fixed
        base = v[free].sum()
        if base > 0:
            v[free] += excess * v[free] / base
        else:  # nothing to scale: fill the remaining room proportionally
            room = cap[free] - v[free]
            v[free] += excess * room / room.sum()
    return v


def _apply_caps_array(w: np.ndarray, labels: np.ndarray | None, u: float, c: float) -> np.ndarray:
    """`apply_caps` on arrays: labels = cluster index 0..k-1 per atom (or None); u, c effective caps."""
    w = np.asarray(w, dtype=float).copy()
    n = len(w)
    if labels is None:
        labels = np.zeros(n, dtype=np.intp)
        c = 1.0
    k = int(labels.max()) + 1
    sizes = np.bincount(labels, minlength=k)
    tot = np.bincount(labels, weights=w, minlength=k)
    cap_k = np.minimum(c, sizes * u)
    new_tot = tot if k == 1 else _waterfill(tot, cap_k)
    if not np.array_equal(new_tot, tot):
        scale = np.divide(new_tot, tot, out=np.zeros(k), where=tot > 0)
        w = w * scale[labels]
        empty = (tot <= 0) & (new_tot > 0)
        for j in np.flatnonzero(empty):   # only if a cluster had zero weight and must absorb some
            w[labels == j] = new_tot[j] / sizes[j]
    if (w > u).any():
        for j in range(k):
            idx = np.flatnonzero(labels == j)
            if (w[idx] > u).any():
                w[idx] = _waterfill(w[idx], np.full(len(idx), u))
    return w


def apply_caps(w: pd.Series, clusters: pd.Series | None = None, cluster_cap: float = 1.0,
               atom_cap: float = 0.25) -> pd.Series:
    """Deterministic cap projection shared by both engines (see module docstring).

    `w`: weights >= 0 summing to 1, indexed by atom; `clusters`: atom -> cluster id (None = no
    cluster caps). Caps are first raised with `effective_caps`.
    """
    labels, sizes = _cluster_labels(pd.Index(w.index), clusters, "apply_caps")
    u, c = effective_caps(len(w), sizes, cluster_cap, atom_cap)
    out = _apply_caps_array(w.to_numpy(dtype=float), labels, u, c)
    return pd.Series(out, index=w.index, name=w.name)


def _cluster_labels(atoms: pd.Index, clusters: pd.Series | None,
                    what: str) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Cluster index 0..k-1 per atom (in `atoms` order) and cluster sizes, or (None, None)."""
    if clusters is None:
        return None, None
    if clusters.index.has_duplicates:
        dup = clusters.index[clusters.index.duplicated()].unique().tolist()
        raise OptimizationError(f"{what}: atoms {dup[:10]} appear more than once in `clusters`; "
                                "pass one cluster label per atom")
    labels = clusters.reindex(atoms)
    missing = atoms[labels.isna().to_numpy()].tolist()
    if missing:
        raise OptimizationError(
            f"{what}: atoms {missing[:10]} have no cluster id in `clusters`; "
            "pass a cluster label for every atom (or clusters=None)")
    codes, _ = pd.factorize(labels, sort=True)
    codes = codes.astype(np.intp)
    return codes, np.bincount(codes)


# --------------------------------------------------------------------------------------------
# Gate
# --------------------------------------------------------------------------------------------

def stable_sum_gate(raw: np.ndarray) -> bool:
    """Stable Sum Gate on raw (pre-normalization) weights: finite, all >= -1e-12, sum > 1e-6."""
    try:
        x = np.asarray(raw, dtype=float).ravel()
    except (TypeError, ValueError):
        return False
    if x.size == 0 or not np.all(np.isfinite(x)):
        return False
    return bool(np.all(x >= GATE_NEG_TOL) and x.sum() > GATE_MIN_SUM)


# --------------------------------------------------------------------------------------------
# Problem data
# --------------------------------------------------------------------------------------------

class _Problem:
    """Validated inputs shared by both engines."""

    def __init__(self, returns: pd.DataFrame, clusters: pd.Series | None, cluster_cap: float,
                 atom_cap: float, risk_free: float, shrinkage: float | None, label: str):
        self.atoms = pd.Index(returns.columns)
        self.returns = returns
        self.x = returns.to_numpy(dtype=float)
        self.n = self.x.shape[1]
        self.label = label
        self.labels, self.sizes = _cluster_labels(self.atoms, clusters, label)
        self.u, self.c = effective_caps(self.n, self.sizes, cluster_cap, atom_cap)
        self.risk_free = float(risk_free)
        if shrinkage is not None and not 0.0 <= float(shrinkage) <= 1.0:
            raise OptimizationError(f"{label}: shrinkage={shrinkage} must be in [0, 1] (or None for Ledoit-Wolf)")
        self._forced_shrinkage = None if shrinkage is None else float(shrinkage)
        self._cov: np.ndarray | None = None
        self._emp: np.ndarray | None = None
        self._shrinkage: float | None = None
        self.mu = self.x.mean(axis=0)
        self.excess = self.mu - self.risk_free
        # capped cluster rows (a cluster whose atoms cannot exceed the cap needs no row)
        if self.labels is not None and self.c < 1.0:
            rows = [j for j in range(len(self.sizes)) if self.sizes[j] * self.u > self.c + 1e-15]
            self.gmat = np.zeros((len(rows), self.n))
            for r, j in enumerate(rows):
                self.gmat[r, self.labels == j] = 1.0
        else:
            self.gmat = np.zeros((0, self.n))
        # caps adding up to exactly 1: every cluster sits at its cap (rows are equalities, the
        # budget is implied) and clusters too small to reach the cap are locked at atom_cap
        self.forced = bool(self.labels is not None and self.c < 1.0 and
                           np.minimum(self.c, self.sizes * self.u).sum() <= 1.0 + 1e-12)
        self.locked = np.zeros(self.n, dtype=bool)
        if self.forced:
            small = np.flatnonzero(self.sizes * self.u <= self.c + 1e-15)
            self.locked = np.isin(self.labels, small)

    def _estimate(self) -> None:
        emp, rowsq = _sample_cov(self.x)
        delta = _lw_intensity(emp, rowsq) if self._forced_shrinkage is None else self._forced_shrinkage
        self._cov, self._emp, self._shrinkage = _shrink(emp, delta), emp, delta

    @property
    def cov(self) -> np.ndarray:
        """Shrunk covariance (computed on first use: equal weight never needs it)."""
        if self._cov is None:
            self._estimate()
        return self._cov

    @property
    def emp(self) -> np.ndarray:
        """Biased sample covariance (unshrunk)."""
        if self._emp is None:
            self._estimate()
        return self._emp

    @property
    def shrinkage(self) -> float | None:
        """Shrinkage intensity used, or None if no covariance was needed."""
        return self._shrinkage

    def qp(self, p: np.ndarray, e: np.ndarray) -> _QP:
        return _QP(p, e, self.u, self.gmat, self.c, self.forced, self.locked)

    def ipm_constraints(self, homogeneous: np.ndarray | None = None) -> tuple:
        """(A, b, G, h) of the feasible set for the IPM; with `homogeneous` = e the Sharpe
        reformulation in y = k w (e'y = 1, caps scaled by sum(y))."""
        n, u, c = self.n, self.u, self.c
        ones = np.ones(n)
        eye = np.eye(n)
        lock_rows = eye[self.locked]
        if homogeneous is None:
            cap_rows, cap_h = eye, np.full(n, u)
            grp, grp_h = self.gmat, np.full(self.gmat.shape[0], c)
            lock_h = np.full(lock_rows.shape[0], u)
            a_rows, b_vals = ([], []) if self.forced else ([ones], [1.0])
        else:
            cap_rows, cap_h = eye - u * np.outer(ones, ones), np.zeros(n)
            grp, grp_h = self.gmat - c * ones[None, :], np.zeros(self.gmat.shape[0])
            lock_rows = lock_rows - u * ones[None, :]
            lock_h = np.zeros(lock_rows.shape[0])
            a_rows, b_vals = [homogeneous], [1.0]
        if self.forced:
            a = np.vstack(a_rows + [grp, lock_rows])
            b = np.concatenate([b_vals, grp_h, lock_h])
            if homogeneous is not None:      # the scaled cap rows sum to zero: drop one
                a, b = a[:-1], b[:-1]
            free = ~self.locked              # locked atoms' bounds hold with equality: no rows
            g = np.vstack([-eye[free], cap_rows[free]])
            h = np.concatenate([np.zeros(int(free.sum())), cap_h[free]])
        else:
            a = np.vstack(a_rows)
            b = np.asarray(b_vals, dtype=float)
            g = np.vstack([-eye, cap_rows, grp])
            h = np.concatenate([np.zeros(n), cap_h, grp_h])
        return a, b, g, h

    def max_excess_return(self) -> float:
        """max (mu-rf)'w over the feasible set (greedy: optimal for nested upper bounds)."""
        left, room = 1.0, None
        if self.labels is not None:
            room = np.full(int(self.labels.max()) + 1, self.c)
        value = 0.0
        for i in np.argsort(-self.excess, kind="stable"):
            if left <= 0:
                break
            take = min(self.u, left, room[self.labels[i]] if room is not None else 1.0)
            if take <= 0:
                continue
            value += take * self.excess[i]
            left -= take
            if room is not None:
                room[self.labels[i]] -= take
        return float(value)


def _validate(returns: pd.DataFrame, method: str, engine: str, linkage: str, label: str) -> None:
    if method not in METHODS:
        raise OptimizationError(f"{label}: unknown method {method!r}; use one of {', '.join(METHODS)}")
    if engine not in ENGINES:
        raise OptimizationError(f"{label}: unknown engine {engine!r}; use one of {', '.join(ENGINES)}")
    if method == "hrp" and linkage not in LINKAGES:
        raise OptimizationError(f"{label}: unknown HRP linkage {linkage!r}; use one of {', '.join(LINKAGES)}")
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


# --------------------------------------------------------------------------------------------
# Native solvers
# --------------------------------------------------------------------------------------------

_CONTROLLER: Any = None
_CONTROLLER_MODULES = -1


def _blas_single_thread() -> contextlib.AbstractContextManager:
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


def _chol(a: np.ndarray) -> np.ndarray:
    """Upper Cholesky factor via LAPACK potrf (scipy's cho_factor costs ~25 us more per call)."""
    from scipy.linalg.lapack import dpotrf

    c, info = dpotrf(a, lower=0, clean=0, overwrite_a=0)
    if info != 0:
        raise np.linalg.LinAlgError(f"matrix is not positive definite (potrf info {info})")
    return c


def _chol_solve(c: np.ndarray, b: np.ndarray) -> np.ndarray:
    from scipy.linalg.lapack import dpotrs

    x, info = dpotrs(c, b, lower=0)
    if info != 0:
        raise np.linalg.LinAlgError(f"potrs failed (info {info})")
    return x


def _native_hrp(emp: np.ndarray, cov: np.ndarray, linkage: str) -> np.ndarray:
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
    z = sp_linkage(squareform(dist, checks=False), method=linkage, optimal_ordering=HRP_OPTIMAL_LEAF_ORDER)
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


def _native_erc(cov: np.ndarray, max_iter: int = 100) -> np.ndarray:
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
            cf = _chol(h)
        except np.linalg.LinAlgError as exc:
            raise _SolverFailure(f"risk parity Hessian not positive definite: {exc}") from exc
        dx = _chol_solve(cf, g)
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
            raise _SolverFailure("risk parity Newton left the positive orthant")
        polished += polish
        if lam2 < 1e-20 or polished >= 2:
            break
    rc = x * (p @ x)
    if not np.all(np.isfinite(rc)) or rc.max() - rc.min() > 1e-9 * rc.mean():
        raise _SolverFailure("risk parity Newton did not converge")
    return x


class _QP:
    """min 1/2 x'Px - t e'x  s.t.  1'x = 1, 0 <= x <= u, G x <= c (G: 0/1 cluster rows).

    Primal-dual active set (PDAS) with an exact KKT check; `solve` returns None when the working
    set is degenerate or the iteration cycles (the caller then uses the interior-point fallback).
    `forced`: the caps add up to exactly 1, so every cluster row holds with equality (the budget is
    implied) and the `locked` atoms (clusters too small to reach the cap) sit at u.
    """

    def __init__(self, p: np.ndarray, e: np.ndarray, u: float, gmat: np.ndarray, c: float,
                 forced: bool = False, locked: np.ndarray | None = None):
        self.p, self.e, self.u, self.g, self.c = p, e, u, gmat, c
        self.n = p.shape[0]
        self.forced = forced
        self.locked = np.zeros(self.n, dtype=bool) if locked is None else locked
        self.parametric = bool(np.any(e != 0))
        self.q = np.column_stack([np.zeros(self.n), -e])     # x = a + t b: columns for a and b
        self.ptol = 1e-11
        self.dtol = 1e-11

    def eq_solve(self, s: np.ndarray, k: np.ndarray) -> tuple | None:
        """Solve the equality QP of a working set: returns (X, Z, Grad) as 2-column (a, b) arrays."""
        n, u = self.n, self.u
        free = np.flatnonzero(s == 0)
        up = np.flatnonzero(s == 1)
        if free.size == 0:
            return None
        gk = self.g[k]
        bcols = gk[:, free].T                                  # |F| x |K|
        budget_implied = False
        if gk.shape[0]:
            if np.any(bcols.sum(axis=0) == 0):
                return None                                    # active cluster without free atom
            if self.forced:
                budget_implied = True
            elif np.all(bcols.sum(axis=1) > 0.5):
                # every free atom sits in an active cluster: the budget row is implied by the
                # cluster rows; solvable exactly only for a fixed objective (min variance)
                if self.parametric:
                    return None
                budget_implied = True
        d_budget = 1.0 - u * up.size
        d_k = self.c - u * gk[:, up].sum(axis=1)
        if budget_implied:
            fixed_total = u * up.size - u * gk[:, up].sum()
            if abs(d_k.sum() + u * gk[:, up].sum() + fixed_total - 1.0) > 1e-12:
                return None                                    # inconsistent working set
            bmat, d = bcols, d_k
        else:
            bmat = np.column_stack([np.ones(free.size), bcols])
            d = np.concatenate([[d_budget], d_k])
        rhs_on = np.array([1.0, 0.0])
        pff = self.p[np.ix_(free, free)]
        r = self.q[free].copy()
        if up.size:
            r[:, 0] += u * self.p[np.ix_(free, up)].sum(axis=1)
        try:
            cf = _chol(pff)
        except np.linalg.LinAlgError:
            return None
        y = _chol_solve(cf, np.column_stack([r, bmat]))
        yr, yb = y[:, :2], y[:, 2:]
        schur = bmat.T @ yb
        try:
            z = -np.linalg.solve(schur, np.outer(d, rhs_on) + bmat.T @ yr)
        except np.linalg.LinAlgError:
            return None
        xf = -yr - yb @ z
        xx = np.zeros((n, 2))
        xx[free] = xf
        xx[up, 0] = u
        if budget_implied:
            z = np.vstack([np.zeros((1, 2)), z])
        grad = self.p @ xx + self.q + z[0][None, :]
        if gk.shape[0]:
            grad += gk.T @ z[1:]
        if budget_implied and not self.forced:
            # the budget multiplier nu is free: shifting nu by delta and every active cluster
            # multiplier by -delta leaves the free rows unchanged; pick delta so that the bound
            # multipliers of atoms outside active clusters and the cluster multipliers get valid signs
            outside = gk.sum(axis=0) < 0.5
            low_out = outside & (s == -1)
            up_out = outside & (s == 1)
            d_lo = float(np.max(-grad[low_out, 0], initial=-np.inf))
            d_hi = min(float(np.min(z[1:, 0])), float(np.min(-grad[up_out, 0], initial=np.inf)))
            if np.isfinite(d_lo) and np.isfinite(d_hi):
                delta = 0.5 * (d_lo + d_hi) if d_lo <= d_hi else d_lo
            else:
                delta = d_lo if np.isfinite(d_lo) else (d_hi if np.isfinite(d_hi) else 0.0)
            z[0, 0] += delta
            z[1:, 0] -= delta
            grad[outside, 0] += delta
        return xx, z, grad

    @staticmethod
    def at(xx: np.ndarray, z: np.ndarray, grad: np.ndarray, t: float) -> tuple:
        """(x, gradient, cluster multipliers) of a working-set solution at parameter t."""
        x = xx[:, 0] + t * xx[:, 1]
        gr = grad[:, 0] + t * grad[:, 1]
        mu = z[1:, 0] + t * z[1:, 1]
        return x, gr, mu

    def solve(self, t: float, state: tuple | None = None, max_iter: int = 60) -> tuple | None:
        n, u = self.n, self.u
        lock = self.locked
        if state is None:
            s = np.zeros(n, dtype=np.int8)
            s[lock] = 1
            k = np.full(self.g.shape[0], self.forced, dtype=bool)
        else:
            s, k = state[0].copy(), state[1].copy()
        seen: set[bytes] = set()
        for _ in range(max_iter):
            if self.g.shape[0] and k.any():
                # an active cluster needs a free atom (else its row is degenerate): release its
                # atoms (equality clusters) or deactivate it (it is re-added if violated)
                stuck = k & ((self.g @ (s == 0)) == 0)
                if stuck.any():
                    if self.forced:
                        s[(self.g[stuck].sum(axis=0) > 0) & ~lock] = 0
                    else:
                        k = k & ~stuck
            key = s.tobytes() + k.tobytes()
            if key in seen:
                return None
            seen.add(key)
            sol = self.eq_solve(s, k)
            if sol is None:
                return None
            xx, z, grad = sol
            x, gr, mu = self.at(xx, z, grad, t)
            gsum = self.g @ x if self.g.shape[0] else np.zeros(0)
            if self.forced:
                mu = np.zeros(0)
            free, low, up = s == 0, s == -1, (s == 1) & ~lock
            ok = (np.all(x[free] >= -self.ptol) and np.all(x[free] <= u + self.ptol)
                  and np.all(gr[low] >= -self.dtol) and np.all(gr[up] <= self.dtol)
                  and np.all(mu >= -self.dtol) and np.all(gsum[~k] <= self.c + self.ptol))
            if ok:
                return xx, z, grad, (s, k)
            s_new = s.copy()
            s_new[free & (x < -self.ptol)] = -1
            s_new[free & (x > u + self.ptol)] = 1
            s_new[low & (gr < -self.dtol)] = 0
            s_new[up & (gr > self.dtol)] = 0
            k_new = k.copy()
            if not self.forced:
                kidx = np.flatnonzero(k)
                k_new[kidx[mu < -self.dtol]] = False
                k_new[(~k) & (gsum > self.c + self.ptol)] = True
            s, k = s_new, k_new
        return None

    def interval(self, s, k, xx, z, grad) -> tuple[float, float]:
        """Range of t over which the working set stays optimal (all conditions are affine in t)."""
        lo, hi = -np.inf, np.inf
        conds = []   # (a, b) meaning a + t b >= 0
        free, low, up = s == 0, s == -1, (s == 1) & ~self.locked
        conds.append((xx[free, 0], xx[free, 1]))
        conds.append((self.u - xx[free, 0], -xx[free, 1]))
        conds.append((grad[low, 0], grad[low, 1]))
        conds.append((-grad[up, 0], -grad[up, 1]))
        if not self.forced:
            conds.append((z[1:, 0], z[1:, 1]))
        if self.g.shape[0]:
            gs = self.g[~k] @ xx
            conds.append((self.c - gs[:, 0], -gs[:, 1]))
        for a, b in conds:
            pos, neg = b > 1e-300, b < -1e-300
            if pos.any():
                lo = max(lo, float(np.max(-(a[pos] + self.ptol) / b[pos])))
            if neg.any():
                hi = min(hi, float(np.min((a[neg] + self.ptol) / -b[neg])))
        return lo, hi


def _max_step(v: np.ndarray, dv: np.ndarray) -> float:
    """Largest step in [0, 1] keeping v + step * dv >= 0."""
    neg = dv < 0
    return 1.0 if not neg.any() else min(1.0, float(np.min(-v[neg] / dv[neg])))


def _ipm_direction(fixed: tuple, rsz: np.ndarray) -> tuple:
    """Newton direction (dx, dy, dz, ds) of the IPM for complementarity residual `rsz`."""
    cf, ha, schur, a, g, rd, rp, rg, zrg, s, d = fixed
    hr = _chol_solve(cf, -rd - g.T @ ((zrg - rsz) / s))
    dy = np.linalg.solve(schur, a @ hr + rp)
    dx = hr - ha @ dy
    gdx = g @ dx
    return dx, dy, (zrg - rsz) / s + d * gdx, -rg - gdx


def _ipm_qp(p: np.ndarray, q: np.ndarray, a: np.ndarray, b: np.ndarray, g: np.ndarray,
            h: np.ndarray, tol: float = 1e-12, max_iter: int = 100) -> np.ndarray | None:
    """Dense Mehrotra predictor-corrector IPM: min 1/2 x'Px + q'x s.t. Ax = b, Gx <= h."""
    m = g.shape[0]

    def kkt(hmat: np.ndarray, rhs: np.ndarray, rp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        cf = _chol(hmat)
        hr = _chol_solve(cf, rhs)
        ha = _chol_solve(cf, a.T)
        dy = np.linalg.solve(a @ ha, a @ hr + rp)
        return hr - ha @ dy, dy

    try:
        x, y = kkt(p + g.T @ g, -q + g.T @ h, -b)
    except np.linalg.LinAlgError:
        return None
    s = h - g @ x
    z = -s.copy()
    if s.min() <= 0:
        s = s + (1.0 - s.min())
    if z.min() <= 0:
        z = z + (1.0 - z.min())
    pscale = 1.0 + max(np.abs(h).max(initial=0.0), np.abs(b).max(initial=0.0))
    best: np.ndarray | None = None
    for _ in range(max_iter):
        px = p @ x
        gz = g.T @ z
        rd = px + q + a.T @ y + gz
        rp = a @ x - b
        rg = g @ x + s - h
        gap = float(s @ z)
        dscale = 1.0 + max(np.abs(px).max(), np.abs(q).max(initial=0.0), np.abs(gz).max())
        oscale = 1.0 + abs(0.5 * float(x @ px) + float(q @ x))
        pres = max(np.abs(rp).max(initial=0.0), np.abs(rg).max()) / pscale
        dres = float(np.abs(rd).max()) / dscale
        if pres <= tol and dres <= tol and gap <= tol * oscale:
            return x
        if pres <= 1e-9 and dres <= 1e-9 and gap <= 1e-10 * oscale:
            best = x          # good enough if the iteration stalls on round-off from here on
        d = z / s
        hmat = p + (g.T * d) @ g
        try:
            cf = _chol(hmat)
        except np.linalg.LinAlgError:
            return best
        ha = _chol_solve(cf, a.T)
        schur = a @ ha
        zrg = z * rg
        mu = gap / m
        # predictor (affine) then Mehrotra corrector, both with the same factorization
        fixed = (cf, ha, schur, a, g, rd, rp, rg, zrg, s, d)
        dx, dy, dz, ds = _ipm_direction(fixed, s * z)
        alpha = min(_max_step(s, ds), _max_step(z, dz))
        mu_aff = float((s + alpha * ds) @ (z + alpha * dz)) / m
        dx, dy, dz, ds = _ipm_direction(fixed, s * z + ds * dz - (mu_aff / mu) ** 3 * mu)
        alpha = min(1.0, 0.99 * min(_max_step(s, ds), _max_step(z, dz)))
        x, y, z, s = x + alpha * dx, y + alpha * dy, z + alpha * dz, s + alpha * ds
        if not np.all(np.isfinite(x)):
            return best
    return best


def _closed_form(pb: _Problem) -> np.ndarray | None:
    """The answer of a convex profile when no solve is needed: one atom, or caps that force 1/n."""
    if pb.n == 1:
        return np.ones(1)
    if pb.u * pb.n <= 1.0 + 1e-12:
        return np.full(pb.n, 1.0 / pb.n)
    return None


def _native_min_variance(pb: _Problem) -> np.ndarray:
    fixed = _closed_form(pb)
    if fixed is not None:
        return fixed
    n = pb.n
    p = pb.cov / np.mean(np.diag(pb.cov))
    res = pb.qp(p, np.zeros(n)).solve(0.0)
    if res is not None:
        return np.clip(res[0][:, 0], 0.0, pb.u)
    a, b, g, h = pb.ipm_constraints()
    x = _ipm_qp(p, np.zeros(n), a, b, g, h)
    if x is None:
        raise _SolverFailure("min_variance: active-set and interior-point solvers failed")
    return np.clip(x, 0.0, pb.u)


def _native_max_sharpe(pb: _Problem) -> np.ndarray:
    """Tangency portfolio by a parametric search along the constrained efficient frontier.

    w(t) = argmin 1/2 w'Pw - t e'w over the feasible set is piecewise affine in t; the max-Sharpe
    portfolio is the w(t*) with t* e'w = w'Pw. Within one active set the root is explicit, so a
    bracketed search over active sets finds the exact KKT point in a few QP solves.
    """
    fixed = _closed_form(pb)
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
    y = _ipm_qp(p, np.zeros(n), a, b, g, h)
    if y is None or y.sum() <= 0:
        raise _SolverFailure("max_sharpe: parametric active-set and interior-point solvers failed")
    return np.clip(y / y.sum(), 0.0, pb.u)


# --------------------------------------------------------------------------------------------
# riskfolio engine
# --------------------------------------------------------------------------------------------

@contextlib.contextmanager
def _quiet():
    """Silence riskfolio's prints and cvxpy's warnings."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


def _rf_weights(out: Any, what: str) -> np.ndarray:
    if out is None:
        raise _SolverFailure(f"riskfolio {what} returned no solution")
    return np.asarray(out, dtype=float).ravel()


def _riskfolio_portfolio(pb: _Problem, constrained: bool) -> tuple[Any, float]:
    """riskfolio Portfolio on the problem's mean/covariance, rescaled to unit mean variance.

    Rescaling returns by s (mu*s, cov*s^2, rf*s) leaves min-variance, max-Sharpe and risk-parity
    weights unchanged, but daily-scale inputs (variances ~1e-4, excess means ~1e-5) make Clarabel
    report feasible Sharpe problems as infeasible. Returns (portfolio, s).
    """
    import riskfolio as rp

    s = 1.0 / float(np.sqrt(np.mean(np.diag(pb.cov))))
    port = rp.Portfolio(returns=pb.returns)
    port.mu = pd.DataFrame(pb.mu[None, :] * s, columns=pb.atoms)
    port.cov = pd.DataFrame(pb.cov * (s * s), index=pb.atoms, columns=pb.atoms)
    # riskfolio indexes sol_params by every solver it falls back to
    port.sol_params = {name: (dict(RISKFOLIO_CLARABEL) if name == "CLARABEL" else {}) for name in port.solvers}
    if constrained:
        port.upperlng = pb.u
        if pb.gmat.shape[0]:
            port.ainequality = pb.gmat.copy()
            port.binequality = np.full((pb.gmat.shape[0], 1), pb.c)
    return port, s


def _riskfolio_raw(pb: _Problem, method: str, linkage: str) -> np.ndarray:
    import riskfolio as rp

    with _quiet():
        try:
            if method == "hrp":
                hc = rp.HCPortfolio(returns=pb.returns)
                out = hc.optimization(model="HRP", codependence="pearson", rm="MV", rf=0,
                                      method_cov="custom_cov",
                                      custom_cov=pd.DataFrame(pb.cov, index=pb.atoms, columns=pb.atoms),
                                      linkage=linkage, leaf_order=HRP_OPTIMAL_LEAF_ORDER)
            elif method == "risk_parity":
                port, scale = _riskfolio_portfolio(pb, constrained=False)
                out = port.rp_optimization(model="Classic", rm="MV", rf=pb.risk_free * scale, b=None, hist=True)
            else:
                port, scale = _riskfolio_portfolio(pb, constrained=True)
                obj = "MinRisk" if method == "min_variance" else "Sharpe"
                out = port.optimization(model="Classic", rm="MV", obj=obj, rf=pb.risk_free * scale, hist=True)
        except _SolverFailure:
            raise
        except Exception as exc:  # riskfolio/cvxpy failures surface as assorted exceptions
            raise _SolverFailure(f"riskfolio {method} raised {type(exc).__name__}: {exc}") from exc
    raw = _rf_weights(out, method)
    if method == "risk_parity":
        # riskfolio returns whatever the solver stopped at; on a singular covariance that is not an
        # ERC portfolio (the native Newton fails there instead), so verify the risk contributions
        rc = raw * (pb.cov @ raw)
        if not (np.all(np.isfinite(rc)) and rc.min() > 0 and rc.max() - rc.min() <= 1e-4 * rc.mean()):
            raise _SolverFailure("riskfolio risk_parity returned unequal risk contributions")
    return raw


# --------------------------------------------------------------------------------------------
# Dispatch
# --------------------------------------------------------------------------------------------

def _solve(pb: _Problem, method: str, engine: str, linkage: str) -> np.ndarray | None:
    """Raw (pre-normalization) weights in atom order; the monkeypatch point for gate tests."""
    n = pb.n
    if method == "equal_weight" or n == 1:
        return np.full(n, 1.0 / n)
    if engine == "riskfolio":
        return _riskfolio_raw(pb, method, linkage)
    if method == "hrp":
        return _native_hrp(pb.emp, pb.cov, linkage)
    if method == "risk_parity":
        return _native_erc(pb.cov)
    if method == "min_variance":
        return _native_min_variance(pb)
    return _native_max_sharpe(pb)


def _attempt(returns: pd.DataFrame, method: str, engine: str, clusters: pd.Series | None,
             cluster_cap: float, atom_cap: float, linkage: str, risk_free: float,
             shrinkage: float | None, label: str) -> tuple[pd.Series, dict]:
    with _blas_single_thread():
        return _attempt_inner(returns, method, engine, clusters, cluster_cap, atom_cap, linkage,
                              risk_free, shrinkage, label)


def _attempt_inner(returns: pd.DataFrame, method: str, engine: str, clusters: pd.Series | None,
                   cluster_cap: float, atom_cap: float, linkage: str, risk_free: float,
                   shrinkage: float | None, label: str) -> tuple[pd.Series, dict]:
    pb = _Problem(returns, clusters, cluster_cap, atom_cap, risk_free, shrinkage, label)
    solve_method, fallback = method, None
    if method == "max_sharpe" and pb.n > 1 and pb.max_excess_return() <= 0.0:
        solve_method, fallback = "min_variance", "min_variance"
    try:
        raw = _solve(pb, solve_method, engine, linkage)
    except (_SolverFailure, np.linalg.LinAlgError, ArithmeticError) as exc:
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
    w = _apply_caps_array(w, pb.labels, pb.u, pb.c)
    weights = pd.Series(w, index=pb.atoms, name="weight")
    info = {"method": method, "engine": engine, "shrinkage": pb.shrinkage, "fallback": fallback,
            "atom_cap": pb.u, "cluster_cap": pb.c}
    weights.attrs["fallback"] = fallback
    return weights, info


def optimize(returns: pd.DataFrame, method: str, engine: str = "native", *,
             clusters: pd.Series | None = None, cluster_cap: float = 1.0, atom_cap: float = 0.25,
             linkage: str = "ward", risk_free: float = 0.0,
             shrinkage: float | None = None) -> pd.Series:
    """Long-only, fully invested weights (Series indexed by atom, >= 0, sum 1, caps respected).

    `returns`: (dates x atoms) daily returns, no NaN/inf, no constant column (else
    OptimizationError). `clusters`: atom -> cluster id (None = no cluster caps); `risk_free` is
    daily; `shrinkage` None = Ledoit-Wolf estimate, a float in [0, 1] forces the intensity.
    One attempt: a solver failure or a failed Stable Sum Gate raises OptimizationError.
    """
    label = f"optimize {method}/{engine}"
    _validate(returns, method, engine, linkage, label)
    weights, _ = _attempt(returns, method, engine, clusters, cluster_cap, atom_cap, linkage,
                          risk_free, shrinkage, label)
    return weights


def optimize_gated(returns: pd.DataFrame, method: str, engine: str = "native", *,
                   profile_name: str = "", **kw: Any) -> tuple[pd.Series, dict]:
    """`optimize` behind the Stable Sum Gate with exactly one retry at shrinkage RETRY_SHRINKAGE.

    Returns (weights, info) with info = {method, engine, attempts, shrinkage, gate_passed,
    retried, fallback, atom_cap, cluster_cap}; raises OptimizationError naming the profile,
    method and engine when both attempts fail.
    """
    label = f"profile {profile_name or '<unnamed>'} ({method}/{engine})"
    _validate(returns, method, engine, kw.get("linkage", "ward"), label)
    unknown = set(kw) - {"clusters", "cluster_cap", "atom_cap", "linkage", "risk_free", "shrinkage"}
    if unknown:
        raise OptimizationError(f"{label}: unknown optimizer options {sorted(unknown)}")
    opts: dict[str, Any] = {"clusters": None, "cluster_cap": 1.0, "atom_cap": 0.25, "linkage": "ward",
                            "risk_free": 0.0, "shrinkage": None}
    opts.update(kw)
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


__all__ = ["ENGINES", "HRP_OPTIMAL_LEAF_ORDER", "METHODS", "RETRY_SHRINKAGE", "Engine", "Method",
           "OptimizationError", "apply_caps", "effective_caps", "ledoit_wolf", "optimize", "optimize_gated",
           "stable_sum_gate"]
