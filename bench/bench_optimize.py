"""Benchmark: native vs riskfolio engine of quantlib.portfolio.optimize (SPEC §2.5), a script, not a test.

For each method and size (atoms x 1000 days of seeded synthetic factor returns): the median time of
one whole `optimize(...)` call per engine (validation, Ledoit-Wolf covariance, solve, caps) after a
warm-up, the ratio riskfolio/native and the max |weight difference| between the engines.
Native and riskfolio repetitions are interleaved so both see the same machine load; besides wall
time the table shows the ratio of process CPU time (BLAS is limited to one thread around every
call, so CPU time is what the wall time would be on an idle machine and is robust to neighbours).

    python bench/bench_optimize.py [--sizes 25 200 500] [--reps 5] [--native-per-rep 3] [--clusters]
"""
from __future__ import annotations

import argparse
import gc
import os
import statistics
import time
from collections.abc import Callable

import numpy as np
import pandas as pd

from quantlib.core.enums import RiskMethod
from quantlib.portfolio.optimize import optimize


def factor_returns(n_atoms: int, n_days: int = 1000, n_factors: int = 5, seed: int = 7) -> pd.DataFrame:
    """Seeded synthetic daily returns with a factor structure and heterogeneous idiosyncratic risk."""
    rng = np.random.default_rng(seed)
    factors = rng.normal(0.0, 0.008, (n_days, n_factors))
    loadings = rng.normal(0.6, 0.4, (n_atoms, n_factors)) * (rng.random((n_atoms, n_factors)) < 0.6)
    idio = rng.normal(0.0, 1.0, (n_days, n_atoms)) * rng.uniform(0.006, 0.025, n_atoms)
    drift = rng.normal(0.0003, 0.0004, n_atoms)
    cols = [f"A{i:04d}" for i in range(n_atoms)]
    return pd.DataFrame(factors @ loadings.T + idio + drift, columns=cols)


def _once(fn: Callable[[], pd.Series]) -> tuple[float, float, pd.Series]:
    c0, t0 = time.process_time(), time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, time.process_time() - c0, out


def compare(native: Callable[[], pd.Series], riskfolio: Callable[[], pd.Series], reps: int,
            native_per_rep: int) -> dict:
    """Interleaved timings (after one warm-up call each): medians of wall and CPU seconds.

    The garbage collector is off while timing (as in timeit) and run between repetitions,
    followed by an untimed native call: riskfolio leaves large cvxpy object graphs behind whose
    collection would otherwise land in the next call, and a full collection evicts the caches.
    """
    w_nat, w_rf = native(), riskfolio()
    wall = {"native": [], "riskfolio": []}
    cpu = {"native": [], "riskfolio": []}
    for _ in range(reps):
        gc.collect()
        native()
        gc.disable()
        try:
            for _ in range(native_per_rep):
                t, c, w_nat = _once(native)
                wall["native"].append(t)
                cpu["native"].append(c)
            t, c, w_rf = _once(riskfolio)
            wall["riskfolio"].append(t)
            cpu["riskfolio"].append(c)
        finally:
            gc.enable()
    med = {f"{k}_{e}": statistics.median(v[e]) for k, v in (("wall", wall), ("cpu", cpu)) for e in v}
    med["diff"] = float(np.abs(w_nat - w_rf).max())
    return med


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[25, 200, 500])
    ap.add_argument("--reps", type=int, default=5, help="riskfolio calls per cell (2 above 200 atoms)")
    ap.add_argument("--native-per-rep", type=int, default=3, help="native calls per riskfolio call")
    ap.add_argument("--clusters", action="store_true", help="8 clusters capped at 0.2, atom cap 0.05")
    args = ap.parse_args()

    print(f"1000 days; median per optimize() call; load average at start {os.getloadavg()[0]:.2f}")
    print(f"{'method':<13} {'atoms':>5} {'native ms':>10} {'riskfolio ms':>13} {'ratio':>7} "
          f"{'cpu ratio':>9} {'max|dw|':>9}")
    for n in args.sizes:
        rets = factor_returns(n)
        kw: dict = {}
        if args.clusters:
            kw = {"clusters": pd.Series(np.arange(n) % 8, index=rets.columns), "cluster_cap": 0.2,
                  "atom_cap": max(0.05, 1.0 / n)}
        for method in RiskMethod:
            m = compare(lambda r=rets, mt=method, k=kw: optimize(r, mt, "native", **k),
                        lambda r=rets, mt=method, k=kw: optimize(r, mt, "riskfolio", **k),
                        args.reps if n <= 200 else 2, args.native_per_rep)
            print(f"{method:<13} {n:>5} {m['wall_native'] * 1e3:>10.2f} {m['wall_riskfolio'] * 1e3:>13.1f} "
                  f"{m['wall_riskfolio'] / m['wall_native']:>7.1f} {m['cpu_riskfolio'] / m['cpu_native']:>9.1f} "
                  f"{m['diff']:>9.1e}", flush=True)


if __name__ == "__main__":
    main()
