"""`cluster start|status|stop`: the workbook's own Ray head for a runs root (`engine.cluster`)."""
from __future__ import annotations

import argparse

from quantlib.commands.common import runs_dir
from quantlib.engine import cluster


def start(args: argparse.Namespace) -> int:
    root = runs_dir(args)
    print(f"starting a Ray head node for {root} (10-40 s) ...", flush=True)
    cluster.start(root, host=args.host, port=args.port, num_cpus=args.num_cpus)
    print("\n".join(cluster.status_lines(root)[1]))
    return 0


def status(args: argparse.Namespace) -> int:
    running, lines = cluster.status_lines(runs_dir(args))
    print("\n".join(lines))
    return 0 if running else 1


def stop(args: argparse.Namespace) -> int:
    root = runs_dir(args)
    stopped = cluster.stop(root)
    print(f"stopped the workbook cluster at {stopped.address} (pid {stopped.pid})" if stopped
          else f"no workbook cluster in {root}")
    return 0
