"""The workbook cluster (`run_book.py cluster start|status|stop`, `engine.cluster`): a head node that outlives
the command, as safe as a meta's own instance (its own token in a private folder, loopback only), joined by a
meta of the same runs root (saying so and recording the node of every sleeve), and stopped without touching
any other Ray instance. One cluster is shared by the module (a Ray start costs 10-40 s here)."""
from __future__ import annotations

import json
import stat
import tempfile
from pathlib import Path

import pytest

from conftest import OVERRIDES, ROOT, SHORT_ENV, Workspace, stage_running
from quantlib.cli import main
from quantlib.core.profiles import load_profile
from quantlib.core.runs import Run
from quantlib.engine import cluster, fanout
from test_ray_safety import check_listens_on_loopback_only, check_refuses_clients_without_the_token, ray_pids


@pytest.fixture(scope="module")
def runs_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cluster") / "runs"


@pytest.fixture(scope="module")
def head(runs_root):
    assert main(["cluster", "start", "--runs-dir", str(runs_root)]) == 0  # what `run_book.py cluster start` runs
    started = cluster.read(runs_root)
    yield started
    cluster.stop(runs_root)


def test_start_records_a_private_authenticated_loopback_head(head, runs_root):
    record = json.loads(cluster.record_path(runs_root).read_text())
    assert record["address"] == head.address and record["address"].startswith("127.0.0.1:")
    private = Path(head.private_dir)
    assert private.parent == Path("/tmp") and private.name.startswith("fw-cluster-")
    assert stat.S_IMODE(private.stat().st_mode) == 0o700 and stat.S_IMODE(head.token_path.stat().st_mode) == 0o600
    assert cluster.running(runs_root) == head and head.alive() and head.pid_started
    assert cluster.running(runs_root, ROOT) == head and Path(head.workspace) == ROOT.resolve()
    assert cluster.running(runs_root, runs_root) is None  # another checkout's metas start their own Ray
    ok, lines = cluster.status_lines(runs_root)
    assert ok and lines[0] == f"RUNNING  {head.address}" and "every `meta`" in lines[-1]


def test_the_head_listens_on_loopback_only_and_refuses_clients_without_its_token(head, tmp_path):
    check_listens_on_loopback_only(head.pid)
    with fanout._ray_env(head.env()):
        check_refuses_clients_without_the_token(head.address, tmp_path)


def test_a_second_start_is_refused_naming_the_running_cluster(head, runs_root, capsys):
    with pytest.raises(cluster.ClusterError, match=rf"already running at {head.address} \(pid {head.pid}"):
        cluster.start(runs_root)
    assert main(["cluster", "start", "--runs-dir", str(runs_root)]) == 2
    assert f"error: cluster: already running at {head.address}" in capsys.readouterr().err


def test_status_prints_the_running_cluster(head, runs_root, capsys):
    assert main(["cluster", "status", "--runs-dir", str(runs_root)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"RUNNING  {head.address}") and f"pid {head.pid}" in out and str(head.token_path) in out


def test_a_meta_joins_the_workbook_cluster_and_records_each_sleeves_node(head, runs_root, tmp_path, capsys):
    # the sleeves find no data run in this runs root: each FAILs at its first stage, in a worker of the cluster
    profile = load_profile("demo_meta_pair", env={"FW_DATA__LAKEHOUSE": str(tmp_path / "lakehouse")})
    run = Run.create(runs_root, profile, "meta", ROOT)
    doc, results = fanout.run_books(run, lambda result: None, connect_timeout_s=60)
    assert f"sleeves: on the workbook cluster at {head.address}" in capsys.readouterr().out
    assert doc["ray_cluster"] == "workbook" and doc["ray_address"] == head.address and doc["ray_logs"] is None
    assert [s["id"] for s in doc["sleeves"]] == ["crypto_long", "crypto_short"]
    head_node = {s["node"]["id"] for s in doc["sleeves"]}
    assert len(head_node) == 1 and all(s["node"]["ip"] == "127.0.0.1" for s in doc["sleeves"])
    assert all(s["status"] == "FAIL" and "data run" in (s["error"] or "") for s in doc["sleeves"]), doc["sleeves"]
    assert cluster.running(runs_root) == head  # the meta left the cluster running
    assert not (run.dir / "ray").exists()  # no instance of its own
    # the sleeves ran in the cluster's warm workers, which the next meta reuses (no new process, no imports)
    first = {s["id"]: s["worker"] for s in doc["sleeves"]}
    assert all(w["kind"] == "warm actor" and w["import_s"] > 0 for w in first.values()), first
    again, _ = fanout.run_books(Run.create(runs_root, profile, "meta", ROOT), lambda result: None, connect_timeout_s=60)
    second = [s["worker"] for s in again["sleeves"]]
    assert {w["pid"] for w in second} <= {w["pid"] for w in first.values()}
    assert sum(w["sleeves_run"] for w in second) > sum(w["sleeves_run"] for w in first.values())
    # the preflight asked a warm worker on the node (no task, so no worker start for the meta's job)
    [node] = again["preflight"]["nodes"]
    assert node["ok"] and node["by"] == "warm worker" and node["id"] in head_node


RAY_MAP = """
import json, os, sys
from quantlib.core import parallel
address = sys.argv[1]

def square(offset, item):
    return item * item + offset, os.getpid()

def fail(item):
    if item in (2, 7):
        raise (ValueError if item == 2 else RuntimeError)(f"item {item} is bad")
    return item

doc = {"me": os.getpid()}
with parallel.ordered_map(square, (1,), range(9), None, address) as results:
    out = list(results)
doc.update(values=[v for v, _ in out], pids=sorted({p for _, p in out}))
try:
    with parallel.ordered_map(fail, (), range(9), 3, address) as results:
        list(results)
except Exception as exc:
    doc["error"] = [type(exc).__name__, str(exc)]
import ray
doc["connected_after"] = ray.is_initialized()
print(json.dumps(doc))
"""


def test_parallel_items_run_as_ray_tasks_on_the_cluster_in_order_and_fail_as_sequentially(head, tmp_path):
    """`core.parallel.ordered_map` with a cluster address (a walk-forward in a sleeve on the cluster, which
    sees `FW_RAY_ADDRESS`): results in item order from Ray workers, the first failing item's own error, the
    connection closed after; an unreachable cluster falls back to the local pool with a warning."""
    import os
    import subprocess
    import sys

    env = {**os.environ, **head.env(), "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-W", "error::RuntimeWarning", "-c", RAY_MAP, head.address], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    doc = json.loads(done.stdout.strip().splitlines()[-1])
    assert doc["values"] == [i * i + 1 for i in range(9)] and doc["me"] not in doc["pids"]
    assert doc["error"] == ["ValueError", "item 2 is bad"] and doc["connected_after"] is False
    unreachable = ("from quantlib.core import parallel; parallel.RAY_CONNECT_S = 3\n"
                   "with parallel.ordered_map(pow, (2,), range(6), 2, '127.0.0.1:1') as out: print(list(out))")
    done = subprocess.run([sys.executable, "-c", unreachable], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "[1, 2, 4, 8, 16, 32]"
    assert "cannot use the Ray cluster at 127.0.0.1:1" in done.stderr and "the local pool decides" in done.stderr


def test_ctrl_c_interrupts_the_sleeves_in_the_warm_workers_which_stay_for_the_resume(head, runs_root, tmp_path):
    """Ray cannot cancel a running actor method: the meta asks each warm worker to interrupt its sleeve, which
    records itself INTERRUPTED; the workers live on (a resume runs in them, as any later meta: the test above)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    env = {k: v for k, v in os.environ.items() if not k.startswith("FW_")}
    env.update(OVERRIDES, **SHORT_ENV, FW_BOOK__EXPORT_HTML="false", FW_DATA__LAKEHOUSE=str(tmp_path / "lake"))
    ws = Workspace(runs_root, tmp_path / "lake", env)
    assert ws.book("data", "--profile", "demo").returncode == 0
    command = [sys.executable, str(ROOT / "run_book.py"), "--runs-dir", str(runs_root), "meta", "demo_meta_pair",
               "--run-id", "warm-ctrl-c"]
    sleeves = runs_root / "warm-ctrl-c" / "sleeves"
    with subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True) as process:
        deadline = time.monotonic() + 180
        # both in validate, seconds long (the other stages now last tenths: a signal between two stages would
        # record the sleeve INTERRUPTED with no stage running)
        while not all(stage_running(sleeves / s / "manifest.json", "validate") for s in ("crypto_long", "crypto_short")):
            assert process.poll() is None and time.monotonic() < deadline, "the sleeves never started a stage"
            time.sleep(0.1)
        workers = {pid for pid, name in ray_pids(head.pid).items() if name.startswith("ray::SleeveWork")}
        process.send_signal(signal.SIGINT)
        out, _ = process.communicate(timeout=120)
    assert process.returncode == 130, out
    assert Run.open(runs_root, "warm-ctrl-c").status == "INTERRUPTED"
    for sleeve in ("crypto_long", "crypto_short"):
        run = Run.at(sleeves / sleeve)
        assert run.status == "INTERRUPTED", (sleeve, run.manifest.get("error"))
        assert [s["status"] for s in run.manifest["stages"].values()].count("interrupted") == 1
    assert len(workers) == 2 and workers <= set(ray_pids(head.pid))  # the same warm workers, alive for a resume


def test_zz_stop_ends_every_process_of_the_cluster_and_its_files(head, runs_root, capsys):
    pids = set(ray_pids(head.pid))
    assert {"gcs_server", "raylet"} <= set(ray_pids(head.pid).values())
    assert main(["cluster", "stop", "--runs-dir", str(runs_root)]) == 0
    assert f"stopped the workbook cluster at {head.address}" in capsys.readouterr().out
    assert not set(ray_pids(head.pid)) & pids and not head.alive()
    assert not Path(head.private_dir).exists() and not cluster.record_path(runs_root).exists()
    assert main(["cluster", "status", "--runs-dir", str(runs_root)]) == 1
    assert capsys.readouterr().out.startswith("no workbook cluster")
    assert cluster.stop(runs_root) is None  # nothing left to stop


def test_a_record_of_a_dead_cluster_reads_stopped(tmp_path):
    record = {"address": "127.0.0.1:1", "host": "127.0.0.1", "pid": 2 ** 22 + 1, "hostname": "elsewhere",
              "started": "2026-01-01T00:00:00Z", "private_dir": tempfile.mkdtemp(), "num_cpus": 2,
              "ray_version": "2.60.0", "workspace": str(ROOT)}
    cluster.record_path(tmp_path).parent.mkdir(parents=True)
    cluster.record_path(tmp_path).write_text(json.dumps(record))
    assert cluster.running(tmp_path) is None
    ok, lines = cluster.status_lines(tmp_path)
    assert not ok and lines[0].startswith("STOPPED") and "pid 4194305 on elsewhere" in lines[0]
    with pytest.raises(cluster.ClusterError, match="records a cluster on elsewhere"):
        cluster.stop(tmp_path)


def test_a_corrupt_record_is_one_line_naming_the_file(tmp_path):
    cluster.record_path(tmp_path).parent.mkdir(parents=True)
    cluster.record_path(tmp_path).write_text("{not json")
    with pytest.raises(cluster.ClusterError, match=r"_cluster/cluster.json is not a workbook cluster record"):
        cluster.read(tmp_path)


def test_a_start_under_way_is_not_raced_and_a_dead_holders_lock_is_taken_over(tmp_path):
    import os
    import subprocess

    lock = cluster.record_path(tmp_path).parent / "start.lock"
    lock.parent.mkdir(parents=True)
    lock.write_text(str(os.getpid()))  # a live holder: refused before anything starts
    with pytest.raises(cluster.ClusterError, match=rf"another `cluster start` \(pid {os.getpid()}\) is under way"):
        cluster.start(tmp_path)
    dead = subprocess.Popen(["true"])
    dead.wait()
    lock.write_text(str(dead.pid))  # a dead holder's lock is taken over; this start then fails (a bad port)
    before = set(Path("/tmp").glob("fw-cluster-*"))
    with pytest.raises(cluster.ClusterError, match=r"`ray start --head` exited with code"):
        cluster.start(tmp_path, port=-5, timeout_s=60)
    assert not lock.exists() and not cluster.record_path(tmp_path).exists()
    assert set(Path("/tmp").glob("fw-cluster-*")) <= before  # its private folder is gone
