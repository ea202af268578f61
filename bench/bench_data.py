"""Benchmark: `run_book.py data` on the simulated venue, cold lakehouse then a second (fresh) run.

Prints wall times, the share spent in stage notebooks vs compute, and the second run as a fraction
of the first. Usage: python bench/bench_data.py [--bases N]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def data_run(runs: Path, lake: Path, bases: int | None) -> tuple[float, dict]:
    env = dict(os.environ, FW_DATA__LAKEHOUSE=str(lake), FW_SOURCE__AS_OF="2026-11-25T06:00:00Z")
    if bases:
        env["FW_SOURCE__N_BASES"] = str(bases)
    start = time.perf_counter()
    subprocess.run([sys.executable, "run_book.py", "--runs-dir", str(runs), "data", "--profile", "demo"],
                   cwd=ROOT, env=env, check=True, capture_output=True)
    wall = time.perf_counter() - start
    manifest = max(runs.glob("*/manifest.json"), key=lambda p: p.stat().st_mtime)
    return wall, json.loads(manifest.read_text())


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
