"""The Ray nodes a meta's sleeves run on: where a sleeve may run (its custom resources), what every node must
see and run before any sleeve starts (the preflight), and how a node is named in records and messages.

The supported multi-node setup: the runs root and the lakehouse on shared storage mounted at the same path on
every node, the same Python packages everywhere, and the driver's code shipped to the workers by Ray
(`fanout.shipped_code`). The preflight proves the first two and that the third worked, in one small task per
alive node (pinned with `NodeAffinitySchedulingStrategy(soft=False)`): the driver writes a token file with
random content into the meta's run dir and every lakehouse the sleeves read, each node reads them back and
reports its package versions and the fingerprint of the quantlib code it imports. Any difference fails the meta
in one line naming the node, the path or package and the fix, before any sleeve ran.

Ray workers import this module for the probe: standard library only at module level, so the check costs a
task's round trip, not the workbook's imports.
"""
from __future__ import annotations

import hashlib
import os
import platform
import secrets
import socket
import time
from collections.abc import Callable, Iterable
from functools import lru_cache
from pathlib import Path
from typing import Any

from quantlib.core.errors import WorkbookError, first_line
from quantlib.core.enums import RAY_BUILTIN_RESOURCES

NODE_FILE = "node.json"  # written into a sleeve's run dir by its Ray task first thing: the node it runs on
PREFLIGHT_PACKAGES = ("ray", "pandas", "numpy", "papermill", "fractal-workbook")
PREFLIGHT_TIMEOUT_S = 120.0  # a node that must first unpack the shipped code and start a worker
SHARED_FIX = "mount the runs root and the lakehouse at the same path on every node (shared storage, e.g. NFS)"
VERSIONS_FIX = (f"install the same python (major.minor), {', '.join(PREFLIGHT_PACKAGES)} on every node "
                "(or stop that node's Ray)")
CODE_FIX = ("the meta ships the driver's code to the cluster (Ray's working_dir): start the node's Ray without "
            "another quantlib ahead of it on PYTHONPATH")


class PreflightError(WorkbookError):
    """A node cannot run the meta's sleeves; `report` is the per-node record (`sleeves.json`'s `preflight`)."""

    def __init__(self, message: str, report: dict[str, Any]) -> None:
        super().__init__(message)
        self.report = report


@lru_cache(maxsize=1)
def package_fingerprint() -> str:
    """sha256 over every source file of the `quantlib` package this process imports (the stage cache's code key;
    the preflight's proof that a node runs the driver's code)."""
    root = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(f"{path.relative_to(root).as_posix()}\0".encode() + path.read_bytes())
    return digest.hexdigest()


def this_node() -> dict[str, str]:
    """The Ray node this worker runs on: id, ip, host."""
    import ray

    return {"id": ray.get_runtime_context().get_node_id(), "ip": ray.util.get_node_ip_address(),
            "host": socket.gethostname()}


def describe(node: dict[str, Any]) -> str:
    """`10.0.0.5 (host-b, node 3ff72be20212)` for messages."""
    return f"{node.get('ip', '?')} ({node.get('host', '?')}, node {str(node.get('id', '?'))[:12]})"


def node_versions() -> dict[str, str]:
    """What must be equal on every node: python major.minor, the packages a sleeve needs, the quantlib code."""
    from importlib import metadata

    versions = {"python": ".".join(platform.python_version_tuple()[:2])}
    for name in PREFLIGHT_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    versions["quantlib code"] = package_fingerprint()[:16]
    return versions


def probe(tokens: list[dict[str, str]]) -> dict[str, Any]:
    """Run on one node: read back every token file, report this node and its versions."""
    seen = {}
    for token in tokens:
        path = Path(token["file"])
        try:
            seen[token["file"]] = "ok" if path.read_text(encoding="utf-8") == token["content"] else "other content"
        except FileNotFoundError:
            seen[token["file"]] = "no such file" if path.parent.is_dir() else "no such directory"
        except OSError as exc:
            seen[token["file"]] = f"unreadable: {exc.strerror or type(exc).__name__}"
    return {"node": this_node(), "versions": node_versions(), "seen": seen}


# ----------------------------------------------------------------------------------------------
# placement: a sleeve's custom resources, checked against the cluster before anything is submitted
# ----------------------------------------------------------------------------------------------
def sleeve_nodes(nodes: list[dict]) -> list[dict]:
    """The alive nodes a sleeve task (1 CPU) can run on, from `ray.nodes()`."""
    return [n for n in nodes if n.get("Alive") and n.get("Resources", {}).get("CPU", 0) >= 1]


def check_resources(specs: list[dict], nodes: list[dict], where: str) -> None:
    """Every spec's `resources` are held by some alive node with a CPU, else one line naming the sleeve and the
    resource (Ray would keep such a task pending forever)."""
    usable = sleeve_nodes(nodes)
    if not usable:
        raise WorkbookError(f"sleeves: no alive node of the Ray cluster {where} has a CPU for a sleeve task; "
                            f"start a worker node (`ray start --address ... --num-cpus N`)")
    custom = sorted({name for n in usable for name in n["Resources"]
                     if name not in RAY_BUILTIN_RESOURCES and not name.startswith("node:")})
    for spec in specs:
        wanted = spec.get("resources") or {}
        if not wanted or any(all(n["Resources"].get(k, 0) >= v for k, v in wanted.items()) for n in usable):
            continue
        missing = [k for k, v in wanted.items() if not any(n["Resources"].get(k, 0) >= v for n in usable)]
        asked = ", ".join(f"{k}={v:g}" for k, v in wanted.items())
        what = (f"no node with a CPU has {', '.join(f'{k}={wanted[k]:g}' for k in missing)}" if missing
                else f"no single node with a CPU has all of {asked}")
        raise WorkbookError(f"sleeves: sleeve {spec['id']!r} asks for Ray resources {asked} "
                            f"(meta.sleeves[{spec['id']}].resources) but {what} in the cluster {where} "
                            f"(custom resources there: {', '.join(custom) or 'none'}); start a node with "
                            f"`ray start --address ... --resources='{{\"{(missing or list(wanted))[0]}\": 1}}'` "
                            f"or fix the profile; no sleeve was started")


# ----------------------------------------------------------------------------------------------
# preflight
# ----------------------------------------------------------------------------------------------
def preflight_paths(specs: list[dict]) -> list[tuple[str, Path]]:
    """(label, directory) every node must see as the driver does: the meta's run dir (in the runs root) and
    every lakehouse the sleeves read that exists here."""
    paths: list[tuple[str, Path]] = []
    for spec in specs:
        wanted = [("runs root", Path(spec["runs_dir"]).parent)]
        if spec.get("lakehouse") and Path(spec["lakehouse"]).is_dir():
            wanted.append(("lakehouse", Path(spec["lakehouse"])))
        paths += [item for item in wanted if item[1] not in [p for _, p in paths]]
    return paths


def _write_tokens(paths: Iterable[tuple[str, Path]]) -> list[dict[str, str]]:
    tokens = []
    for label, directory in paths:
        file = directory / f".fw-preflight-{secrets.token_hex(6)}"
        content = secrets.token_hex(16)
        fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(content)
            fh.flush()
            os.fsync(fh.fileno())  # written through to the shared filesystem before another node reads it
        tokens.append({"label": label, "dir": str(directory), "file": str(file), "content": content})
    return tokens


def problem_of(answer: dict[str, Any], tokens: list[dict[str, str]], expected: dict[str, str]) -> str | None:
    """What is wrong with one node's probe answer (None: nothing), with its fix."""
    for token in tokens:
        seen = answer["seen"].get(token["file"], "not checked")
        if seen != "ok":
            return f"it does not see the {token['label']} at {token['dir']} as the driver does ({seen} there); {SHARED_FIX}"
    for name, mine in expected.items():
        theirs = answer["versions"].get(name, "unknown")
        if theirs != mine:
            fix = CODE_FIX if name == "quantlib code" else VERSIONS_FIX
            return f"{name} {theirs} there, {mine} on the driver; {fix}"
    return None


def preflight(specs: list[dict], timeout_s: float = PREFLIGHT_TIMEOUT_S,
              workers: dict[str, Callable] | None = None) -> dict[str, Any]:
    """Check every alive node a sleeve can run on (connected Ray); returns the report recorded in `sleeves.json`
    (`seconds`, per node id/ip/host/ok/problem, `by`: how each node was checked), or raises a PreflightError
    naming the first failing node. `workers`: node id -> a function submitting the probe to a warm worker there
    (`warm.checkers`: no worker start); the other nodes get a task pinned to them."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    start = time.perf_counter()
    nodes = sleeve_nodes(ray.nodes())
    tokens = _write_tokens(preflight_paths(specs))
    expected = node_versions()
    report: dict[str, Any] = {"nodes": [], "checked": [f"{t['label']} {t['dir']}" for t in tokens]
                              + sorted(expected)}
    try:
        task = ray.remote(num_cpus=0, max_retries=0)(probe)
        payload = [{"file": t["file"], "content": t["content"]} for t in tokens]
        workers = workers or {}

        def check(node: dict):
            if node["NodeID"] in workers:
                return workers[node["NodeID"]](probe, payload)
            return task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
                                ).remote(payload)

        pending = {check(n): n for n in nodes}
        ready, _ = ray.wait(list(pending), num_returns=len(pending), timeout=timeout_s) if pending else ([], [])
        for ref, node in pending.items():
            record = {"id": node["NodeID"], "ip": node.get("NodeManagerAddress"),
                      "host": node.get("NodeManagerHostname")}
            if ref not in ready:
                problem = f"it did not answer within {timeout_s:g} s"
            else:
                try:
                    answer = ray.get(ref)
                    record["host"] = answer["node"]["host"]
                    problem = problem_of(answer, tokens, expected)
                except Exception as exc:  # the node could not run the probe (its runtime env, a dead worker)
                    problem = f"it could not run the check ({type(exc).__name__}: {first_line(exc)[:200]})"
            report["nodes"].append({**record, "ok": problem is None, "problem": problem,
                                    "by": "warm worker" if node["NodeID"] in workers else "task"})
    finally:
        for token in tokens:
            Path(token["file"]).unlink(missing_ok=True)
        report["seconds"] = round(time.perf_counter() - start, 3)
    failed = [n for n in report["nodes"] if not n["ok"]]
    if failed:
        more = f" (and {len(failed) - 1} more node(s), see sleeves.json)" if len(failed) > 1 else ""
        raise PreflightError(f"sleeves: preflight failed on node {describe(failed[0])}: {failed[0]['problem']}"
                             f"{more}; no sleeve was started", report)
    return report
