"""Fan-out of a meta run's sleeves: each unpinned sleeve's whole book (or a nested meta's) runs as a Ray
task or in this process.

A sleeve runs in `runs/<META_RUN_ID>/sleeves/<id>/`; a pinned sleeve (`run_id`) is read where it is,
and no other run is read. Every sleeve gets the data runs the meta pinned when it started
(`RunOptions.data_runs`, `meta.tree.pin_data_runs`), so no sleeve reads a data run that passed later. Everything a sleeve task needs travels in its spec (a plain dict, no
process-wide state). Ray is imported only when used: a private, authenticated, loopback-only local
instance (`local_ray_files`, `ray_session`), or a bounded connect to a cluster.
"""
from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

from quantlib.core import live, parallel
from quantlib.core.lean import skip_unused_imports
from quantlib.core.errors import DataError, WorkbookError
from quantlib.core.profiles import load_profile
from quantlib.core.ray_connect import ray_connect
from quantlib.core.runs import MANIFEST, Run, RunOptions
from quantlib.core.workspace import Workspace
from quantlib.engine.cluster import ray_env, running
from quantlib.engine.executor import run_phase
from quantlib.engine.resume import reopen

CANCEL_GRACE_S = 15.0  # an interrupted meta waits this long for its cancelled sleeve tasks to record it


# ----------------------------------------------------------------------------------------------
# specs
# ----------------------------------------------------------------------------------------------
def sleeve_specs(run: Run) -> tuple[list[dict], list[dict]]:
    """(specs to execute, pinned sleeves) for a meta run. A spec is a plain dict: all a task needs."""
    profile = run.profile
    runs_root, depth = run.runs_root, run.options.depth
    specs, pinned = [], []
    for entry in profile.meta.sleeves:
        if entry.run_id:
            target = runs_root / entry.run_id
            if not (target / MANIFEST).exists():
                raise DataError(f"sleeves: pinned run {entry.run_id!r} of sleeve {entry.id!r} does not exist under "
                                f"{runs_root}; fix meta.sleeves[{entry.id}].run_id or drop it to run the sleeve")
            pinned_run = Run.open(runs_root, entry.run_id)
            if pinned_run.manifest.get("profile") != entry.profile:
                raise DataError(f"sleeves: pinned run {entry.run_id} is a run of {pinned_run.manifest.get('profile')!r}, "
                                f"not of {entry.profile!r} (sleeve {entry.id!r})")
            pinned.append({"id": entry.id, "kind": "sleeve", "profile": entry.profile, "run_id": entry.run_id,
                           "run_dir": str(pinned_run.dir), "status": pinned_run.manifest.get("status"),
                           "error": pinned_run.manifest.get("error"), "pinned": True, "seconds": 0.0})
            continue
        kind = "meta" if entry.meta_profile else "sleeve"
        specs.append({"id": entry.id, "kind": kind, "profile": entry.meta_profile or entry.profile,
                      "phase": kind, "runs_dir": str(run.dir / "sleeves"), "run_id": entry.id,
                      "runs_root": str(runs_root), "parent_run": run.id, "workspace": str(run.workspace),
                      "overrides": run.resolved.overrides, "depth": depth + 1,
                      "cache": run.options.cache, "data_runs": run.options.data_runs})
    return specs, pinned


def run_spec(spec: dict) -> dict:
    """Execute one sleeve's (or nested meta's) whole book; returns where it is and how it ended.

    Runs in a Ray worker or in this process; resumes the sleeve run if it already exists (`resume.reopen`:
    refused, as a FAIL result, if its profile no longer resolves as recorded -- `meta --force` records
    such a change in every sleeve run before the meta runs).
    """
    skip_unused_imports()  # a Ray worker is a process of its own (in this process: already done)
    start = time.perf_counter()
    runs_dir = Path(spec["runs_dir"])
    try:
        if (runs_dir / spec["run_id"] / MANIFEST).exists():
            run = reopen(runs_dir, spec["run_id"], spec["phase"], spec["profile"], overrides=spec["overrides"])
        else:
            # the meta's workspace, not the worker's (a cluster's workers may have been started elsewhere)
            resolved = load_profile(spec["profile"], Workspace(spec["workspace"]).profiles, overrides=spec["overrides"])
            options = RunOptions(executor="local",  # a nested meta runs its own sleeves in its task
                                 runs_root=spec["runs_root"], parent_run=spec["parent_run"], depth=spec["depth"],
                                 cache=spec.get("cache", True), data_runs=spec.get("data_runs"))
            run = Run.create(runs_dir, resolved, spec["phase"], Path(spec["workspace"]), run_id=spec["run_id"],
                             options=options)
    except WorkbookError as exc:
        return {"id": spec["id"], "kind": spec["kind"], "profile": spec["profile"], "run_id": spec["run_id"],
                "run_dir": str(runs_dir / spec["run_id"]), "status": "FAIL", "error": str(exc), "pinned": False,
                "seconds": round(time.perf_counter() - start, 2), "log": []}
    log = []
    ok = run_phase(run, spec["phase"], say=log.append)
    return {"id": spec["id"], "kind": spec["kind"], "profile": spec["profile"], "run_id": run.id,
            "run_dir": str(run.dir), "status": "PASS" if ok else "FAIL", "error": run.manifest.get("error"),
            "pinned": False, "seconds": round(time.perf_counter() - start, 2), "log": log}


def run_books(run: Run, on_done: Callable[[dict], None], *, connect_timeout_s: float) -> tuple[dict, list[dict]]:
    """Run every unpinned sleeve of meta run `run` (how: its run options) and return (the `sleeves`
    document, the results with their logs). A local Ray instance's files live in a private folder for
    the duration (`local_ray_files`)."""
    executor, address = run.options.executor.value, run.options.ray_address
    specs, pinned = sleeve_specs(run)
    cluster = running(run.runs_root, run.workspace) if executor == "ray" and not address and specs else None
    if cluster is not None:  # `run_book.py cluster start` left one running for this checkout and runs root: join it
        address = cluster.address
        said = (f"sleeves: on the workbook cluster at {address} (started {cluster.started}; no Ray start-up; "
                f"`run_book.py cluster stop` stops it)")
        print(said)  # the notebook
        live.note(said)  # the terminal
    local_ray = executor == "ray" and not address
    with local_ray_files(run.dir) if local_ray else nullcontext() as private:
        results = pinned + execute(specs, executor, address, private, on_done, connect_timeout_s=connect_timeout_s,
                                   auth=cluster.env() if cluster else None)
    doc = {"run_id": run.id, "executor": executor, "ray_address": address, "ray_logs": "ray/" if local_ray else None,
           "ray_cluster": "workbook" if cluster else ("local" if local_ray else ("address" if address else None)),
           "sleeves": [{k: v for k, v in r.items() if k != "log"} for r in results]}
    return doc, results


def execute(specs: list[dict], executor: str = "ray", address: str | None = None, private: Path | None = None,
            on_done: Callable[[dict], None] = print, *, connect_timeout_s: float,
            auth: dict[str, str] | None = None) -> list[dict]:
    """Run every spec: as Ray tasks (a local instance whose files are in `private`, see `local_ray_files`, or the
    cluster at `address`, joined within `connect_timeout_s` with `auth`'s token settings when it is the workbook
    cluster) or one after another in this process."""
    if not specs:
        return []
    done = _reporting(on_done, len(specs))
    if executor == "local":
        results = []
        for spec in specs:
            results.append(run_spec(spec))
            done(results[-1])
        return results
    return _execute_ray(specs, address, private, connect_timeout_s, done, auth)


def _reporting(on_done: Callable[[dict], None], total: int) -> Callable[[dict], None]:
    """`on_done`, also telling the terminal (`core.live`) each sleeve as it finishes and the sleeves bar."""
    finished: list[str] = []
    live.step("sleeves", 0, total)

    def done(result: dict) -> None:
        finished.append(result["id"])
        seconds = f" in {result['seconds']:.1f} s" if isinstance(result.get("seconds"), (int, float)) else ""
        error = f": {result['error']}" if result.get("status") != "PASS" and result.get("error") else ""
        live.note(f"sleeve {result['id']} ({result['profile']}) {result['status']}{seconds}{error} "
                  f"[{len(finished)}/{total}]")
        live.step("sleeves", len(finished), total)
        on_done(result)

    return done


def run_spec_on_node(spec: dict) -> dict:
    """`run_spec` in a Ray worker, its result naming the node it ran on (recorded in `sleeves.json`). On a
    cluster of several nodes the sleeve's walk-forward decides its windows as Ray tasks there (its kernel sees
    `FW_RAY_ADDRESS`); on one node a local pool of forked processes does it (no Ray worker to start)."""
    import socket

    import ray

    if sum(1 for node in ray.nodes() if node.get("Alive")) > 1:
        os.environ[parallel.RAY_ADDRESS_ENV] = ray.get_runtime_context().gcs_address
    result = run_spec(spec)
    result["node"] = {"id": ray.get_runtime_context().get_node_id(), "ip": ray.util.get_node_ip_address(),
                      "host": socket.gethostname()}
    return result


def _execute_ray(specs: list[dict], address: str | None, private: Path | None, connect_timeout_s: float,
                 on_done: Callable, auth: dict[str, str] | None = None) -> list[dict]:
    with ray_session(address, private, connect_timeout_s, auth) as ray_start:
        import ray  # only now: Ray reads part of the environment ray_session sets when it is imported

        task = ray.remote(num_cpus=1, max_retries=0)(run_spec_on_node)
        pending = {task.remote(spec): spec for spec in specs}
        results = []
        try:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                spec = pending.pop(done[0])
                try:
                    result = ray.get(done[0])
                except Exception as exc:  # the task itself crashed (not a failed stage: those return FAIL)
                    result = {"id": spec["id"], "kind": spec["kind"], "profile": spec["profile"],
                              "run_id": spec["run_id"], "run_dir": str(Path(spec["runs_dir"]) / spec["run_id"]),
                              "status": "FAIL", "pinned": False, "seconds": None,
                              "error": f"task crashed: {type(exc).__name__}: {str(exc).splitlines()[0]}"}
                result["ray_start_seconds"] = ray_start
                results.append(result)
                on_done(result)
        except KeyboardInterrupt:  # the meta was interrupted: a KeyboardInterrupt in every running sleeve task,
            for ref in pending:   # whose run_phase records its run INTERRUPTED (given CANCEL_GRACE_S to do so)
                ray.cancel(ref)
            ray.wait(list(pending), num_returns=len(pending), timeout=CANCEL_GRACE_S)
            raise
        return sorted(results, key=lambda r: [s["id"] for s in specs].index(r["id"]))


# ----------------------------------------------------------------------------------------------
# Ray: a private, authenticated, loopback-only local instance, or a bounded connect to a cluster
# ----------------------------------------------------------------------------------------------
RAY_SOCKET_PATH_MAX = 107  # bytes: an AF_UNIX socket path (sun_path is 108 with its NUL)
# the longest path Ray puts under its temp dir: session_<date>_<time>_<usec>_<pid up to 7 digits>/sockets/plasma_store
_RAY_SOCKET_TAIL = len("/session_2026-01-01_00-00-00_000000_4194304/sockets/plasma_store")
LOOPBACK = "127.0.0.1"


@contextmanager
def local_ray_files(run_dir: Path) -> Iterator[Path]:
    """A private folder for one local Ray instance, removed on exit (pass, fail or Ctrl-C).

    `tempfile.mkdtemp` gives it an unguessable name and mode 0700 in the system temp folder (nothing is
    created at a predictable path, so nothing there can be hijacked). It holds `ray` -> `<run>/ray`, Ray's
    temp dir (its logs stay with the run; the short link keeps Ray's socket paths under 107 bytes), and
    `auth_token` (mode 0600): this instance's own token, never written to the home directory.
    """
    import secrets
    import shutil
    import tempfile

    real = run_dir / "ray"
    real.mkdir(parents=True, exist_ok=True)
    base = tempfile.gettempdir()
    if len(base) + len("/fw-ray-XXXXXXXX/ray") + _RAY_SOCKET_TAIL > RAY_SOCKET_PATH_MAX:
        base = "/tmp"  # a long TMPDIR (macOS) would push Ray's socket paths over the limit
    private = Path(tempfile.mkdtemp(prefix="fw-ray-", dir=base))
    try:
        (private / "ray").symlink_to(real.resolve(), target_is_directory=True)
        fd = os.open(private / "auth_token", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(32))  # 256 bits, the format `ray get-auth-token --generate` writes
        yield private
    finally:
        shutil.rmtree(private, ignore_errors=True)  # unlinks the link, never follows it into the run


@contextmanager
def _ray_env(auth: dict[str, str] | None) -> Iterator[None]:
    """Ray's own settings for this session (Ray reads them from the environment, here and in every process it
    starts), restored on exit. Always: no usage stats. A workbook-owned instance (a meta's own, or the workbook
    cluster): `auth`, its token auth settings (`cluster.ray_env`; a `RAY_AUTH_TOKEN` would take precedence over
    the token file, so it is unset). Another cluster's auth settings are the user's: left alone."""
    wanted: dict[str, str | None] = {"RAY_USAGE_STATS_ENABLED": os.environ.get("RAY_USAGE_STATS_ENABLED", "0")}
    if auth is not None:
        wanted.update(auth, RAY_AUTH_TOKEN=None)
    saved = {key: os.environ.get(key) for key in wanted}

    def apply(values: dict[str, str | None]) -> None:
        for key, value in values.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value

    apply(wanted)
    _reload_ray_auth()
    try:
        yield
    finally:
        apply(saved)
        _reload_ray_auth()  # before the token file goes: Ray must not look for it again


def _reload_ray_auth() -> None:
    """Make this process's Ray see the current auth settings: Ray caches them (config first, then the token
    cache, the order Ray's own reset uses so that no gRPC thread reloads a token that is about to be removed)."""
    from ray._raylet import AuthenticationTokenLoader, Config

    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


@contextmanager
def ray_session(address: str | None, private: Path | None, connect_timeout_s: float,
                auth: dict[str, str] | None = None) -> Iterator[float]:
    """Ray for one meta stage, shut down on exit (pass, fail or Ctrl-C); yields the seconds it took to start.

    No `address`: a fresh local instance (never another meta's) with its files in `private`
    (`local_ray_files`): token auth with its own token, every server on 127.0.0.1. An `address`: join that
    cluster (with `auth`, the workbook cluster's token settings), giving up after `connect_timeout_s` (Ray
    itself retries for minutes when nothing answers).
    """
    if address is None and private is None:
        raise ValueError("ray_session: a local Ray instance needs its private folder (fanout.local_ray_files)")
    start = time.perf_counter()
    with _ray_env(auth if address else ray_env(private, loopback=True)):
        import ray

        try:
            try:
                if address:
                    ray_connect(address, connect_timeout_s, "meta.ray_connect_timeout_s")
                else:
                    info = ray.init(address="local", num_cpus=os.cpu_count() or 2, include_dashboard=False,
                                    _temp_dir=str(private / "ray"), _node_ip_address=LOOPBACK,
                                    configure_logging=False, log_to_driver=False).address_info
                    if info["node_ip_address"] != LOOPBACK:
                        raise RuntimeError(f"node address {info['node_ip_address']} is not {LOOPBACK}: Ray was "
                                           f"imported before RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 was set")
            except Exception as exc:
                first = (str(exc).strip().splitlines() or [""])[0]
                where, fix = ((f"at --ray-address {address}", "start the cluster there (`ray start --head`), fix "
                               "--ray-address or run with --executor local") if address else
                              ("locally", "run with --executor local"))
                raise WorkbookError(f"sleeves: cannot start Ray {where} ({type(exc).__name__}: {first}); {fix}") from None
            yield round(time.perf_counter() - start, 2)
        finally:
            ray.shutdown()
