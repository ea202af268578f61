"""Warm sleeve workers (`engine.warm`) without a cluster: their names follow the code, and an interrupted
meta reaches the sleeve an actor runs (a KeyboardInterrupt in its thread, else the actor is killed).
A meta reusing them on the workbook cluster: test_cluster.py."""
from __future__ import annotations

import threading
import time

from quantlib.engine import nodes, warm


def test_worker_names_carry_the_code_fingerprint():
    assert warm.actor_name("0123456789abcdef0123", 3) == "fw-sleeve-0123456789abcdef-3"
    assert warm.actor_name(nodes.package_fingerprint(), 0).startswith(warm.PREFIX + nodes.package_fingerprint()[:16])


def test_a_workers_interrupt_raises_keyboardinterrupt_in_the_thread_running_its_sleeve():
    worker = warm.SleeveWorker.__new__(warm.SleeveWorker)  # no imports: only the interrupt is under test
    worker.running = None
    assert worker.interrupt() is False  # nothing runs
    seen, started = [], threading.Event()

    def sleeve() -> None:
        worker.running = threading.get_ident()
        started.set()
        try:
            while True:
                time.sleep(0.01)
        except KeyboardInterrupt:
            seen.append("interrupted")

    thread = threading.Thread(target=sleeve)
    thread.start()
    started.wait(10)
    assert worker.interrupt() is True
    thread.join(10)
    assert seen == ["interrupted"] and not thread.is_alive()


def test_a_worker_that_does_not_answer_the_interrupt_is_killed(monkeypatch):
    import ray

    killed = []

    class Method:
        def options(self, **kw):
            assert kw == {"concurrency_group": warm.CONTROL}
            return self

        def remote(self):
            return "ref"

    class Actor:
        interrupt = Method()

    def no_answer(ref, timeout):
        assert ref == "ref" and timeout == warm.INTERRUPT_S
        raise ray.exceptions.GetTimeoutError("no answer")

    monkeypatch.setattr(ray, "get", no_answer)
    monkeypatch.setattr(ray, "kill", lambda actor, no_restart=True: killed.append(no_restart))
    warm.interrupt(Actor())
    assert killed == [False]  # killed, restarted by Ray for the next meta
