"""Benchmark: native vs riskfolio engine of quantlib.optimize (SPEC §2.5), a script, not a test.

For each method and size (atoms x 1000 days of seeded synthetic factor returns): median wall time
of one `optimize(...)` call per engine after a warm-up (the whole call: validation, Ledoit-Wolf
covariance, solve, caps), the ratio riskfolio/native and the max |weight difference|.

    python bench/bench_optimize.py [--sizes 25 200 500] [--reps 15] [--rf-reps 5] [--clusters]
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import pandas as pd

from quantlib.optimize import METHODS, optimize


def factor_returns(n_atoms: int, n_days: int = 1000, n_factors: int = 5, seed: int = 7) -> pd.DataFrame:
    """Seeded synthetic daily returns with a factor structure and heterogeneous idiosyncratic risk."""
    rng = np.random.default_rng(seed)
    factors = rng.normal(0.0, 0.008, (n_days, n_factors))
    loadings = rng.normal(0.6, 0.4, (n_atoms, n_factors)) * (rng.random((n_atoms, n_factors)) < 0.6)
    idio = rng.normal(0.0, 1.0, (n_days, n_atoms)) * rng.uniform(0.006, 0.025, n_atoms)
    drift = rng.normal(0.0003, 0.0004, n_atoms)
    cols = [f"A{i:04d}" for i in range(n_atoms)]
    return pd.DataFrame(factors @ loadings.T + idio + drift, columns=cols)


def timed(fn, reps: int) -> tuple[float, pd.Series]:
    out = fn()                                   # warm-up (imports, first-call caches)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[25, 200, 500])
    ap.add_argument("--reps", type=int, default=15, help="native repetitions after warm-up")
    ap.add_argument("--rf-reps", type=int, default=5, help="riskfolio repetitions (2 above 200 atoms)")
    ap.add_argument("--clusters", action="store_true", help="add 8 cluster caps of 0.2 and atom cap 0.05")
    args = ap.parse_args()

    print(f"median wall time per optimize() call, 1000 days; load average {os.getloadavg()[0]:.2f}")
    print(f"{'method':<13} {'atoms':>5} {'native ms':>10} {'riskfolio ms':>13} {'ratio':>8} {'max|dw|':>10}")
    for n in args.sizes:
        rets = factor_returns(n)
        kw: dict = {}
        if args.clusters:
            kw = {"clusters": pd.Series(np.arange(n) % 8, index=rets.columns), "cluster_cap": 0.2,
                  "atom_cap": max(0.05, 1.0 / n)}
        for method in METHODS:
            rf_reps = args.rf_reps if n <= 200 else 2
            t_nat, w_nat = timed(lambda r=rets, m=method, k=kw: optimize(r, m, "native", **k), args.reps)
            t_rf, w_rf = timed(lambda r=rets, m=method, k=kw: optimize(r, m, "riskfolio", **k), rf_reps)
            diff = float(np.abs(w_nat - w_rf).max())
            print(f"{method:<13} {n:>5} {t_nat * 1e3:>10.2f} {t_rf * 1e3:>13.1f} {t_rf / t_nat:>8.1f} {diff:>10.1e}",
                  flush=True)


if __name__ == "__main__":
    main()
