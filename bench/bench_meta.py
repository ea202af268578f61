"""Benchmark: the meta phase on Ray vs the same sleeves one after another, and the whole offline demo.

1. An offline data run in a temp workspace, then a meta of 2 sleeves (demo_meta_pair) and of 4 sleeves
   (the four rating sleeves), each `--executor local`, on its own Ray and on a running workbook cluster
   (`run_book.py cluster start`; its first meta creates the warm sleeve workers, `engine.warm`, the second
   one is timed against sequential): wall times, the ratios to sequential (targets on a running cluster:
   <= 0.6 for 2 sleeves, <= 0.55 for 4, on 2 cores) and Ray's start-up time on its own.
2. `run_book.py demo` from a cold lakehouse: total wall time (target <= 45 s) and how it splits
   between the data runs, Ray start-up, the sleeves and the meta stages.
Usage: python bench/bench_meta.py [--skip-pairs] [--skip-demo]
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from _workspace import book, offline_env  # noqa: E402

FOUR = ("[{id: all_long, profile: binance_spot_rating_all_long}, {id: all_short, profile: binance_spot_rating_all_short},"
        " {id: ma_long, profile: binance_spot_rating_ma_long}, {id: ma_short, profile: binance_spot_rating_ma_short}]")


def sleeves_doc(runs: Path, manifest: dict) -> dict:
    return json.loads((runs / manifest["run_id"] / "artifacts" / "sleeves.json").read_text())


def pairs(tmp: Path) -> None:
    """Each meta three ways, every sleeve computed (--no-cache: no run restores another's stages): one after
    another in-process, on the meta's own Ray instance, and on a running workbook cluster (no Ray start-up)."""
    from quantlib.engine import cluster

    runs, lake = tmp / "runs", tmp / "lake"
    env = offline_env(lake)
    book(runs, env, "data", "--profile", "demo")
    print(f"{'meta':<22} {'local s':>8} {'ray s':>7} {'ray start s':>11} {'ray/local':>9} {'cluster 1st s':>13} "
          f"{'cluster s':>9} {'cluster/local':>13}")
    for label, profile, extra, target in (("2 sleeves (pair)", "demo_meta_pair", {}, 0.6),
                                          ("4 sleeves (ratings)", "demo_meta_pair", {"FW_META__SLEEVES": FOUR}, 0.55)):
        e = dict(env, **extra)
        local_wall, _ = book(runs, e, "meta", profile, "--executor", "local", "--no-cache")
        ray_wall, ray_manifest = book(runs, e, "meta", profile, "--executor", "ray", "--no-cache")
        start = max(s.get("ray_start_seconds") or 0 for s in sleeves_doc(runs, ray_manifest)["sleeves"])
        cluster.start(runs)
        try:
            first_wall, _ = book(runs, e, "meta", profile, "--no-cache")  # creates the warm workers
            cluster_wall, cluster_manifest = book(runs, e, "meta", profile, "--no-cache")
            doc = sleeves_doc(runs, cluster_manifest)
            assert doc["ray_cluster"] == "workbook" and all(s["worker"]["sleeves_run"] > 1 for s in doc["sleeves"])
        finally:
            cluster.stop(runs)
        print(f"{label:<22} {local_wall:>8.1f} {ray_wall:>7.1f} {start:>11.1f} {ray_wall / local_wall:>9.2f} "
              f"{first_wall:>13.1f} {cluster_wall:>9.1f} {cluster_wall / local_wall:>13.2f}  (target <= {target})")


def demo(tmp: Path) -> None:
    runs, lake = tmp / "demo_runs", tmp / "demo_lake"
    wall, _ = book(runs, offline_env(lake, as_of=None), "demo")  # the demo's own clock: now
    manifests = {m.parent.name: json.loads(m.read_text()) for m in runs.glob("*/manifest.json")}
    print(f"run_book.py demo from a cold lakehouse: {wall:.1f} s wall (target <= 45 s on an idle machine)")
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
