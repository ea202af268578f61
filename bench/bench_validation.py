"""Benchmark: the whole walk-forward validation of a demo sleeve with each optimizer engine.

Makes an offline data run and a sleeve run (`--skip-validation`) in a temp workspace, then runs
`backtest.run` in this process on that run's artifacts (~1 year of daily out-of-sample bars, 10-day
steps, all five risk profiles) with `optimizer.engine` native and riskfolio, and reports wall time, the
ratio, and where the time goes (the point-in-time universe rebuild, selection, optimization,
simulation incl. vectorbt, the rest). The reference run for the universe rebuild is the same
walk-forward with the production universe held fixed in every window (the cost model of a
survivorship-biased backtest): the rebuild's ratio to it is the price of honest universes.
The windows are decided sequentially (`backtest.workers=1`; the parallel speed-up is
bench_walkforward.py's). Usage: python bench/bench_validation.py [--profile demo_crypto_long]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from _workspace import ROOT, book, offline_env  # noqa: E402

sys.path.insert(0, str(ROOT))


def timed(table: dict, key: str, fn):
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            table[key] += time.perf_counter() - start
    return wrapper


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--profile", default="demo_crypto_long")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        runs, lake = Path(tmp) / "runs", Path(tmp) / "lake"
        env = offline_env(lake)
        book(runs, env, "data", "--profile", "demo")
        book(runs, env, "sleeve", args.profile, "--skip-validation", "--skip-analysis")
        sleeve = next(p.parent for p in runs.glob(f"{args.profile}-*/manifest.json"))
        import pandas as pd

        from quantlib.backtest import walkforward as backtest
        from quantlib.sleeve import window
        from quantlib.core.profiles import load_profile
        from quantlib.data.scanners import load_scanner

        art = {n: pd.read_parquet(sleeve / "artifacts" / f"{n}.parquet")
               for n in ("returns", "screener", "candidates", "benchmark")}
        scanners = [load_scanner(n) for n in load_profile(args.profile).profile.sleeve.scanners]

        def walk_forward(profile, universe=None):
            return backtest.run(art["returns"], art["screener"], scanners, art["benchmark"]["benchmark"], profile,
                                universe=universe)

        def fixed_universe(returns, screener, scanners_, profile, dates, health_window):
            """Today's candidates in every window (no rebuild): the reference cost model."""
            today = art["candidates"]
            return pd.concat([today.assign(date=d) for d in dates], ignore_index=True), pd.DataFrame(
                {"date": dates, "scanner": "fixed", "step": 0, "filter": "universe", "remaining": len(today)})

        results = {}
        for engine in ("native", "riskfolio"):
            # one process: the timers wrap functions that forked workers would run out of their sight
            profile = load_profile(args.profile, env={"FW_OPTIMIZER__ENGINE": engine,
                                                      "FW_BACKTEST__WORKERS": "1"}).profile
            table: dict[str, float] = defaultdict(float)
            originals = (window.select_window, window.optimize_window, backtest._simulate,
                         backtest.point_in_time_pool)
            window.select_window = timed(table, "selection", originals[0])
            window.optimize_window = timed(table, "optimization", originals[1])
            backtest._simulate = timed(table, "simulation", originals[2])
            backtest.point_in_time_pool = timed(table, "universe", originals[3])
            try:
                if engine == "native":  # warm imports and vectorbt's numba cache outside the timing
                    walk_forward(profile)
                    table.clear()
                    start = time.perf_counter()
                    fixed = walk_forward(profile, universe=fixed_universe)
                    results["fixed"] = time.perf_counter() - start
                    table.clear()
                start = time.perf_counter()
                wf = walk_forward(profile)
                wall = time.perf_counter() - start
            finally:
                (window.select_window, window.optimize_window, backtest._simulate,
                 backtest.point_in_time_pool) = originals
            results[engine] = wall
            rest = wall - sum(table.values())
            print(f"{engine:<9} {wall:6.1f} s for {len(wf.windows)} windows x {len(profile.optimizer.profiles)} profiles "
                  f"({len(wf.returns)} days): universe rebuild {table['universe']:.2f} s, "
                  f"selection {table['selection']:.1f} s, optimization "
                  f"{table['optimization']:.1f} s, simulation (reference + vectorbt) {table['simulation']:.1f} s, "
                  f"other {rest:.1f} s")
        print(f"riskfolio / native wall time: {results['riskfolio'] / results['native']:.1f}x")
        print(f"point-in-time universe / fixed universe (native; eligible per window: fixed "
              f"{fixed.windows['eligible'].mean():.0f}, point-in-time {wf.windows['eligible'].mean():.0f}): "
              f"{results['native'] / results['fixed']:.2f}x wall time")


if __name__ == "__main__":
    main()
