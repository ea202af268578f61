"""Benchmark: the meta phase on Ray vs the same sleeves one after another, and the whole offline demo.

1. An offline data run in a temp workspace, then a meta of 2 sleeves (demo_meta_pair) and of 4 sleeves
   (the four rating sleeves), each with `--executor ray` and `--executor local`: wall times, the
   ratio ray/sequential (target <= 0.6 for 2 sleeves on 2 cores) and Ray's start-up time on its own.
2. `run_book.py demo` from a cold lakehouse: total wall time (target <= 90 s) and how it splits
   between the data runs, Ray start-up, the sleeves and the meta stages.
Usage: python bench/bench_meta.py [--skip-pairs] [--skip-demo]
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
FOUR = ("[{id: all_long, profile: binance_spot_rating_all_long}, {id: all_short, profile: binance_spot_rating_all_short},"
        " {id: ma_long, profile: binance_spot_rating_ma_long}, {id: ma_short, profile: binance_spot_rating_ma_short}]")


def book(runs: Path, env: dict, *argv: str) -> tuple[float, dict]:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "run_book.py", "--runs-dir", str(runs), *argv], cwd=ROOT, env=env,
                          capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"run_book.py {' '.join(argv)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    newest = max(runs.glob("*/manifest.json"), key=lambda p: p.stat().st_mtime)
    return wall, json.loads(newest.read_text())


def sleeves_doc(runs: Path, manifest: dict) -> dict:
    return json.loads((runs / manifest["run_id"] / "artifacts" / "sleeves.json").read_text())


def pairs(tmp: Path) -> None:
    runs, lake = tmp / "runs", tmp / "lake"
    env = dict(os.environ, FW_DATA__LAKEHOUSE=str(lake), FW_SOURCE__AS_OF="2026-11-25T06:00:00Z")
    book(runs, env, "data", "--profile", "demo")
    print(f"{'meta':<22} {'ray s':>7} {'ray start s':>11} {'local s':>8} {'ray/local':>9}")
    for label, profile, extra in (("2 sleeves (pair)", "demo_meta_pair", {}),
                                  ("4 sleeves (ratings)", "demo_meta_pair", {"FW_META__SLEEVES": FOUR})):
        e = dict(env, **extra)
        ray_wall, ray_manifest = book(runs, e, "meta", profile, "--executor", "ray")
        local_wall, _ = book(runs, e, "meta", profile, "--executor", "local")
        start = max(s.get("ray_start_seconds") or 0 for s in sleeves_doc(runs, ray_manifest)["sleeves"])
        print(f"{label:<22} {ray_wall:>7.1f} {start:>11.1f} {local_wall:>8.1f} {ray_wall / local_wall:>9.2f}")


def demo(tmp: Path) -> None:
    runs, lake = tmp / "demo_runs", tmp / "demo_lake"
    env = dict(os.environ, FW_DATA__LAKEHOUSE=str(lake))
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "run_book.py", "--runs-dir", str(runs), "demo"], cwd=ROOT, env=env,
                          capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"demo failed:\n{done.stdout[-3000:]}")
    manifests = {m.parent.name: json.loads(m.read_text()) for m in runs.glob("*/manifest.json")}
    print(f"run_book.py demo from a cold lakehouse: {wall:.1f} s wall (target <= 90 s)")
    for run_id, m in sorted(manifests.items(), key=lambda kv: kv[1]["created_at"]):
        stages = {k: v.get("seconds") for k, v in m["stages"].items()}
        print(f"  {m['phase']:<5} {m['profile']:<14} stages {json.dumps(stages)}")
        if m["phase"] == "meta":
            doc = sleeves_doc(runs, m)
            print(f"        Ray start-up {max(s.get('ray_start_seconds') or 0 for s in doc['sleeves']):.1f} s; "
                  + ", ".join(f"{s['id']} {s['seconds']} s" for s in doc["sleeves"]))
            for s in doc["sleeves"]:
                sm = json.loads((Path(s["run_dir"]) / "manifest.json").read_text())
                secs = sum(v.get("seconds") or 0 for v in sm["stages"].values())
                print(f"        sleeve {s['id']}: {secs:.1f} s in its 8 stage notebooks, "
                      f"validate {sm['stages'].get('validate', {}).get('seconds')} s")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--skip-pairs", action="store_true")
    parser.add_argument("--skip-demo", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if not args.skip_pairs:
            pairs(Path(tmp))
        if not args.skip_demo:
            demo(Path(tmp))


if __name__ == "__main__":
    main()
