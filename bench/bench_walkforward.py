"""Benchmark: the walk-forward of one demo sleeve with its windows decided sequentially vs in parallel.

Makes an offline data run and a sleeve run (`--skip-validation --skip-analysis`) in a temp workspace, then
runs the production `walkforward.run` in this process on what the validate stage reads (`ctx.read` of
returns, screener, benchmark and the scanners of `universe.json`, the run's resolved profile) with
`backtest.workers=1` and with `backtest.workers` auto (a forked pool sized to the cores this process may
use), alternating, `--repeat` times after one warm-up run (imports, vectorbt's numba cache). Checks that
both give the same result (every frame exactly) and reports the wall times, the ratio parallel /
sequential and the share of the sequential run that stays sequential (universe rebuild, simulations,
benchmarks, metrics). Target: ratio <= 0.65 on 2 cores.
Usage: python bench/bench_walkforward.py [--profile demo_crypto_long] [--repeat 3] [--run SLEEVE_RUN_DIR]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from _workspace import ROOT, book, offline_env  # noqa: E402

sys.path.insert(0, str(ROOT))

TARGET = 0.65


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--profile", default="demo_crypto_long")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--run", type=Path, help="an existing sleeve run directory: measure on it (no new runs)")
    args = parser.parse_args()
    if args.run:
        return measure(args.run, args.repeat)
    with tempfile.TemporaryDirectory() as tmp:
        runs, lake = Path(tmp) / "runs", Path(tmp) / "lake"
        env = offline_env(lake)
        book(runs, env, "data", "--profile", "demo")
        _, manifest = book(runs, env, "sleeve", args.profile, "--skip-validation", "--skip-analysis")
        measure(runs / manifest["run_id"], args.repeat)


def measure(run_dir: Path, repeat: int) -> None:
    import pandas as pd

    from quantlib.backtest import walkforward
    from quantlib.core import parallel
    from quantlib.core.registry import find_stage
    from quantlib.core.runs import Run
    from quantlib.engine.context import StageContext
    from quantlib.stages.sleeve import scanners_of

    ctx = StageContext(run=Run.at(run_dir), phase="sleeve", stage=find_stage("sleeve", "validate")[1])
    inputs = (ctx.read("returns"), ctx.read("screener"), scanners_of(ctx), ctx.read("benchmark")["benchmark"])

    def profile(workers: int | None):
        bt = ctx.profile.backtest.model_copy(update={"workers": workers})
        return ctx.profile.model_copy(update={"backtest": bt})

    serial = defaultdict(float)  # seconds of the parts that stay sequential, in the sequential runs

    def timed(key: str, fn):
        def wrapper(*a, **k):
            start = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                serial[key] += time.perf_counter() - start
        return wrapper

    def walk_forward(workers: int | None, record: bool = False):
        originals = (walkforward.point_in_time_pool, walkforward.trade, walkforward._benchmarks)
        if record:
            walkforward.point_in_time_pool = timed("universe", originals[0])
            walkforward.trade = timed("simulations", originals[1])
            walkforward._benchmarks = timed("benchmarks", originals[2])
        try:
            start = time.perf_counter()
            wf = walkforward.run(*inputs, profile(workers))
            return wf, time.perf_counter() - start
        finally:
            walkforward.point_in_time_pool, walkforward.trade, walkforward._benchmarks = originals

    workers = parallel.local_workers(None, 10_000)
    base, _ = walk_forward(1)  # warm-up
    rows = []
    for k in range(repeat):
        if k % 2 == 0:
            seq, seq_s = walk_forward(1, record=True)
            par, par_s = walk_forward(None)
        else:
            par, par_s = walk_forward(None)
            seq, seq_s = walk_forward(1, record=True)
        rows.append((seq_s, par_s))
        for name in ("returns", "benchmarks", "windows", "universe", "holdings", "selection", "turnover", "costs",
                     "events", "metrics", "eligibility", "funnel"):
            pd.testing.assert_frame_equal(getattr(seq, name), getattr(par, name), check_exact=True)
            pd.testing.assert_frame_equal(getattr(base, name), getattr(par, name), check_exact=True)
        assert all(seq.targets[m].equals(par.targets[m]) for m in seq.targets)

    n = len(base.windows)
    print(f"walk-forward of {ctx.profile.name}: {n} windows ({int(base.windows['selected'].eq(0).sum())} cash) x "
          f"{len(ctx.profile.optimizer.profiles)} risk profiles, {len(base.returns)} days; "
          f"{parallel.available_cores()} cores available -> {min(workers, n)} workers")
    print(f"{'run':<5} {'sequential s':>12} {'parallel s':>10} {'parallel/seq':>12}")
    for k, (seq_s, par_s) in enumerate(rows, start=1):
        print(f"{k:<5} {seq_s:>12.2f} {par_s:>10.2f} {par_s / seq_s:>12.2f}")
    ratio = statistics.median(p / s for s, p in rows)
    seq_mean = statistics.mean(s for s, _ in rows)
    stays = sum(serial.values()) / repeat
    print(f"median parallel/sequential {ratio:.2f} (target <= {TARGET} on 2 cores): "
          f"{'OK' if ratio <= TARGET else 'MISSED'}; results identical (every frame exact, targets equal)")
    print(f"sequential part of a sequential run: {stays:.2f} of {seq_mean:.2f} s "
          f"({', '.join(f'{k} {v / repeat:.2f}' for k, v in serial.items())}): the best ratio on {workers} workers "
          f"is ~{(stays + (seq_mean - stays) / workers) / seq_mean:.2f}")


if __name__ == "__main__":
    main()
