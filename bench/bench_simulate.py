"""Benchmark: numpy reference vs vectorbt simulator of quantlib.backtest.simulate (SPEC §2.7), a script, not a test.

Seeded random prices (assets x days) with monthly rebalances (every 21 days) to random weights
(some rows not fully invested), fees 0.0014. Prints the median wall time of each simulator after
a warm-up (vectorbt's import and numba compilation excluded), the ratio vectorbt/reference and
the max relative final-equity difference and max abs daily-return difference over the seeds.

    python bench/bench_simulate.py [--assets 200] [--days 2000] [--every 21] [--reps 5] [--seeds 3]
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import pandas as pd

from quantlib.backtest.simulate import simulate_reference, simulate_vectorbt


def make_inputs(n_assets: int, n_days: int, every: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    rets = rng.normal(0.0003, 0.02, (n_days, n_assets))
    idx = pd.date_range("2015-01-01", periods=n_days, freq="D")
    cols = [f"A{i:04d}" for i in range(n_assets)]
    prices = pd.DataFrame(100.0 * np.cumprod(1.0 + rets, axis=0), index=idx, columns=cols)
    targets = pd.DataFrame(np.nan, index=idx, columns=cols)
    days = np.arange(0, n_days, every)
    w = rng.dirichlet(np.full(n_assets, 0.5), size=days.size)
    w *= np.where(rng.random(days.size) < 0.25, rng.uniform(0.6, 1.0, days.size), 1.0)[:, None]
    targets.iloc[days] = w
    return prices, targets


def timed(fn, reps: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(reps):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--assets", type=int, default=200)
    ap.add_argument("--days", type=int, default=2000)
    ap.add_argument("--every", type=int, default=21)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--fees", type=float, default=0.0014)
    args = ap.parse_args()

    t0 = time.perf_counter()
    p, t = make_inputs(4, 50, 10, 0)
    simulate_vectorbt(p, t, args.fees)                     # import + numba compile / cache load
    warm = time.perf_counter() - t0

    print(f"simulate bench: {args.assets} assets x {args.days} days, rebalance every {args.every} days, "
          f"fees {args.fees}, median of {args.reps} runs after warm-up (vectorbt warm-up {warm:.1f} s)")
    print(f"{'seed':>4} {'reference_ms':>12} {'vectorbt_ms':>11} {'ratio':>7} {'rel_final_diff':>14} "
          f"{'max_ret_diff':>12} {'final_equity':>12}")
    ratios, rel_diffs, ret_diffs = [], [], []
    for seed in range(args.seeds):
        prices, targets = make_inputs(args.assets, args.days, args.every, seed)
        simulate_reference(prices, targets, args.fees)
        simulate_vectorbt(prices, targets, args.fees)
        t_ref, ref = timed(lambda: simulate_reference(prices, targets, args.fees), args.reps)
        t_vbt, vb = timed(lambda: simulate_vectorbt(prices, targets, args.fees), args.reps)
        rel = abs(vb.equity.iloc[-1] / ref.equity.iloc[-1] - 1.0)
        rdiff = float((vb.returns - ref.returns).abs().max())
        ratios.append(t_vbt / t_ref)
        rel_diffs.append(rel)
        ret_diffs.append(rdiff)
        print(f"{seed:>4} {t_ref * 1e3:>12.2f} {t_vbt * 1e3:>11.1f} {t_vbt / t_ref:>6.1f}x {rel:>14.2e} "
              f"{rdiff:>12.2e} {ref.equity.iloc[-1]:>12.6f}")
    print(f"ratio vectorbt/reference: median {statistics.median(ratios):.1f}x, min {min(ratios):.1f}x; "
          f"max relative final-equity difference {max(rel_diffs):.2e}; "
          f"max abs daily-return difference {max(ret_diffs):.2e}")


if __name__ == "__main__":
    main()
