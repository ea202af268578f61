"""Benchmark: vectorized Technical Ratings vs the per-symbol pandas reference.

Builds a seeded random-walk OHLCV panel (default 500 symbols x 2000 bars) and reports
  * `compute_ratings` (every output key, and only the five keys the backfill stores),
    best of 3 after one warm-up, in symbol-bars/s (target >= 3,000,000/s on the 2-core box);
  * `ratings_panel` on the same panel as DataFrames with staggered starts and missing bars
    (so the compaction / scatter path is exercised);
  * the straightforward pandas reference (bench/reference_ratings.py) on a subset of symbols,
    scaled to symbol-bars/s, the speed ratio, and the largest difference on that subset.
Usage: python bench/bench_ratings.py [--symbols 500] [--bars 2000] [--ref-symbols 20]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from quantlib.ratings import PANEL_DEFAULT_KEYS, compute_ratings, ratings_panel  # noqa: E402
from reference_ratings import ratings_reference  # noqa: E402

TARGET = 3_000_000


def make_panel(n_symbols: int, n_bars: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.02, (n_bars, n_symbols)), axis=0))
    open_ = close * np.exp(rng.normal(0, 0.005, close.shape))
    high = np.maximum(open_, close) * (1 + np.abs(rng.normal(0, 0.01, close.shape)))
    low = np.minimum(open_, close) * (1 - np.abs(rng.normal(0, 0.01, close.shape)))
    volume = rng.lognormal(10, 1, close.shape)
    return open_, high, low, close, volume


def best_of(fn, repeat: int = 3) -> float:
    fn()  # warm-up (imports, allocator)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
        del out
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--symbols", type=int, default=500)
    parser.add_argument("--bars", type=int, default=2000)
    parser.add_argument("--ref-symbols", type=int, default=20)
    args = parser.parse_args()
    N, T = args.symbols, args.bars
    o, h, l, c, v = make_panel(N, T)
    cells = N * T
    print(f"panel: {N} symbols x {T} bars = {cells:,} symbol-bars (seed 0)")

    t_all = best_of(lambda: compute_ratings(o, h, l, c, v))
    rate_all = cells / t_all
    print(f"compute_ratings, all {len(compute_ratings(o[:60, :1], h[:60, :1], l[:60, :1], c[:60, :1], v[:60, :1]))} "
          f"keys: {t_all * 1e3:7.1f} ms  {rate_all:>13,.0f} symbol-bars/s  "
          f"[{'OK' if rate_all >= TARGET else 'BELOW'} target {TARGET:,}/s]")
    t_few = best_of(lambda: compute_ratings(o, h, l, c, v, keys=PANEL_DEFAULT_KEYS))
    print(f"compute_ratings, 5 keys  : {t_few * 1e3:7.1f} ms  {cells / t_few:>13,.0f} symbol-bars/s")

    # ratings_panel on DataFrames: staggered starts + 1% missing bars -> compaction path
    rng = np.random.default_rng(1)
    idx = pd.date_range("2015-01-01", periods=T, freq="D", tz="UTC")
    cols = [f"BENCH:S{j:04d}" for j in range(N)]
    mask = rng.random((T, N)) < 0.01
    mask |= np.arange(T)[:, None] < rng.integers(0, T // 4, N)[None, :]
    frames = {}
    for name, a in zip(("open", "high", "low", "close", "volume"), (o, h, l, c, v)):
        a = a.copy()
        a[mask] = np.nan
        frames[name] = pd.DataFrame(a, index=idx, columns=cols)
    bars = int((~mask).sum())
    t_panel = best_of(lambda: ratings_panel(**frames))
    print(f"ratings_panel, 5 keys    : {t_panel * 1e3:7.1f} ms  {bars / t_panel:>13,.0f} symbol-bars/s "
          f"({bars:,} bars, {mask.mean():.0%} of cells missing: staggered starts + 1% gaps)")
    t_panel_all = best_of(lambda: ratings_panel(**frames, keys="all"), repeat=1)
    print(f"ratings_panel, all keys  : {t_panel_all * 1e3:7.1f} ms  {bars / t_panel_all:>13,.0f} symbol-bars/s")

    # the per-symbol pandas reference on a subset, scaled
    k = min(args.ref_symbols, N)
    t0 = time.perf_counter()
    refs = [
        ratings_reference(pd.DataFrame({"open": o[:, j], "high": h[:, j], "low": l[:, j], "close": c[:, j], "volume": v[:, j]}))
        for j in range(k)
    ]
    t_ref = time.perf_counter() - t0
    rate_ref = k * T / t_ref
    print(f"pandas reference         : {t_ref / k * 1e3:7.1f} ms/symbol {rate_ref:>13,.0f} symbol-bars/s "
          f"({k} symbols timed)")
    print(f"speed-up vs reference    : {rate_all / rate_ref:,.0f}x (all keys), {cells / t_few / rate_ref:,.0f}x (5 keys)")

    ours = compute_ratings(o[:, :k], h[:, :k], l[:, :k], c[:, :k], v[:, :k])
    worst = max(
        float(np.nanmax(np.abs(ours[key][:, j] - ref[key].to_numpy()))) for j, ref in enumerate(refs)
        for key in ("recommend_all", "recommend_ma", "recommend_other")
    )
    print(f"max |recommend_* - reference| on the subset: {worst:.2e}")


if __name__ == "__main__":
    main()
