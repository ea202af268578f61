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
- Each worker keeps the stage kernel of its next sleeve started (`engine.kernel.prestart`): booted, the
  phase's imports done, claimed by the next run whose environment matches.
- A killed actor is restarted by Ray (`max_restarts=-1`, cold); its sleeve fails as a dead task does.
- Ray cannot cancel a running actor method, so a meta interrupted by Ctrl-C / SIGTERM asks each busy
  worker to raise KeyboardInterrupt in the thread running its sleeve (as `ray.cancel` does in a task): the
  sleeve records itself INTERRUPTED; a worker that does not answer is killed (the meta records it).
"""
from __future__ import annotations

import importlib
import os
import threading
import time
from collections.abc import Callable

from quantlib.engine import kernel, nodes

NAMESPACE = "fractal-workbook"
CONTROL = "control"  # the concurrency group of `interrupt`, `where` and `check` (answered while a sleeve runs)
INTERRUPT_S = 5.0
PREFIX = "fw-sleeve-"
#: what a sleeve run imports in the worker (the stage kernels import the rest themselves)
WARM_MODULES = ("pandas", "pyarrow.parquet", "nbformat", "jupyter_client", "papermill", "quantlib.engine.fanout",
                "quantlib.engine.notebook_engine", "quantlib.stages.external")


def actor_name(fingerprint: str, k: int) -> str:
    return f"{PREFIX}{fingerprint[:16]}-{k}"


class SleeveWorker:
    """One warm worker: imports once, then runs one sleeve spec at a time;
    `interrupt` (its own concurrency group, so it runs while a sleeve does) stops that sleeve."""

    def __init__(self) -> None:
        start = time.perf_counter()
        for module in WARM_MODULES:
            importlib.import_module(module)
        self.import_s = round(time.perf_counter() - start, 2)
        self.runs = 0
        self.running: int | None = None  # the thread running a sleeve
        self.node = nodes.this_node()["id"]
        self.prestart("sleeve")

    def where(self) -> str:
        """The id of the node this worker runs on."""
        return self.node

    def check(self, probe: Callable[[list], dict], tokens: list) -> dict:
        """The preflight's `probe(tokens)` here (`nodes.preflight`): a warm process answers at once, where a task
        would first start a worker for the meta's job (~1.5 s)."""
        return probe(tokens)

    def run(self, run_spec: Callable[[dict], dict], spec: dict) -> dict:
        """`run_spec(spec)` (`fanout.run_spec_on_node`, passed by reference: this module sits below the fan-out);
        then the kernel of the next run of the same phase is started, so it is ready when that run comes."""
        self.runs += 1
        self.running = threading.get_ident()
        try:
            result = run_spec(spec)
        finally:
            self.running = None
            self.prestart(spec["phase"])
        result["worker"] = {"kind": "warm actor", "pid": os.getpid(), "sleeves_run": self.runs,
                            "import_s": self.import_s}
        return result

    @staticmethod
    def prestart(phase: str) -> None:
        """`engine.kernel.prestart` for a nested run (no terminal); a kernel that cannot start now is started by
        the run that needs it, which then reports why."""
        try:
            kernel.prestart(phase, progress=False)
        except BaseException:  # noqa: BLE001 -- incl. an interrupt meant for the sleeve that just ended
            kernel.discard()

    def interrupt(self) -> bool:
        """A KeyboardInterrupt in the thread running a sleeve (what `ray.cancel` does to a task; Ray cannot
        cancel a running actor method): its `run_phase` records the run INTERRUPTED. False: nothing ran."""
        thread = self.running
        if thread is None:
            return False
        import ctypes

        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread), ctypes.py_object(KeyboardInterrupt))
        return True


def pool(size: int) -> list:
    """Up to `size` warm workers for the current quantlib code (connected Ray), created when missing; the
    workers of other code are killed first."""
    import ray

    names = [actor_name(nodes.package_fingerprint(), k) for k in range(size)]
    mine = names[0].rsplit("-", 1)[0]  # the code's prefix
    for info in ray.util.list_named_actors(all_namespaces=True):
        if (info["namespace"] == NAMESPACE and info["name"].startswith(PREFIX)
                and info["name"].rsplit("-", 1)[0] != mine):
            try:
                ray.kill(ray.get_actor(info["name"], namespace=NAMESPACE), no_restart=True)
            except ValueError:  # gone meanwhile
                pass
    worker = ray.remote(concurrency_groups={CONTROL: 1})(SleeveWorker)
    return [worker.options(name=name, namespace=NAMESPACE, lifetime="detached", get_if_exists=True, num_cpus=0,
                           max_restarts=-1, max_task_retries=0, max_concurrency=1).remote()
            for name in names]


def checkers(workers: list, timeout_s: float = 60.0) -> dict[str, Callable]:
    """For the preflight (`nodes.preflight`): node id -> a function submitting its probe to a warm worker there
    (in the `control` group: answered even while the worker runs another meta's sleeve); {} when the workers
    do not say where they are within `timeout_s` (the preflight then probes with tasks)."""
    import ray

    try:
        where = ray.get([w.where.options(concurrency_group=CONTROL).remote() for w in workers], timeout=timeout_s)
    except Exception:  # noqa: BLE001 -- a worker still restarting or gone: tasks check its node
        return {}
    return {node: (lambda probe, tokens, w=w: w.check.options(concurrency_group=CONTROL).remote(probe, tokens))
            for node, w in zip(where, workers)}


def interrupt(actor) -> None:
    """Interrupt the sleeve `actor` runs (`SleeveWorker.interrupt`); an actor that does not answer within
    `INTERRUPT_S` is killed (Ray restarts it; the meta records its sleeve INTERRUPTED, `executor.settle_nested`)."""
    import ray

    try:
        ray.get(actor.interrupt.options(concurrency_group=CONTROL).remote(), timeout=INTERRUPT_S)
    except Exception:  # noqa: BLE001 -- dead, restarting or stuck: killing it stops its sleeve too
        ray.kill(actor, no_restart=False)
