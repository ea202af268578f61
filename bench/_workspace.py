"""Shared by the bench scripts: an offline workspace (temp runs dir + lakehouse) and `run_book.py` calls."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
AS_OF = "2026-11-25T06:00:00Z"  # a fixed clock: the simulated venue gives the same bars every run


def offline_env(lake: Path, as_of: str | None = AS_OF, **overrides: str) -> dict[str, str]:
    """This process's environment with the lakehouse (and the sim clock) pointed at a workspace."""
    env = dict(os.environ, FW_DATA__LAKEHOUSE=str(lake), **overrides)
    if as_of:
        env["FW_SOURCE__AS_OF"] = as_of
    return env


def book(runs: Path, env: dict, *argv: str) -> tuple[float, dict]:
    """Run `run_book.py --runs-dir RUNS ARGV...`; return the wall time and the newest run's manifest.

    A failed run stops the benchmark with the tail of its output (a benchmark of a failure is no figure).
    """
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "run_book.py", "--runs-dir", str(runs), *argv], cwd=ROOT, env=env,
                          capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"run_book.py {' '.join(argv)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    newest = max(runs.glob("*/manifest.json"), key=lambda p: p.stat().st_mtime)
    return wall, json.loads(newest.read_text())
