"""The ordered parallel map (`core.parallel`): results in item order from forked workers, the first failing
item's own exception, a lost worker's items redone here, no pool for one worker, and no process left behind
after Ctrl-C, SIGTERM or SIGKILL."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from quantlib.core import parallel
from quantlib.core.parallel import chunks, local_workers, ordered_map

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(not parallel.can_fork(), reason="the local pool forks (Linux)")


def _slow_square(scale: float, item: int) -> tuple[int, int]:
    time.sleep(scale * ((item * 7) % 5))  # completion order differs from item order
    return item * item, os.getpid()


def _gone(pid: int) -> bool:
    """Not running: no such process, or a zombie nobody reaped (an orphan's parent may not reap)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_chunks_are_contiguous_near_equal_and_cover_the_items():
    assert chunks(list(range(7)), 3) == [[0, 1, 2], [3, 4], [5, 6]]
    assert chunks([1, 2], 5) == [[1], [2]]
    assert chunks(list(range(12)), 4) == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 10, 11]]


def test_local_workers_auto_is_the_cores_one_is_sequential_and_never_more_than_the_items(monkeypatch):
    monkeypatch.setattr(parallel, "available_cores", lambda: 8)
    assert [local_workers(None, n) for n in (1, 3, 4, 6, 20)] == [1, 1, 4, 6, 8]   # < 4 items: this process
    assert local_workers(0, 20) == 8 and local_workers(1, 20) == 1 and local_workers(3, 20) == 3
    assert local_workers(16, 5) == 5
    monkeypatch.setattr(parallel, "available_cores", lambda: 1)
    assert local_workers(None, 20) == 1
    monkeypatch.setattr(parallel, "can_fork", lambda: False)
    assert local_workers(4, 20) == 1                                               # no fork: this process


def test_the_pool_gives_the_sequential_results_in_item_order():
    items = list(range(13))
    with ordered_map(_slow_square, (0.01,), items, workers=3) as results:
        out = list(results)
    assert [r for r, _ in out] == [i * i for i in items]
    pids = [pid for _, pid in out]
    assert pids[0] == os.getpid() and pids[-1] != os.getpid()   # this process from the front, workers from the back
    assert len(set(pids)) == 3 and psutil.Process().children() == []   # two forked workers, gone


def test_shared_reaches_each_worker_once_by_fork_never_pickled():
    class Unpicklable:
        def __reduce__(self):
            raise TypeError("pickled")

    shared = (Unpicklable(), lambda x: x + 1)   # a planted closure works too
    with ordered_map(lambda _, add, item: _slow_square(0.01, add(item)), shared, range(8), workers=2) as results:
        out = list(results)
    assert [r for r, _ in out] == [i * i for i in range(1, 9)] and len({pid for _, pid in out}) == 2


def test_the_first_failing_item_raises_its_own_exception_as_the_sequential_map_does():
    """Item 3 fails in the worker (this process waits on item 0 until it has), item 11 (the worker's
    first) fails earlier with another error: the map raises item 3's, as the sequential one does."""
    import multiprocessing

    def fail_at(reached, item: int) -> int:
        if item == 0 and reached is not None:
            assert reached.wait(30)
        if item in (3, 11):
            if reached is not None:
                reached.set()
            try:
                raise KeyError(item)
            except KeyError as cause:
                raise (ValueError if item == 3 else RuntimeError)(f"item {item} is bad") from cause
        return item

    raised = {}
    for workers in (1, 2):
        reached = multiprocessing.get_context("fork").Event() if workers > 1 else None
        with pytest.raises(Exception) as info, ordered_map(fail_at, (reached,), range(12), workers=workers) as out:
            list(out)
        raised[workers] = info.value
    assert type(raised[2]) is type(raised[1]) is ValueError and str(raised[2]) == str(raised[1]) == "item 3 is bad"
    assert isinstance(raised[2].__cause__, KeyError)     # the same exception chain: run here, not unpickled
    assert psutil.Process().children() == []


def test_a_lost_worker_is_redone_here_in_order_with_a_warning():
    parent = os.getpid()

    def die_in_worker(item: int) -> int:
        time.sleep(0.02)
        if os.getpid() != parent:
            os._exit(9)  # killed in its first item (out of memory, say)
        return item

    with pytest.warns(RuntimeWarning, match=r"failed in its worker \(RuntimeError: worker \d+ ended \(exit code 9\)"), \
            ordered_map(die_in_worker, (), range(12), workers=2) as results:
        assert list(results) == list(range(12))
    assert psutil.Process().children() == []


def test_one_worker_never_starts_a_pool(monkeypatch):
    import multiprocessing.context

    class NoPool:
        def __init__(self, *args, **kwargs):
            raise AssertionError("a pool was started")

    monkeypatch.setattr(multiprocessing.context.ForkContext, "Process", NoPool)
    with ordered_map(_slow_square, (0.0,), range(10), workers=1) as results:
        assert [pid for _, pid in results] == [os.getpid()] * 10
    with ordered_map(_slow_square, (0.0,), range(3), workers=None) as results:   # auto, < 4 items
        assert len(list(results)) == 3
    with pytest.raises(AssertionError, match="a pool was started"), \
            ordered_map(_slow_square, (0.0,), range(10), workers=2):   # the patch has teeth
        pass


def test_keyboard_interrupt_inside_tears_the_pool_down():
    with pytest.raises(KeyboardInterrupt), ordered_map(_slow_square, (0.05,), range(30), workers=3) as results:
        next(results)
        workers = psutil.Process().children()
        assert len(workers) == 2
        raise KeyboardInterrupt
    assert psutil.Process().children() == [] and all(_gone(w.pid) for w in workers)


SCRIPT = textwrap.dedent("""
    import os, sys, time, psutil
    from quantlib.core.parallel import ordered_map
    def slow(item):
        time.sleep(60 if item >= 1 else 0.05)
        return item
    with ordered_map(slow, (), range(12), workers=3) as results:
        next(results)
        print(" ".join(str(p.pid) for p in psutil.Process().children()), flush=True)
        list(results)
""")


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm", "sigkill"])
def test_no_worker_outlives_an_interrupted_or_killed_parent(how):
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        workers = [int(p) for p in proc.stdout.readline().split()]
        assert len(workers) == 2, proc.stderr.read()
        if how == "ctrl-c":
            os.killpg(proc.pid, signal.SIGINT)   # the terminal sends it to the whole group: workers ignore it
        else:
            proc.send_signal(signal.SIGTERM if how == "sigterm" else signal.SIGKILL)
        proc.wait(timeout=30)
        deadline = time.monotonic() + 10
        while not all(_gone(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert all(_gone(pid) for pid in workers), f"{how}: workers {workers} outlived their parent"
        if how != "sigkill":
            assert "Interrupt" in proc.stderr.read()   # RunInterrupted / KeyboardInterrupt in the parent
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
