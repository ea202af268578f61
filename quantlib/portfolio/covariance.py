"""Ledoit-Wolf covariance: the one covariance both optimizer engines receive (SPEC §2.5).

The (biased, 1/T) sample covariance is shrunk towards the scaled identity mu*I, mu = the mean
variance, with the Ledoit-Wolf intensity -- exactly ``sklearn.covariance.LedoitWolf(
assume_centered=False)`` (non-blocked formula) -- or a forced intensity. Written out here rather
than calling sklearn because it is three small array expressions, sklearn is a heavy import, and
the optimizer needs the unshrunk sample covariance too (HRP's correlation distance).
"""
from __future__ import annotations

import numpy as np


def sample_cov(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
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


def lw_intensity(emp: np.ndarray, rowsq: np.ndarray) -> float:
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


def shrink(emp: np.ndarray, intensity: float) -> np.ndarray:
    """(1 - intensity) * emp + intensity * mu * I, mu = mean variance (a new array)."""
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
    emp, rowsq = sample_cov(x)
    delta = lw_intensity(emp, rowsq)
    return shrink(emp, delta), delta


__all__ = ["ledoit_wolf", "lw_intensity", "sample_cov", "shrink"]
