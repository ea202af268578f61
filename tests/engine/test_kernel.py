"""The stage kernel (quantlib.engine.kernel): prestarted kernels are claimed only by a matching run, and the
ready client (quantlib.engine.kernel_client) answers as soon as the kernel does."""
from __future__ import annotations

import os
import signal
import time

import pytest
from jupyter_core.utils import run_sync

from quantlib.core.live import ENV_VAR
from quantlib.core.runs import process_alive
from quantlib.engine import kernel


@pytest.fixture(autouse=True)
def no_leftover():
    kernel.discard()
    yield
    kernel.discard()


def pid(k: kernel.SharedKernel) -> int:
    return k.km.provisioner.pid


def gone(process: int, wait_s: float = 10) -> bool:
    deadline = time.monotonic() + wait_s
    while process_alive(process) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not process_alive(process)


def test_a_prestarted_kernel_is_claimed_by_the_next_run_of_its_phase():
    kernel.prestart("sleeve", progress=False)
    ready = kernel._ready.kernel
    assert ready.alive() and ready.warm.endswith(kernel.WARM_IMPORTS["sleeve"])
    claimed, live = kernel.for_run("sleeve", progress=False)
    assert claimed is ready and live.path is None and not kernel._ready
    assert ENV_VAR not in claimed.env and claimed.env["PYTHONPATH"].split(os.pathsep)[0]
    claimed.close()


def test_a_run_of_another_phase_environment_or_view_gets_a_new_kernel_and_the_old_one_stops(monkeypatch):
    for phase, progress, env in (("meta", False, None), ("sleeve", True, None), ("sleeve", False, "1")):
        kernel.prestart("sleeve", progress=False)
        old = pid(kernel._ready.kernel)
        if env:
            monkeypatch.setenv("FW_SOME__KEY", env)  # e.g. FW_RAY_ADDRESS set for this run
        fresh, live = kernel.for_run(phase, progress)
        try:
            assert fresh.km is None and not kernel._ready, "not started: the run starts it at its first stage"
            assert (live.path is not None) == progress and fresh.warm.endswith(kernel.WARM_IMPORTS[phase])
            assert gone(old), f"the unclaimed kernel of {phase, progress, env} must be shut down"
            if env:
                assert fresh.env["FW_SOME__KEY"] == env
        finally:
            live.close()
        monkeypatch.delenv("FW_SOME__KEY", raising=False)


def test_a_prestarted_kernel_that_died_is_not_handed_out():
    kernel.prestart("data", progress=False)
    dead = kernel._ready.kernel
    os.kill(pid(dead), signal.SIGKILL)
    assert gone(pid(dead))
    fresh, live = kernel.for_run("data", progress=False)
    assert fresh is not dead and fresh.km is None
    live.close()


def test_a_prestarted_progress_view_names_its_file_in_the_kernel_environment():
    kernel.prestart("data", progress=True)
    ready = kernel._ready
    assert ready.kernel.env[ENV_VAR] == str(ready.live.path) and ready.live.path.exists()
    path = ready.live.path
    kernel.discard()
    assert not path.exists() and not kernel._ready


def test_the_ready_client_answers_without_waiting_for_iopub_to_fall_quiet():
    """jupyter_client's wait_for_ready waits 0.2 s for IOPub to be quiet on every call; ours returns once the
    kernel_info reply and one IOPub message are in (and then executes code as a normal client)."""
    k = kernel.SharedKernel()
    try:
        km = k.manager()
        client = km.client()
        assert type(client).__name__ == "ReadyClient"
        client.start_channels()
        run_sync(client.wait_for_ready)(timeout=60)  # the first call also waits for the kernel to boot
        start = time.perf_counter()
        run_sync(client.wait_for_ready)(timeout=60)
        assert time.perf_counter() - start < 0.15
        reply = run_sync(client.execute_interactive)("x = 6 * 7", timeout=30)
        assert reply["content"]["status"] == "ok"
        client.stop_channels()
    finally:
        k.close()
