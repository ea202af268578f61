"""Warm sleeve workers (`engine.warm`) without a cluster: their names follow the code, and an interrupted
meta reaches the sleeve an actor runs (SIGINT to the process its run recorded, else the actor is killed).
A meta reusing them on the workbook cluster: test_cluster.py."""
from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time

from quantlib.engine import nodes, warm


def test_worker_names_carry_the_code_fingerprint():
    assert warm.actor_name("0123456789abcdef0123", 3) == "fw-sleeve-0123456789abcdef-3"
    assert warm.actor_name(nodes.package_fingerprint(), 0).startswith(warm.PREFIX + nodes.package_fingerprint()[:16])


def test_an_interrupt_sends_sigint_to_the_recorded_process_or_kills_the_actor(tmp_path, monkeypatch):
    import ray

    killed = []
    monkeypatch.setattr(ray, "kill", lambda actor, no_restart=True: killed.append((actor, no_restart)))
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        since = time.time()
        record = {"host": socket.gethostname(), "pid": sleeper.pid, "epoch": since + 0.1}
        (tmp_path / nodes.NODE_FILE).write_text(json.dumps(record))
        warm.interrupt(tmp_path, "actor", since)
        assert sleeper.wait(timeout=10) == -signal.SIGINT and killed == []
        (tmp_path / nodes.NODE_FILE).write_text(json.dumps({**record, "epoch": since - 5}))  # an earlier run's
        warm.interrupt(tmp_path, "actor", since)
        (tmp_path / nodes.NODE_FILE).write_text(json.dumps({**record, "host": "elsewhere"}))  # another host
        warm.interrupt(tmp_path, "actor", since)
        (tmp_path / nodes.NODE_FILE).unlink()  # not started yet
        warm.interrupt(tmp_path, "actor", since)
        assert killed == [("actor", False)] * 3  # killed, restarted by Ray for the next meta
    finally:
        sleeper.kill()
        sleeper.wait()
