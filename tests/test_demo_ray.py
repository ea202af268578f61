"""The demo's Ray started while its data runs (`commands.phases.ray_ahead`): when, and that it is always stopped.
The real start and the meta joining it are what the README's demo command does (and `test_cluster`)."""
from __future__ import annotations

import argparse
import threading
import time

import pytest

from quantlib.commands import phases
from quantlib.engine import cluster


@pytest.fixture
def calls(monkeypatch, tmp_path):
    """cluster.start / stop recorded (start takes a while, in its own thread), no cluster running."""
    record = {"start": [], "stop": [], "fail": None}

    def start(root):
        record["start"].append((root, threading.current_thread().name))
        time.sleep(0.3)
        if record["fail"]:
            raise cluster.ClusterError(record["fail"])
        return argparse.Namespace(address="127.0.0.1:1")

    monkeypatch.setattr(cluster, "start", start)
    monkeypatch.setattr(cluster, "stop", lambda root: record["stop"].append(root))
    monkeypatch.setattr(cluster, "running", lambda root, workspace=None: record.get("running"))
    return record


def demo_args(tmp_path, **more) -> argparse.Namespace:
    return argparse.Namespace(runs_dir=str(tmp_path / "runs"), executor="ray", ray_address=None, **more)


def test_started_in_the_background_and_stopped_at_the_end(calls, tmp_path, capsys):
    began = time.monotonic()
    with phases.ray_ahead(demo_args(tmp_path)) as ready:
        assert time.monotonic() - began < 0.2, "the data phase does not wait for Ray"
        ready()  # before the meta: waits for the start
        assert len(calls["start"]) == 1 and calls["start"][0][1] == "fw-demo-ray" and not calls["stop"]
    assert calls["stop"] == [calls["start"][0][0]]
    assert "a workbook cluster for this demo at 127.0.0.1:1" in capsys.readouterr().out


def test_stopped_when_the_demo_fails_or_is_interrupted_before_the_meta(calls, tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with phases.ray_ahead(demo_args(tmp_path)):
            raise KeyboardInterrupt  # Ctrl-C in a data run: the start is waited for, then stopped
    assert len(calls["start"]) == 1 and len(calls["stop"]) == 1


def test_a_failed_start_is_one_line_and_the_meta_starts_its_own(calls, tmp_path, capsys):
    calls["fail"] = "cluster: no address within 60 s"
    with phases.ray_ahead(demo_args(tmp_path)) as ready:
        ready()
    assert not calls["stop"]
    assert capsys.readouterr().out.strip() == ("Ray: the demo's cluster did not start (cluster: no address within "
                                               "60 s); the meta starts its own")


@pytest.mark.parametrize("how", ["local", "address", "running"])
def test_nothing_is_started_when_the_meta_is_told_otherwise_or_a_cluster_runs(calls, tmp_path, how):
    args = demo_args(tmp_path)
    if how == "local":
        args.executor = "local"
    elif how == "address":
        args.ray_address = "head:6379"
    else:
        calls["running"] = argparse.Namespace(address="127.0.0.1:2")  # the user's: joined, left running
    with phases.ray_ahead(args) as ready:
        ready()
    assert not calls["start"] and not calls["stop"]
