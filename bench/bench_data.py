"""Benchmark: `run_book.py data` on the simulated venue, cold lakehouse then a second (fresh) run.

Prints wall times, the share spent in stage notebooks vs compute, and the second run as a fraction
of the first. Usage: python bench/bench_data.py [--bases N]
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from _workspace import book, offline_env  # noqa: E402  (bench/ is on sys.path when run as a script)


def data_run(runs: Path, lake: Path, bases: int | None) -> tuple[float, dict]:
    extra = {"FW_SOURCE__N_BASES": str(bases)} if bases else {}
    return book(runs, offline_env(lake, **extra), "data", "--profile", "demo")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bases", type=int, default=None, help="limit sim bases (default: all)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        runs, lake = Path(tmp) / "runs", Path(tmp) / "lake"
        cold, m1 = data_run(runs, lake, args.bases)
        warm, m2 = data_run(runs, lake, args.bases)
        import pandas as pd

        report1 = pd.read_parquet(runs / m1["run_id"] / "artifacts/ingest_report.parquet")
        report2 = pd.read_parquet(runs / m2["run_id"] / "artifacts/ingest_report.parquet")
        bars = int(report1["bars"].max())
        print(f"symbols ingested: {int((report1['status'] == 'added').sum())} (max {bars} bars each)")
        for label, wall, m, rep in (("cold", cold, m1, report1), ("second", warm, m2, report2)):
            stages = {k: v["seconds"] for k, v in m["stages"].items()}
            print(f"{label:>6} run: {wall:6.1f} s wall · stages {json.dumps(stages)} · "
                  f"ingest statuses {rep['status'].value_counts().to_dict()}")
        print(f"ingest stage, second/cold: {m2['stages']['ingest']['seconds'] / m1['stages']['ingest']['seconds']:.2f}")
        print(f"whole run, second/cold:    {warm / cold:.2f} (kernel start + fixed stages dominate the rest)")


if __name__ == "__main__":
    main()
