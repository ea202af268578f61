"""An ordered map of independent, CPU-bound items (the walk-forward's window decisions): in this process,
on a local pool of forked processes, or as Ray tasks on a cluster.

`ordered_map(fn, shared, items, workers)` yields `fn(*shared, item)` for every item, in item order, as
`[fn(*shared, item) for item in items]` would.

- Local pool (Linux): this process and `workers - 1` processes forked from it (`fork` start method: a
  stage kernel has pandas and quantlib imported, a forked worker pays no import, and a closure a test
  plants works). This process takes the items from the front, in order (its results are yielded as they
  are computed, so progress advances), the workers take them from the back, one at a time (a shared pair
  of bounds): they meet in the middle, nobody waits for long and no core idles. `fn` and `shared` reach
  every worker once, by fork -- nothing of them is pickled; the workers' results come back pickled, which
  round-trips frames, floats and dtypes bit for bit. Without fork (macOS, Windows) the items run in this
  process only: spawn would re-import pandas in every worker and cannot carry planted closures.
- Errors: a worker stops its chunk before the first item that raises; from the first item a worker did
  not deliver on, everything runs here, in order, so the first failing item raises its own exception
  (type, message, traceback, cause) exactly as the sequential map would. A lost worker (killed, out of
  memory) or a failed Ray task is handled the same way (with a `RuntimeWarning`): the results stay
  complete and in order.
- Interruption: workers ignore SIGINT (Ctrl-C and a kernel interrupt reach the whole process group: this
  process handles it) and die with this process (Linux `PR_SET_PDEATHSIG`, also on SIGKILL); while the pool
  runs, SIGTERM raises `RunInterrupted` here (`errors.interruptible`), and on any exception the pool is torn
  down: workers terminated (killed when they linger) and reaped -- no orphan processes.
- Ray: with `ray_address` (the kernel of a sleeve that runs on a Ray cluster sees `FW_RAY_ADDRESS`), the
  chunks are Ray tasks on that cluster (connect bounded by `RAY_CONNECT_S`, auth from the environment:
  `RAY_AUTH_MODE`, `RAY_AUTH_TOKEN_PATH`): contiguous chunks, one per task, this process only collects;
  `fn` and `shared` go to the object store once (`ray.put`). Tasks ask for 0 CPUs: the sleeve task that
  waits for them holds a CPU, so CPU-bound tasks could wait forever for CPUs held by sleeves that wait
  for theirs. A cluster that cannot be reached falls back to the local pool (with a `RuntimeWarning`).
"""
from __future__ import annotations

import gc
import os
import queue
import signal
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from quantlib.core.errors import first_line, interruptible
from quantlib.core.ray_connect import ray_connect

RAY_ADDRESS_ENV = "FW_RAY_ADDRESS"  # no "__": never read as a profile override (core.profiles.env_overrides)
MIN_AUTO_ITEMS = 4      # auto (`workers` None or 0) maps fewer items in this process: a pool would not pay
RAY_CONNECT_S = 30.0    # Ray itself retries for minutes when nothing answers
TERMINATE_S = 5.0       # a terminated worker is killed when it has not exited after this long
POLL_S = 0.5            # how often a wait for a worker's result checks that the workers are alive
LOCK_S = 10.0           # the bounds' lock held longer than this: its holder died in it
PR_SET_PDEATHSIG = 1    # linux/prctl.h


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity where the platform has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def can_fork() -> bool:
    """Whether the local pool runs here: Linux, whose `fork` start method is safe and cheap."""
    return sys.platform.startswith("linux")


def local_workers(setting: int | None, n_items: int) -> int:
    """Processes for `n_items` on the local pool: `setting` 1 = this process; None or 0 = auto (the available
    cores; this process when there is one core or fewer than `MIN_AUTO_ITEMS` items); never more than the items."""
    if setting == 1 or not can_fork():
        return 1
    if not setting:
        return 1 if n_items < MIN_AUTO_ITEMS else max(1, min(available_cores(), n_items))
    return max(1, min(setting, n_items))


def chunks(items: Sequence, parts: int) -> list[list]:
    """`items` cut into `parts` contiguous, near-equal chunks (the first ones one longer), in order."""
    parts = max(1, min(parts, len(items)))
    size, extra = divmod(len(items), parts)
    out, start = [], 0
    for k in range(parts):
        stop = start + size + (k < extra)
        out.append(list(items[start:stop]))
        start = stop
    return out


def _apply(fn: Callable, shared: tuple, items: list) -> list:
    """`fn(*shared, item)` for `items` in order, stopping before the first item that raises (the caller
    reruns it where its exception surfaces as in a sequential run)."""
    out = []
    for item in items:
        try:
            out.append(fn(*shared, item))
        except Exception:  # noqa: BLE001 -- reraised by the caller's own run of this item
            break
    return out


# ----------------------------------------------------------------------------------------------
# the map
# ----------------------------------------------------------------------------------------------
@contextmanager
def ordered_map(fn: Callable, shared: tuple, items: Sequence, workers: int | None = None,
                ray_address: str | None = None) -> Iterator[Iterator[Any]]:
    """An iterator of `fn(*shared, item)` in item order, computed by `workers` processes, this one included
    (`local_workers`; with `ray_address`, that many Ray tasks, None/0 = the cluster's CPUs); the pool
    lives until the block ends."""
    items = list(items)
    if workers == 1 or len(items) <= 1 or (not workers and len(items) < MIN_AUTO_ITEMS):
        yield (fn(*shared, item) for item in items)
        return
    with interruptible():
        pool = _RayTasks.connect(fn, shared, items, workers, ray_address) if ray_address else None
        if pool is None and local_workers(workers, len(items)) > 1:
            pool = _LocalPool(fn, shared, items, local_workers(workers, len(items)))
        if pool is None:
            yield (fn(*shared, item) for item in items)
            return
        try:
            yield _merge(fn, shared, pool)
        except BaseException:
            pool.stop()
            raise
        else:
            pool.close()


def _merge(fn: Callable, shared: tuple, pool: "_LocalPool | _RayTasks") -> Iterator[Any]:
    """The results chunk by chunk: a chunk this process claims is computed here; a worker's is fetched, and
    from the first item a worker did not deliver on, everything runs here."""
    for k, chunk in enumerate(pool.chunks):
        if pool.claim(k):
            yield from (fn(*shared, item) for item in chunk)
            continue
        try:
            done = pool.fetch(k)
        except Exception as exc:  # noqa: BLE001 -- a lost worker or failed task: its items run here
            warnings.warn(f"parallel: chunk {k + 1}/{len(pool.chunks)} failed in its worker ({type(exc).__name__}: "
                          f"{first_line(exc)}); the remaining items run in this process",
                          RuntimeWarning, stacklevel=2)
            done = []
        yield from done
        if len(done) < len(chunk):
            pool.stop()
            for item in chunk[len(done):] + [item for later in pool.chunks[k + 1:] for item in later]:
                yield fn(*shared, item)
            return


# ----------------------------------------------------------------------------------------------
# the local pool of forked workers
# ----------------------------------------------------------------------------------------------
class _LocalPool:
    """This process and `workers - 1` forked ones deciding the items: this one from the front, the workers
    from the back, one item per chunk (`bounds`: the next front chunk, the end of the unclaimed ones)."""

    def __init__(self, fn: Callable, shared: tuple, items: list, workers: int) -> None:
        import multiprocessing

        context = multiprocessing.get_context("fork")
        self.chunks = chunks(items, len(items))
        self.bounds = context.Array("i", [0, len(self.chunks)])
        self.results = context.Queue()
        self.received: dict[int, list] = {}
        self.processes: list = []
        gc.freeze()  # the heap so far is out of every collection: no worker's GC copies its pages
        try:
            for _ in range(workers - 1):
                process = context.Process(target=_worker, args=(fn, shared, self.chunks, self.bounds, self.results,
                                                                os.getpid()), daemon=True, name="fw-parallel")
                process.start()
                self.processes.append(process)
        except BaseException:
            self.stop()
            raise

    def claim(self, k: int) -> bool:
        """Chunk `k` (the next front one) for this process, unless a worker took it."""
        lock = self.bounds.get_lock()
        if not self.processes or not lock.acquire(timeout=LOCK_S):
            return False
        try:
            if k < self.bounds[1]:
                self.bounds[0] = k + 1
                return True
            return False
        finally:
            lock.release()

    def fetch(self, k: int) -> list:
        """Chunk `k`'s results from the worker that took it (a `RuntimeError` when a worker died)."""
        while k not in self.received:
            try:
                j, done = self.results.get(timeout=POLL_S)
                self.received[j] = done
            except queue.Empty:
                lost = [p for p in self.processes if p.exitcode not in (None, 0)]
                if lost or not self.processes or all(p.exitcode is not None for p in self.processes):
                    raise RuntimeError(f"worker {lost[0].pid if lost else '-'} ended (exit code "
                                       f"{lost[0].exitcode if lost else 0}) without chunk {k + 1}") from None
        return self.received.pop(k)

    def close(self) -> None:
        """Every result is in: the workers have nothing left to take and exit."""
        for process in self.processes:
            process.join(TERMINATE_S)
        self.stop()

    def stop(self) -> None:
        """The workers terminated (killed after `TERMINATE_S`) and reaped; no chunk is claimed any more."""
        processes, self.processes = self.processes, []
        for process in processes:
            if process.is_alive():
                process.terminate()
        for process in processes:
            process.join(TERMINATE_S)
            if process.is_alive():
                process.kill()
                process.join()
        self.results.close()
        gc.unfreeze()


def _worker(fn: Callable, shared: tuple, chunks_: list[list], bounds, results, parent: int) -> None:
    """A forked worker: takes the last unclaimed chunk until the claims meet, sends each chunk's results."""
    _init_worker(parent)
    while True:
        with bounds.get_lock():
            if bounds[1] <= bounds[0]:
                break
            bounds[1] -= 1
            k = bounds[1]
        results.put((k, _apply(fn, shared, chunks_[k])))
    results.close()
    results.join_thread()  # every result written before the process ends


def _init_worker(parent: int) -> None:
    """A forked worker leaves Ctrl-C to its parent and dies with it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not the parent's `interruptible` handler: terminate() ends it
    _die_with_parent(parent)


def _die_with_parent(parent: int) -> None:
    """Linux: SIGKILL this process when its parent ends (also when the parent is killed)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # no prctl: the parent's teardown still ends the workers
        return
    if os.getppid() != parent:  # the parent ended before the request took effect
        os._exit(1)


# ----------------------------------------------------------------------------------------------
# Ray tasks on a cluster
# ----------------------------------------------------------------------------------------------
def _ray_chunk(state: tuple, items: list) -> list:
    """A Ray task: one chunk, with `fn` and `shared` from the object store."""
    fn, shared = state
    return _apply(fn, shared, items)


class _RayTasks:
    """The chunks as Ray tasks on the cluster at `address`; this process's Ray connection ends with them."""

    def __init__(self, fn: Callable, shared: tuple, items: list, workers: int | None, owned: bool) -> None:
        import ray

        self.owned, self.refs = owned, []
        try:
            self.chunks = chunks(items, workers or int(ray.cluster_resources().get("CPU", 1)))
            task = ray.remote(num_cpus=0, max_retries=0, scheduling_strategy="SPREAD")(_ray_chunk)
            state = ray.put((fn, shared))
            self.refs = [task.remote(state, chunk) for chunk in self.chunks]
        except BaseException:
            self.stop()
            raise

    @classmethod
    def connect(cls, fn: Callable, shared: tuple, items: list, workers: int | None,
                address: str) -> "_RayTasks | None":
        """The tasks, or None (with a warning: the local pool decides) when the cluster cannot be used."""
        try:
            import ray

            owned = not ray.is_initialized()
            if owned:
                ray_connect(address, RAY_CONNECT_S)
            return cls(fn, shared, items, workers, owned)
        except Exception as exc:  # noqa: BLE001 -- an unreachable cluster must not fail the computation
            warnings.warn(f"parallel: cannot use the Ray cluster at {address} ({type(exc).__name__}: "
                          f"{first_line(exc)}); the local pool decides",
                          RuntimeWarning, stacklevel=3)
            return None

    def claim(self, k: int) -> bool:
        """Never: on a cluster this process only collects."""
        return False

    def fetch(self, k: int) -> list:
        import ray

        return ray.get(self.refs[k])

    def close(self) -> None:
        self.stop()

    def stop(self) -> None:
        """The unfinished tasks cancelled; this process's connection closed when it opened it."""
        import ray

        refs, self.refs = self.refs, []
        if refs:  # only the unfinished ones, and not forcibly: a forced cancel racing a task's completion
            _, pending = ray.wait(refs, num_returns=len(refs), timeout=0)  # trips Ray's own task-state check
            for ref in pending:
                try:
                    ray.cancel(ref)
                except Exception:  # noqa: BLE001, S110 -- best effort; shutdown below ends this driver's tasks
                    pass
        if self.owned and ray.is_initialized():
            ray.shutdown()
