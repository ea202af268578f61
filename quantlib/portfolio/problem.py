"""The optimization problem both engines solve: validated inputs, covariance, caps and constraint rows.

Input: a (dates x atoms) DataFrame of synthetic daily returns, already validated by the dispatcher
(`optimize._validate`: no NaN, no constant column -- nothing is dropped silently). `Problem` holds
what the native and the riskfolio engine share, so that they solve the SAME problem:
- covariance: the Ledoit-Wolf shrunk covariance (`covariance`), or a forced intensity; estimated on
  first use (equal weight never needs it); the unshrunk sample covariance for HRP's distance;
- expected returns: the sample mean (and the excess over the daily risk-free rate);
- caps: the effective caps (`caps.effective_caps`) and, for the constrained methods, the 0/1 cluster
  rows of the capped clusters; when the caps add up to exactly 1 (`forced`) every cluster row holds
  with equality and the atoms of clusters too small to reach the cap are `locked` at the atom cap.

`SolverFailure` is how either engine says it has no usable solution; the dispatcher turns it into
the Stable Sum Gate's retry.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from quantlib.core.errors import OptimizationError
from quantlib.portfolio.caps import cluster_labels, effective_caps
from quantlib.portfolio.covariance import lw_intensity, sample_cov, shrink
from quantlib.portfolio.qp import QP


class SolverFailure(Exception):
    """A solver returned no usable solution (internal: the dispatcher reports it and retries)."""


class Problem:
    """Validated inputs shared by both engines."""

    def __init__(self, returns: pd.DataFrame, clusters: pd.Series | None, cluster_cap: float,
                 atom_cap: float, risk_free: float, shrinkage: float | None, label: str):
        self.atoms = pd.Index(returns.columns)
        self.returns = returns
        self.x = returns.to_numpy(dtype=float)
        self.n = self.x.shape[1]
        self.label = label
        self.labels, self.sizes = cluster_labels(self.atoms, clusters, label)
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
        emp, rowsq = sample_cov(self.x)
        delta = lw_intensity(emp, rowsq) if self._forced_shrinkage is None else self._forced_shrinkage
        self._cov, self._emp, self._shrinkage = shrink(emp, delta), emp, delta

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

    def qp(self, p: np.ndarray, e: np.ndarray) -> QP:
        return QP(p, e, self.u, self.gmat, self.c, self.forced, self.locked)

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


__all__ = ["Problem", "SolverFailure"]
