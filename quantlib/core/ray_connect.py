"""A bounded connect to a running Ray cluster (Ray itself retries for minutes when nothing answers there).

Used by the meta's fan-out (`engine.fanout.ray_session`) and by the walk-forward's windows as Ray tasks
(`core.parallel`). Ray is imported when a connect is made, never at import.
"""
from __future__ import annotations


def ray_connect(address: str, timeout_s: float, setting: str = "", runtime_env: dict | None = None) -> None:
    """`ray.init(address, runtime_env)` bounded by `timeout_s` (the upload of a shipped
    `runtime_env` included): it runs in a daemon thread that is abandoned (and disconnects
    should it still succeed) when the time is up; a `TimeoutError` then names `setting` (the knob for it)."""
    import copy
    import logging
    import threading

    import ray

    runtime_env = copy.deepcopy(runtime_env)  # Ray rewrites the runtime_env it is given (the upload's URI)

    outcome: dict[str, BaseException | None] = {}
    gave_up = threading.Event()

    def join() -> None:
        try:
            ray.init(address=address, runtime_env=runtime_env, configure_logging=False, log_to_driver=False)
            outcome["error"] = None
            if gave_up.is_set():
                ray.shutdown()
        except BaseException as exc:  # noqa: BLE001 -- handed to the caller
            outcome["error"] = exc

    worker_log = logging.getLogger("ray._private.worker")
    quiet = lambda record: "not the main thread" not in record.getMessage()  # noqa: E731
    worker_log.addFilter(quiet)
    thread = threading.Thread(target=join, name="fw-ray-connect", daemon=True)
    try:
        thread.start()
        thread.join(timeout_s)
    finally:
        worker_log.removeFilter(quiet)
    if thread.is_alive():
        gave_up.set()
        raise TimeoutError(f"no answer within {timeout_s:g} s" + (f", {setting}" if setting else ""))
    if outcome.get("error") is not None:
        raise outcome["error"]  # type: ignore[misc]
