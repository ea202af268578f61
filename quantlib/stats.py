"""Small statistics on return series shared by selection and analysis (pure numpy, NaN-free input)."""
from __future__ import annotations

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
