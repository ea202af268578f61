"""The two quadratic-programming solvers of the native engine (numpy + LAPACK, exact to round-off).

- `QP`: min 1/2 x'Px - t e'x over the capped simplex (budget 1'x = 1, 0 <= x <= u, cluster rows
  G x <= c) by a primal-dual active set (PDAS) that stops only on an exact KKT point. Parametric in
  t: the solution of one working set is affine in t, so `solve` returns it as two columns (a, b)
  with x = a + t b, and `interval` gives the range of t over which that working set stays optimal
  -- what the max-Sharpe frontier search (`native.native_max_sharpe`) walks along. `solve` returns
  None when a working set is degenerate or the iteration cycles.
- `ipm_qp`: a dense Mehrotra predictor-corrector interior-point method for a general
  min 1/2 x'Px + q'x s.t. Ax = b, Gx <= h; the fallback for degenerate active sets.

Why own solvers: riskfolio's convex solutions are Clarabel solutions at solver tolerance (~1e-7 from
the KKT point), these are exact to round-off, and they skip cvxpy's problem construction (timings in
bench/bench_optimize.py). Cholesky factorizations go straight to LAPACK potrf/potrs; scipy is
imported on first use so that importing the optimizer stays light
(tests/portfolio/test_optimize.py::test_import_is_light).
"""
from __future__ import annotations

import numpy as np


def chol(a: np.ndarray) -> np.ndarray:
    """Upper Cholesky factor via LAPACK potrf (scipy's cho_factor costs ~25 us more per call)."""
    from scipy.linalg.lapack import dpotrf

    c, info = dpotrf(a, lower=0, clean=0, overwrite_a=0)
    if info != 0:
        raise np.linalg.LinAlgError(f"matrix is not positive definite (potrf info {info})")
    return c


def chol_solve(c: np.ndarray, b: np.ndarray) -> np.ndarray:
    from scipy.linalg.lapack import dpotrs

    x, info = dpotrs(c, b, lower=0)
    if info != 0:
        raise np.linalg.LinAlgError(f"potrs failed (info {info})")
    return x


class QP:
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
            cf = chol(pff)
        except np.linalg.LinAlgError:
            return None
        y = chol_solve(cf, np.column_stack([r, bmat]))
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
    hr = chol_solve(cf, -rd - g.T @ ((zrg - rsz) / s))
    dy = np.linalg.solve(schur, a @ hr + rp)
    dx = hr - ha @ dy
    gdx = g @ dx
    return dx, dy, (zrg - rsz) / s + d * gdx, -rg - gdx


def ipm_qp(p: np.ndarray, q: np.ndarray, a: np.ndarray, b: np.ndarray, g: np.ndarray,
            h: np.ndarray, tol: float = 1e-12, max_iter: int = 100) -> np.ndarray | None:
    """Dense Mehrotra predictor-corrector IPM: min 1/2 x'Px + q'x s.t. Ax = b, Gx <= h."""
    m = g.shape[0]

    def kkt(hmat: np.ndarray, rhs: np.ndarray, rp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        cf = chol(hmat)
        hr = chol_solve(cf, rhs)
        ha = chol_solve(cf, a.T)
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
            cf = chol(hmat)
        except np.linalg.LinAlgError:
            return best
        ha = chol_solve(cf, a.T)
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


__all__ = ["QP", "chol", "chol_solve", "ipm_qp"]
