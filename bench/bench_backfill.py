"""Benchmark: point-in-time backfill of N symbols x T bars with bounded memory.

Writes a synthetic lakehouse (random walks) in a child process, then runs `features.backfill` in
another child process and reports its wall time and peak RSS (ru_maxrss).
Usage: python bench/bench_backfill.py [--symbols 5000] [--bars 2000] [--chunk 250]
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

MAKE = textwrap.dedent("""
    import sys, numpy as np, pandas as pd
    from quantlib.data.lakehouse import Lakehouse
    lake, n, t = Lakehouse(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    rng = np.random.default_rng(0)
    ts = pd.date_range("2020-01-01", periods=t, freq="D", tz="UTC")
    for i in range(n):
        close = 100 * np.exp(np.cumsum(rng.normal(0, 0.03, t)))
        high, low = close * 1.01, close * 0.99
        frame = pd.DataFrame({"ts": ts, "open": np.r_[close[0], close[:-1]], "high": high, "low": low,
                              "close": close, "volume": rng.lognormal(10, 1, t)})
        frame.to_parquet(lake.ohlcv_path(f"BENCH:S{i:05d}", "1d"), index=False)
""")

RUN = textwrap.dedent("""
    import resource, sys, time
    from quantlib.data.features import backfill
    from quantlib.data.lakehouse import Lakehouse
    lake = Lakehouse(sys.argv[1])
    symbols = lake.stored_symbols("1d")
    start = time.perf_counter()
    report = backfill(lake, symbols, "1d", int(sys.argv[2]))
    wall = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2
    print(f"backfill: {report['symbols']} symbols, {report['rows']:,} rows, {report['chunks']} chunks "
          f"of {report['chunk_size']}: {wall:.1f} s ({report['rows'] / wall:,.0f} symbol-bars/s), "
          f"peak RSS {peak:.2f} GiB (target <= 4 GiB)")
""")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--symbols", type=int, default=5000)
    parser.add_argument("--bars", type=int, default=2000)
    parser.add_argument("--chunk", type=int, default=250)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "ohlcv" / "1d").mkdir(parents=True)
        subprocess.run([sys.executable, "-c", MAKE, tmp, str(args.symbols), str(args.bars)], cwd=ROOT, check=True)
        subprocess.run([sys.executable, "-c", RUN, tmp, str(args.chunk)], cwd=ROOT, check=True)


if __name__ == "__main__":
    main()
