"""Warm sleeve workers on the workbook cluster: Ray actors that have imported the book once.

A sleeve run as a plain Ray task pays a fresh worker process (Ray workers belong to one job, one meta)
and its imports -- papermill, nbformat, jupyter_client, pandas, quantlib's stage chain -- every meta. On
the workbook cluster (`run_book.py cluster start`, which the workbook owns and `cluster stop` ends) a meta
instead runs its sleeves in detached actors that outlive it: the first meta creates them, later ones
reuse them (`sleeves.json` records each sleeve's worker: pid, how many sleeves it has run).

- Named after the code they import: `fw-sleeve-<quantlib fingerprint>-<k>` in the `fractal-workbook`
  namespace, one per CPU of the cluster at most; an edit of quantlib gives new names, and the actors of
  other code are killed when a meta creates its own (their modules are not the driver's).
- No CPU reservation (`num_cpus=0`): idle actors must not hold the CPUs a resource-pinned sleeve task or
  another meta needs; the meta bounds how many sleeves run at once by the pool size, one per actor.
- A killed actor is restarted by Ray (`max_restarts=-1`, cold); its sleeve fails as a dead task does.
- Ray cannot interrupt a running method of a regular actor, so a meta interrupted by Ctrl-C / SIGTERM
  sends SIGINT to the actor process running each sleeve (same host), which the sleeve records as
  INTERRUPTED like a cancelled task; an actor on another host is killed instead (the meta records it).
"""
from __future__ import annotations

import importlib
import os
import signal
import socket
import time
from pathlib import Path

from quantlib.core import storage
from quantlib.core.errors import DataError
from quantlib.engine import nodes

NAMESPACE = "fractal-workbook"
PREFIX = "fw-sleeve-"
#: what a sleeve run imports in the worker (the stage kernels import the rest themselves)
WARM_MODULES = ("pandas", "pyarrow.parquet", "nbformat", "jupyter_client", "papermill", "quantlib.engine.fanout",
                "quantlib.engine.notebook_engine", "quantlib.stages.external")


def actor_name(fingerprint: str, k: int) -> str:
    return f"{PREFIX}{fingerprint[:16]}-{k}"


class SleeveWorker:
    """One warm worker: imports once, then runs one sleeve spec at a time (`fanout.run_spec_on_node`)."""

    def __init__(self) -> None:
        start = time.perf_counter()
        for module in WARM_MODULES:
            importlib.import_module(module)
        self.import_s = round(time.perf_counter() - start, 2)
        self.runs = 0

    def run(self, spec: dict) -> dict:
        from quantlib.engine.fanout import run_spec_on_node

        self.runs += 1
        result = run_spec_on_node(spec)
        result["worker"] = {"kind": "warm actor", "pid": os.getpid(), "sleeves_run": self.runs,
                            "import_s": self.import_s}
        return result


def pool(size: int) -> list:
    """Up to `size` warm workers for the current quantlib code (connected Ray), created when missing; the
    workers of other code are killed first."""
    import ray

    fingerprint = nodes.package_fingerprint()
    mine = {actor_name(fingerprint, k) for k in range(size)}
    for info in ray.util.list_named_actors(all_namespaces=True):
        if info["namespace"] == NAMESPACE and info["name"].startswith(PREFIX) and \
                not info["name"].startswith(actor_name(fingerprint, 0)[:-1]):
            try:
                ray.kill(ray.get_actor(info["name"], namespace=NAMESPACE), no_restart=True)
            except ValueError:  # gone meanwhile
                pass
    worker = ray.remote(SleeveWorker)
    return [worker.options(name=name, namespace=NAMESPACE, lifetime="detached", get_if_exists=True, num_cpus=0,
                           max_restarts=-1, max_task_retries=0, max_concurrency=1).remote()
            for name in sorted(mine, key=lambda n: int(n.rsplit("-", 1)[1]))]


def interrupt(run_dir: Path, actor, since: float) -> None:
    """Interrupt the sleeve an actor runs: SIGINT to its process when its run recorded it (`node.json`, written
    after `since`, the submission) on this host -- the sleeve records its own interruption; else kill the
    actor (Ray restarts it; the meta records the sleeve INTERRUPTED, `executor.settle_nested`)."""
    import ray

    try:
        node = storage.read_json(Path(run_dir) / nodes.NODE_FILE)
    except (DataError, OSError):
        node = None
    if (node and node.get("host") == socket.gethostname() and isinstance(node.get("pid"), int)
            and float(node.get("epoch") or 0) >= since):
        try:
            os.kill(node["pid"], signal.SIGINT)
        except ProcessLookupError:  # it ended meanwhile
            pass
        return
    ray.kill(actor, no_restart=False)
