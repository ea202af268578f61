"""A meta on a real multi-node Ray cluster (`ray.cluster_utils.Cluster` on this machine: a head without CPUs
and two worker nodes with the custom resources node_a and node_b, every server on 127.0.0.1, token auth on).

The meta joins it with `--ray-address` as a user would, with the user's Ray settings in its environment
(`RAY_AUTH_MODE=token`, `RAY_AUTH_TOKEN_PATH`; `RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`, without which Ray
replaces a 127.0.0.1 address by the machine's own address). It ships its workspace to the workers, pins each
sleeve to its node by resources, checks every node first (preflight), and names the sleeve and the node
when a worker dies mid-sleeve. One cluster and one data run are shared by the module; sleeves are cut
short (reference simulator only, 21-day test windows, no HTML) so the module stays near a minute.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from conftest import OVERRIDES, ROOT, SHORT_ENV, Workspace, stage_running
from quantlib.core.runs import Run
from quantlib.engine import cluster as workbook_cluster, fanout, nodes

pytestmark = pytest.mark.e2e

LOOPBACK = "127.0.0.1"
FAST = {"FW_BACKTEST__SIMULATORS": "[reference]", "FW_BACKTEST__TEST_DAYS": "21", "FW_BOOK__EXPORT_HTML": "false"}
PINNED = {"FW_META__SLEEVES": "[{id: crypto_long, profile: demo_crypto_long, resources: {node_a: 1}}, "
                              "{id: crypto_short, profile: demo_crypto_short, resources: {node_b: 1}}]"}


@dataclass
class MultiNodeCluster:
    address: str
    node_a: str  # node ids
    node_b: str
    auth: dict[str, str]  # the Ray settings a client of this cluster needs (token auth)
    temp: Path
    state: Any  # the cluster's GCS view (`ray._private.state.GlobalState`)

    def alive_with(self, resource: str) -> bool:
        """An alive node holds `resource`."""
        return any(n["Alive"] and resource in n["Resources"] for n in self.state.node_table())


@pytest.fixture(scope="module")
def ray_cluster():
    """Head (no CPU: no sleeve runs there) + two 1-CPU worker nodes with node_a / node_b, token-authenticated."""
    from ray._private.utils import get_ray_address_file
    from ray.cluster_utils import Cluster

    # Cluster records its address in Ray's default temp dir whatever temp_dir says (a fresh machine has none)
    address_file = Path(get_ray_address_file(None))
    address_file.parent.mkdir(parents=True, exist_ok=True)
    temp = Path(tempfile.mkdtemp(prefix="fw-nodes-", dir="/tmp"))  # short: Ray's socket paths stay < 107 bytes
    (temp / "auth_token").write_text(os.urandom(32).hex())
    auth = workbook_cluster.ray_env(temp, loopback=True)
    with fanout._ray_env(auth):  # the nodes' processes inherit token auth; restored (and reloaded) after
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "node_ip_address": LOOPBACK,
                                                                "include_dashboard": False,
                                                                "temp_dir": str(temp / "ray")})
        try:
            a = cluster.add_node(num_cpus=1, resources={"node_a": 1}, node_ip_address=LOOPBACK, wait=False)
            b = cluster.add_node(num_cpus=1, resources={"node_b": 1}, node_ip_address=LOOPBACK, wait=False)
            cluster.wait_for_nodes(timeout=120)
            yield MultiNodeCluster(cluster.address, a.node_id, b.node_id, auth, temp, cluster.global_state)
        finally:
            cluster.shutdown()
            shutil.rmtree(temp, ignore_errors=True)
            if address_file.exists() and address_file.read_text() == cluster.address:
                address_file.unlink()  # a later ray.init() must not look for this gone cluster


@pytest.fixture(scope="module")
def ws(tmp_path_factory, ray_cluster) -> Workspace:
    """A runs root with one data run; the meta's environment carries the user's Ray settings for the cluster."""
    base = tmp_path_factory.mktemp("multinode")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FW_", "RAY_"))}
    env.update(OVERRIDES, **SHORT_ENV, **FAST, **ray_cluster.auth, FW_DATA__LAKEHOUSE=str(base / "lakehouse"))
    workspace = Workspace(base / "runs", base / "lakehouse", env)
    result = workspace.book("data", "--profile", "demo")
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    return workspace


def meta(ws: Workspace, address: str, *argv: str, env: dict[str, str] | None = None):
    """`run_book.py meta demo_meta_pair --ray-address ADDRESS ...` and the meta run it made."""
    result = ws.book("meta", "demo_meta_pair", "--ray-address", address, *argv, env={**PINNED, **(env or {})})
    return result, ws.run_of(result)


def sleeves_doc(run: Run) -> dict:
    return json.loads((run.dir / "artifacts" / "sleeves.json").read_text())


def weights(run: Run) -> pd.Series:
    return pd.read_parquet(run.dir / "artifacts" / "meta_weights.parquet")["weight"]


def stage_error(run: Run) -> str:
    """The one-line error the sleeves stage raised, as the meta's manifest records it (after the notebook cell)."""
    error = Run.at(run.dir).manifest["error"]
    assert "\n" not in error and error.startswith("stage sleeves failed in "), error
    return error.split("Error: ", 1)[1]


def test_a_resource_no_node_has_fails_in_one_line_before_any_sleeve_starts(ws, ray_cluster):
    wanted = {"FW_META__SLEEVES": "[{id: crypto_long, profile: demo_crypto_long, resources: {node_z: 1}}, "
                                  "{id: crypto_short, profile: demo_crypto_short}]"}
    result, run = meta(ws, ray_cluster.address, env=wanted)
    assert result.returncode == 1
    line = stage_error(run)
    assert line.startswith("sleeves: sleeve 'crypto_long' asks for Ray resources node_z=1 "
                           "(meta.sleeves[crypto_long].resources) but no node with a CPU has node_z=1"), line
    for part in (f"at {ray_cluster.address}", "custom resources there: node_a, node_b", "--resources='{\"node_z\": 1}'",
                 "no sleeve was started"):
        assert part in line, (part, line)
    assert not (run.dir / "sleeves").exists()  # nothing ran, no token was written


def test_sleeves_run_on_the_nodes_their_resources_pin_with_the_shipped_code_and_weights_equal_a_local_run(
        ws, ray_cluster):
    local, local_run = meta(ws, ray_cluster.address, "--executor", "local")
    assert local.returncode == 0, f"{local.stdout}\n{local.stderr}"
    result, run = meta(ws, ray_cluster.address, "--no-cache")  # every sleeve stage computed on its node
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    doc = sleeves_doc(run)
    assert doc["executor"] == "ray" and doc["ray_cluster"] == "address" and doc["ray_address"] == ray_cluster.address
    placed = {s["id"]: s["node"]["id"] for s in doc["sleeves"]}
    assert placed == {"crypto_long": ray_cluster.node_a, "crypto_short": ray_cluster.node_b}
    # the preflight checked both worker nodes (not the CPU-less head) before any sleeve started
    assert all(n["by"] == "task" for n in doc["preflight"]["nodes"])  # --ray-address: no warm workers
    assert {(n["id"], n["ip"], n["ok"]) for n in doc["preflight"]["nodes"]} == {
        (ray_cluster.node_a, LOOPBACK, True), (ray_cluster.node_b, LOOPBACK, True)}
    assert f"runs root {run.dir}" in doc["preflight"]["checked"] and f"lakehouse {ws.lake}" in doc["preflight"]["checked"]
    assert not list(run.dir.glob(".fw-preflight-*")) and not list(ws.lake.glob(".fw-preflight-*"))
    # the code came with the meta: each sleeve read its notebooks and imported quantlib from Ray's unpacked copy
    assert doc["code"]["shipped_from"] == str(ROOT.resolve()) and "/runs/" in doc["code"]["excludes"]
    for sleeve in doc["sleeves"]:
        child = Run.at(sleeve["run_dir"])
        node = json.loads((child.dir / nodes.NODE_FILE).read_text())
        shipped = Path(node["code_dir"])
        assert shipped.name.startswith("_ray_pkg_") and shipped != ROOT and (shipped / "notebooks").is_dir()
        assert node["quantlib"] == str(shipped / "quantlib") and node["id"] == sleeve["node"]["id"]
        assert child.options.code_dir == str(shipped) and child.code_root == shipped
        assert child.workspace == ROOT.resolve()  # the lakehouse and runs resolve against the driver's paths
        assert not (shipped / "runs").exists() and not list(shipped.rglob("*.parquet"))
    pd.testing.assert_series_equal(weights(run), weights(local_run), check_exact=False, rtol=0, atol=1e-12)
    assert sleeves_doc(local_run)["preflight"] is None  # no Ray, no preflight


def test_a_worker_killed_mid_sleeve_fails_the_meta_naming_sleeve_and_node_and_a_resume_reruns_only_it(
        ws, ray_cluster):
    run_id = "killed-meta"
    command = [sys.executable, str(ROOT / "run_book.py"), "--runs-dir", str(ws.runs_dir), "meta", "demo_meta_pair",
               "--ray-address", ray_cluster.address, "--run-id", run_id, "--no-cache"]
    victim = ws.runs_dir / run_id / "sleeves" / "crypto_long"
    with subprocess.Popen(command, cwd=ROOT, env={**ws.env, **PINNED}, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True) as process:
        deadline = time.monotonic() + 120
        while not ((victim / nodes.NODE_FILE).exists() and stage_running(victim / "manifest.json")):
            assert process.poll() is None and time.monotonic() < deadline, "the sleeve never started a stage"
            time.sleep(0.05)
        node = json.loads((victim / nodes.NODE_FILE).read_text())
        os.kill(node["pid"], signal.SIGKILL)  # the Ray worker running the sleeve, mid-stage
        out, _ = process.communicate(timeout=300)
    assert process.returncode == 1, out
    run = Run.open(ws.runs_dir, run_id)
    dead = next(s for s in sleeves_doc(run)["sleeves"] if s["id"] == "crypto_long")
    assert dead["status"] == "FAIL" and dead["node"]["id"] == ray_cluster.node_a == node["id"]
    assert dead["error"].startswith(f"sleeve 'crypto_long': its Ray task died on node {LOOPBACK} (")
    assert f"node {ray_cluster.node_a[:12]})" in dead["error"] and f"--run-id {run_id}" in dead["error"]
    assert "sleeve 'crypto_long'" in run.manifest["error"] and "its Ray task died on node" in run.manifest["error"]
    killed = Run.at(victim)
    assert killed.status == "FAIL" and killed.manifest["error"] == dead["error"]  # not RUNNING forever
    assert not any(s.get("status") == "running" for s in killed.manifest["stages"].values())
    survivor = Run.at(run.dir / "sleeves" / "crypto_short")
    assert survivor.status == "PASS"
    stages_before = survivor.manifest["stages"]

    result = ws.book("meta", "demo_meta_pair", "--ray-address", ray_cluster.address, "--run-id", run_id, env=PINNED)
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    assert Run.at(victim).status == "PASS" and Run.at(victim).manifest["resumes"][-1]["status"] == "FAIL"
    assert Run.at(survivor.dir).manifest["stages"] == stages_before  # nothing of it ran again


NODE_C = """
import signal, sys, time
import ray
from ray._private.node import Node
from ray._private.parameter import RayParams

params = RayParams(node_ip_address="127.0.0.1", gcs_address="{gcs}", num_cpus=1, resources={{"node_c": 1}},
                   object_store_memory=150 * 1024 * 1024, min_worker_port=0, max_worker_port=0,
                   include_log_monitor=False, node_manager_port=0, temp_dir="{temp}")
params.dashboard_agent_listen_port = None
node = Node(params, head=False, shutdown_at_exit=True, spawn_reaper=True)
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # the node's processes end with this one (atexit)
while True:
    time.sleep(1)
"""


def test_a_node_that_does_not_see_the_runs_root_fails_the_preflight_in_one_line_and_no_sleeve_runs(
        ws, ray_cluster, tmp_path):
    """A third node whose processes live in their own mount namespace with an empty tmpfs over the folder that
    holds the runs root and the lakehouse: the same paths, another filesystem (no shared storage)."""
    if not shutil.which("unshare") or subprocess.run(["unshare", "--mount", "true"], capture_output=True).returncode:
        pytest.skip("cannot make a mount namespace here (`unshare --mount` needs root / CAP_SYS_ADMIN)")
    hidden = ws.runs_dir.parent
    # the node is started as `Cluster.add_node` starts one (`ray start --address` would not keep it on 127.0.0.1
    # with RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0), inside the namespace, and lives until it is terminated
    node_script = tmp_path / "node_c.py"
    node_script.write_text(NODE_C.format(gcs=ray_cluster.address, temp=ray_cluster.temp / "ray"))
    script = f"mount -t tmpfs tmpfs {hidden} && exec {sys.executable} {node_script}"
    env = {**os.environ, **ray_cluster.auth}
    log = tmp_path / "node_c.log"
    with open(log, "wb") as out:
        node_c = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-c", script], env=env,
                                  stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while not ray_cluster.alive_with("node_c"):
            assert node_c.poll() is None and time.monotonic() < deadline, log.read_text(errors="replace")[-2000:]
            time.sleep(0.5)
        result, run = meta(ws, ray_cluster.address)
        assert result.returncode == 1
        line = stage_error(run)
        assert line.startswith(f"sleeves: preflight failed on node {LOOPBACK} ("), line
        for part in (f"it does not see the runs root at {run.dir} as the driver does (no such directory there)",
                     nodes.SHARED_FIX, "no sleeve was started"):
            assert part in line, (part, line)
        report = sleeves_doc(run)["preflight"]
        by_id = {n["id"]: n for n in report["nodes"]}
        assert by_id[ray_cluster.node_a]["ok"] and by_id[ray_cluster.node_b]["ok"] and len(by_id) == 3
        (bad,) = [n for n in report["nodes"] if not n["ok"]]
        assert f"node {bad['id'][:12]})" in line
        assert not (run.dir / "sleeves").exists() or not any((run.dir / "sleeves").iterdir())  # no sleeve ran
        assert not list(run.dir.glob(".fw-preflight-*"))
    finally:
        node_c.terminate()  # the script shuts its node's processes down on its way out
        try:
            node_c.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(node_c.pid, signal.SIGKILL)

