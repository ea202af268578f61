"""Small statistics on return series shared by selection and analysis (pure numpy, NaN-free input)."""
from __future__ import annotations

import math

import numpy as np


def hurst_rs(x: np.ndarray, min_chunk: int = 8) -> float:
    """Hurst exponent by rescaled range (R/S): slope of log(mean R/S) on log(n).

    Chunk sizes n are powers of two from `min_chunk` to len(x) // 2; for each n the series is cut
    into floor(len/n) non-overlapping chunks, each chunk's R/S = (max - min of the cumulative
    demeaned sum) / std (ddof 0), chunks with zero std skipped. Returns NaN when fewer than two
    chunk sizes are usable (series shorter than 2 * 2 * min_chunk).
    H ~ 0.5 random walk, > 0.5 persistent (trending), < 0.5 anti-persistent (mean-reverting).
    """
    x = np.asarray(x, dtype=np.float64)
    x = x[np.isfinite(x)]
    sizes, rs = [], []
    n = min_chunk
    while n <= len(x) // 2:
        k = len(x) // n
        chunks = x[: k * n].reshape(k, n)
        dev = np.cumsum(chunks - chunks.mean(axis=1, keepdims=True), axis=1)
        r = dev.max(axis=1) - dev.min(axis=1)
        s = chunks.std(axis=1)
        ok = s > 0
        if ok.any():
            sizes.append(n)
            rs.append(np.mean(r[ok] / s[ok]))
        n *= 2
    if len(sizes) < 2:
        return float("nan")
    slope = np.polyfit(np.log(sizes), np.log(rs), 1)[0]
    return float(slope)


def permutation_entropy(x: np.ndarray, order: int = 5, delay: int = 1, normalize: bool = True) -> float:
    """Bandt-Pompe permutation entropy of `x` (1-D; non-finite values dropped first).

    Ordinal pattern of each embedding vector (x_i, x_{i+delay}, ..., x_{i+(order-1)delay}) is its
    `np.argsort(kind="stable")` (ties broken by order of appearance). Returns the Shannon entropy
    (natural log) of the pattern frequencies, divided by log(order!) when `normalize`.
    NaN when there is no full embedding vector. Note: with k patterns the normalized value is at
    most log(k)/log(order!) (e.g. 116 patterns of order 5 -> <= 0.993).
    """
    if order < 2 or delay < 1:
        raise ValueError(f"permutation_entropy: order must be >= 2 and delay >= 1 (got {order}, {delay})")
    x = np.asarray(x, dtype=np.float64)
    x = x[np.isfinite(x)]
    span = (order - 1) * delay
    if len(x) <= span:
        return float("nan")
    emb = np.lib.stride_tricks.sliding_window_view(x, span + 1)[:, ::delay]
    perms = np.argsort(emb, axis=1, kind="stable")
    codes = perms @ (order ** np.arange(order, dtype=np.int64))
    _, counts = np.unique(codes, return_counts=True)
    p = counts / counts.sum()
    h = float(-(p * np.log(p)).sum())
    if normalize:
        h /= math.log(math.factorial(order))
    return 0.0 if h == 0 else h


def efficiency_ratio(r: np.ndarray) -> float:
    """Kaufman efficiency ratio on returns: |sum r| / sum |r| in [0, 1] (non-finite dropped).

    NaN for an empty series or when every return is zero.
    """
    r = np.asarray(r, dtype=np.float64)
    r = r[np.isfinite(r)]
    denom = np.abs(r).sum()
    if len(r) == 0 or denom == 0:
        return float("nan")
    return float(abs(r.sum()) / denom)


def cvar_loss(r: np.ndarray, level: float = 0.95) -> float:
    """Historical CVaR as a positive loss: -mean of the returns at or below the (1 - level) quantile.

    The quantile uses numpy's default (linear) interpolation; non-finite values dropped; NaN if empty.
    """
    r = np.asarray(r, dtype=np.float64)
    r = r[np.isfinite(r)]
    if len(r) == 0:
        return float("nan")
    q = np.quantile(r, 1.0 - level)
    return float(-r[r <= q].mean())
