"""Benchmark: the stage cache. An unchanged rerun as a ratio to the cold run, for a data run and a sleeve.

Data: a cold run fills an empty lakehouse, a second run brings it to its steady state (the first run's
stages changed the lakehouse, so they are not candidates), a third run is the unchanged rerun. Sleeve:
`sleeve PROFILE` (validation and post-analysis included) twice on that data run. Each rerun must
restore every stage (checked), and each is timed against `--no-cache` runs of the same commands, in
this process, one after the other. Targets: data rerun / cold <= 0.3, sleeve rerun / cold <= 0.2.
Usage: python bench/bench_cache.py [--profile demo_crypto_long]
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from _workspace import book, offline_env


def cached_stages(manifest: dict) -> str:
    stages = manifest["stages"].values()
    return f"{sum(1 for s in stages if s.get('cached_from'))}/{len(manifest['stages'])} stages restored"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="demo_crypto_long")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_cache_") as tmp:
        runs, env = Path(tmp) / "runs", offline_env(Path(tmp) / "lakehouse")
        cold_data, _ = book(runs, env, "data", "--profile", "demo", "--no-cache")
        book(runs, env, "data", "--profile", "demo")  # the lakehouse's steady state
        again_data, manifest = book(runs, env, "data", "--profile", "demo")
        data_note = cached_stages(manifest)
        cold_sleeve, _ = book(runs, env, "sleeve", args.profile, "--no-cache")
        again_sleeve, manifest = book(runs, env, "sleeve", args.profile)
        sleeve_note = cached_stages(manifest)
    print(f"data   cold {cold_data:6.1f} s  rerun {again_data:5.1f} s  ratio {again_data / cold_data:.2f} "
          f"(target <= 0.3; {data_note})")
    print(f"sleeve cold {cold_sleeve:6.1f} s  rerun {again_sleeve:5.1f} s  ratio {again_sleeve / cold_sleeve:.2f} "
          f"(target <= 0.2; {sleeve_note})")


if __name__ == "__main__":
    main()
