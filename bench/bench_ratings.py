"""Benchmark: vectorized Technical Ratings vs the per-symbol pandas reference.

Builds a seeded random-walk OHLCV panel (default 500 symbols x 2000 bars) and reports
  * `compute_ratings` (every output key, and only the five keys the backfill stores),
    best of 3 after one warm-up, in symbol-bars/s (target >= 3,000,000/s on the 2-core box);
  * `ratings_panel` on the same panel as DataFrames with staggered starts and missing bars
    (so the compaction / scatter path is exercised);
  * the straightforward pandas reference (bench/reference_ratings.py) on a subset of symbols,
    scaled to symbol-bars/s, the speed ratio, and the agreement on that subset (both implement
    TradingView's script rules): the 26 votes that differ, each checked for a tie of the lines a
    strict crossover compares (equal in one implementation, an ulp apart in the other), and the
    largest difference of the three ratings on the other bars.
Rates are reported on wall time and on process CPU time (the CPU figure is the fair one when other
jobs share the machine: the computation is single-threaded).
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

from quantlib.data.ratings import MA_VOTES, OSC_VOTES, PANEL_DEFAULT_KEYS, compute_ratings, ratings_panel  # noqa: E402
from reference_ratings import ratings_reference  # noqa: E402

TARGET = 3_000_000
#: the two lines each strict-crossover vote compares: where they are equal on the crossing bar in
#: one implementation and a few ulps apart in the other, rounding alone decides the vote
CROSS_LINES = {"stoch": ("stoch_k", "stoch_d"), "stoch_rsi": ("stoch_rsi_k", "stoch_rsi_d"),
               "adx": ("plus_di", "minus_di")}


def make_panel(n_symbols: int, n_bars: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.02, (n_bars, n_symbols)), axis=0))
    open_ = close * np.exp(rng.normal(0, 0.005, close.shape))
    high = np.maximum(open_, close) * (1 + np.abs(rng.normal(0, 0.01, close.shape)))
    low = np.minimum(open_, close) * (1 - np.abs(rng.normal(0, 0.01, close.shape)))
    volume = rng.lognormal(10, 1, close.shape)
    return open_, high, low, close, volume


def best_of(fn, repeat: int = 3) -> tuple[float, float]:
    """(best wall time, best process CPU time) in seconds over ``repeat`` runs after one warm-up."""
    fn()  # warm-up (imports, allocator)
    wall, cpu = [], []
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        del out
    return min(wall), min(cpu)


def rates(label: str, cells: int, t: tuple[float, float], target: bool = False, note: str = "") -> float:
    """Print one line (wall ms, symbol-bars/s on wall and CPU time); return the wall rate."""
    wall, cpu = t
    flag = ""
    if target:
        ok = max(cells / wall, cells / cpu) >= TARGET
        flag = f"  [{'OK' if ok else 'BELOW'} target {TARGET:,}/s]"
    print(f"{label:25s}: {wall * 1e3:7.1f} ms  {cells / wall:>12,.0f} symbol-bars/s "
          f"(CPU {cells / cpu:>11,.0f}/s){flag}{note}")
    return cells / wall


def compare_with_reference(ours: dict, refs: list[pd.DataFrame]) -> None:
    """Print the largest rating difference, the differing votes and whether each is a tie."""
    votes = MA_VOTES + OSC_VOTES
    rows_differ = np.zeros(ours["recommend_all"].shape, dtype=bool)
    diffs = []
    for j, ref in enumerate(refs):
        for n in votes:
            a, b = ours["vote_" + n][:, j], ref["vote_" + n].to_numpy()
            for t in np.nonzero(~((a == b) | (np.isnan(a) & np.isnan(b))))[0]:
                rows_differ[t, j] = True
                gap = np.inf
                if n in CROSS_LINES and t > 0:
                    x, y = CROSS_LINES[n]
                    for impl in (ours[x][t - 1 : t + 1, j] - ours[y][t - 1 : t + 1, j],
                                 (ref[x] - ref[y]).to_numpy()[t - 1 : t + 1]):
                        gap = min(gap, float(np.min(np.abs(impl))))
                diffs.append((n, j, int(t), a[t], b[t], gap))
    worst = max(
        float(np.nanmax(np.abs(np.where(rows_differ[:, j], np.nan, ours[key][:, j] - ref[key].to_numpy()))))
        for j, ref in enumerate(refs) for key in ("recommend_all", "recommend_ma", "recommend_other")
    )
    nan_pattern = sum(
        int((np.isnan(ours[key][:, j]) != ref[key].isna().to_numpy()).sum()) for j, ref in enumerate(refs)
        for key in ("recommend_all", "recommend_ma", "recommend_other")
    )
    ties = sum(1 for d in diffs if d[5] <= 1e-9)
    cells = len(votes) * len(refs) * ours["recommend_all"].shape[0]
    print(f"reference agreement      : votes differing {len(diffs)} of {cells:,} ({ties} at a tie of the "
          f"crossing lines, |K - D| <= 1e-9 on bar t-1 or t); warm-up NaN pattern of the ratings differs on "
          f"{nan_pattern} cells; max |recommend_* - reference| elsewhere {worst:.2e}")
    for n, j, t, a, b, gap in diffs[:5]:
        print(f"  vote_{n} symbol {j} bar {t}: ours {a:+.0f}, reference {b:+.0f}, smallest |line gap| {gap:.1e}")


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

    n_keys = len(compute_ratings(o[:60, :1], h[:60, :1], l[:60, :1], c[:60, :1], v[:60, :1]))
    rate_all = rates(f"compute_ratings, {n_keys} keys", cells, best_of(lambda: compute_ratings(o, h, l, c, v)), True)
    vote_keys = ["recommend_all", "recommend_ma", "recommend_other"] + [f"vote_{n}" for n in MA_VOTES + OSC_VOTES]
    rates(f"compute_ratings, {len(vote_keys)} keys", cells,
          best_of(lambda: compute_ratings(o, h, l, c, v, keys=vote_keys)), True, " (26 votes + 3 ratings)")
    rate_few = rates("compute_ratings, 5 keys", cells,
                     best_of(lambda: compute_ratings(o, h, l, c, v, keys=PANEL_DEFAULT_KEYS)), True)

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
    rates("ratings_panel, 5 keys", bars, best_of(lambda: ratings_panel(**frames)),
          note=f" ({bars:,} bars, {mask.mean():.0%} of cells missing: staggered starts + 1% gaps)")
    rates("ratings_panel, all keys", bars, best_of(lambda: ratings_panel(**frames, keys="all"), repeat=1))

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
    print(f"speed-up vs reference    : {rate_all / rate_ref:,.0f}x (all keys), {rate_few / rate_ref:,.0f}x (5 keys)")

    compare_with_reference(compute_ratings(o[:, :k], h[:, :k], l[:, :k], c[:, :k], v[:, :k]), refs)


if __name__ == "__main__":
    main()
