"""The multi-node rules without a cluster: sleeve resources (profile validation, placement check), the shipped
code's excludes, the preflight's verdict on a node's answer, and the record of a sleeve whose worker died.
(The same rules on a real multi-node cluster: test_multinode.py.)"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import ROOT
from quantlib.core.errors import ProfileError, WorkbookError
from quantlib.core.profiles import load_profile
from quantlib.core.runs import Run, RunOptions
from quantlib.engine import fanout, nodes


def _node(resources: dict, alive: bool = True) -> dict:
    return {"NodeID": "n" * 56, "Alive": alive, "Resources": resources}


@pytest.mark.parametrize("resources, message", [
    ("{CPU: 2}", "'CPU' is not a custom Ray resource"),
    ("{gpu_box: 0}", "gpu_box=0; an amount must be > 0"),
])
def test_a_sleeve_asks_only_for_custom_resources_in_positive_amounts(resources, message):
    sleeves = f"[{{id: a, profile: demo_crypto_long, resources: {resources}}}, {{id: b, profile: demo_crypto_short}}]"
    with pytest.raises(ProfileError, match=message):
        load_profile("demo_meta", env={"FW_META__SLEEVES": sleeves})


def test_a_pinned_run_cannot_be_placed():
    sleeves = ("[{id: a, profile: demo_crypto_long, run_id: demo_crypto_long-20260101T000000-abcd, "
               "resources: {node_a: 1}}, {id: b, profile: demo_crypto_short}]")
    with pytest.raises(ProfileError, match="'resources' place a sleeve's task, but a pinned run"):
        load_profile("demo_meta", env={"FW_META__SLEEVES": sleeves})


def test_resources_are_checked_against_the_alive_nodes_with_a_cpu():
    cluster = [_node({"CPU": 1, "node_a": 1}), _node({"CPU": 0, "node_b": 1}), _node({"CPU": 1, "node_c": 1}, False),
               _node({"CPU": 2, "node_d": 1, "big": 4})]
    fine = [{"id": "x", "resources": {"node_a": 1}}, {"id": "y", "resources": {"node_d": 1, "big": 2}},
            {"id": "z", "resources": {}}]
    nodes.check_resources(fine, cluster, "at h:1")  # nothing raised
    for wanted, says in [({"node_b": 1}, "no node with a CPU has node_b=1"),   # only on a CPU-less node
                         ({"node_c": 1}, "no node with a CPU has node_c=1"),   # only on a dead node
                         ({"big": 5}, "no node with a CPU has big=5"),
                         ({"node_a": 1, "big": 1}, "no single node with a CPU has all of node_a=1, big=1")]:
        with pytest.raises(WorkbookError) as info:
            nodes.check_resources([{"id": "s", "resources": wanted}], cluster, "at h:1")
        line = str(info.value)
        assert "\n" not in line and line.startswith("sleeves: sleeve 's' asks for Ray resources ") and says in line
        assert "custom resources there: big, node_a, node_d" in line and line.endswith("no sleeve was started")
    with pytest.raises(WorkbookError, match="no alive node of the Ray cluster at h:1 has a CPU"):
        nodes.check_resources(fine, [_node({"CPU": 0})], "at h:1")


def test_the_shipped_code_leaves_out_runs_data_and_environments(tmp_path):
    env = fanout.shipped_code(ROOT, [ROOT / "runs", ROOT / "elsewhere" / "lake", tmp_path / "lake"])
    assert env["working_dir"] == str(ROOT.resolve())
    for pattern in ("/runs/", "/lakehouse/", ".venv/", ".git/", "*.parquet", "/elsewhere/lake/"):
        assert pattern in env["excludes"], pattern
    assert not any(str(tmp_path) in p for p in env["excludes"])  # outside the workspace: never shipped anyway
    assert len(env["excludes"]) == len(set(env["excludes"]))


def test_the_preflight_names_what_a_node_does_not_see_or_runs_differently():
    tokens = [{"label": "runs root", "dir": "/shared/runs", "file": "/shared/runs/.fw-preflight-1", "content": "x"}]
    expected = {"python": "3.11", "pandas": "2.2.3", "quantlib code": "abc"}
    ok = {"seen": {"/shared/runs/.fw-preflight-1": "ok"}, "versions": dict(expected)}
    assert nodes.problem_of(ok, tokens, expected) is None
    blind = {**ok, "seen": {"/shared/runs/.fw-preflight-1": "no such directory"}}
    assert nodes.problem_of(blind, tokens, expected) == (
        f"it does not see the runs root at /shared/runs as the driver does (no such directory there); {nodes.SHARED_FIX}")
    old = {**ok, "versions": {**expected, "pandas": "2.1.0"}}
    assert nodes.problem_of(old, tokens, expected) == f"pandas 2.1.0 there, 2.2.3 on the driver; {nodes.VERSIONS_FIX}"
    other_code = {**ok, "versions": {**expected, "quantlib code": "def"}}
    assert nodes.problem_of(other_code, tokens, expected).endswith(nodes.CODE_FIX)


def test_a_sleeve_whose_task_died_is_recorded_fail_with_its_node_and_the_resume_hint(tmp_path):
    resolved = load_profile("demo_crypto_long")
    run = Run.create(tmp_path / "meta" / "sleeves", resolved, "sleeve", ROOT, run_id="crypto_long",
                     options=RunOptions(executor="local"))
    run.manifest["stages"]["ingest"] = {"status": "running"}
    run.save()
    node = {"id": "f" * 56, "ip": "10.0.0.7", "host": "box-b"}
    (run.dir / nodes.NODE_FILE).write_text(json.dumps({**node, "pid": 1}))
    spec = {"id": "crypto_long", "kind": "sleeve", "profile": "demo_crypto_long", "run_id": "crypto_long",
            "runs_dir": str(run.dir.parent), "parent_run": "meta-1"}
    result = fanout.crashed(spec, RuntimeError("The worker died unexpectedly\nmore"))
    assert result["status"] == "FAIL" and result["node"] == node
    assert result["error"] == ("sleeve 'crypto_long': its Ray task died on node 10.0.0.7 (box-b, node ffffffffffff) "
                               "(RuntimeError: The worker died unexpectedly); resume the meta (--run-id meta-1) to "
                               "rerun this sleeve only")
    after = Run.at(run.dir)
    assert after.status == "FAIL" and after.manifest["error"] == result["error"]
    assert after.manifest["stages"]["ingest"]["status"] == "failed"
    unknown = fanout.crashed({**spec, "run_id": "never"}, RuntimeError("gone"))
    assert "died before it recorded its node" in unknown["error"] and unknown["node"] is None
    assert not Path(unknown["run_dir"]).exists()
