"""Fan-out of a meta run's sleeves: each unpinned sleeve's whole book (or a nested meta's) runs as a Ray
task or in this process.

A sleeve runs in `runs/<META_RUN_ID>/sleeves/<id>/`; a pinned sleeve (`run_id`) is read where it is,
and no other run is read. Every sleeve gets the data runs the meta pinned when it started
(`RunOptions.data_runs`, `meta.tree.pin_data_runs`), so no sleeve reads a data run that passed later. Everything a sleeve task needs travels in its spec (a plain dict, no
process-wide state). Ray is imported only when used: a private, authenticated, loopback-only local
instance (`local_ray_files`, `ray_session`), or a bounded connect to a cluster.

On a cluster joined with `--ray-address` the driver's workspace is shipped to the workers (`shipped_code`,
Ray's `working_dir`): a sleeve task reads its profiles and stage notebooks from that copy (its working
directory; `RunOptions.code_dir`) and imports its quantlib from it, while the run's workspace, runs root
and lakehouse stay the driver's absolute paths (shared storage at the same path on every node). Before
any sleeve starts, every node is checked (`engine.nodes.preflight`) and every sleeve's custom resources
(`meta.sleeves[].resources`) are matched against the cluster (`engine.nodes.check_resources`).
"""
from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

from quantlib.core import live, parallel, storage
from quantlib.core.lean import skip_unused_imports
from quantlib.core.errors import DataError, WorkbookError, first_line
from quantlib.core.profiles import load_profile
from quantlib.core.ray_connect import ray_connect
from quantlib.core.runs import MANIFEST, Run, RunOptions, utc_now
from quantlib.core.workspace import Workspace
from quantlib.engine import nodes, warm
from quantlib.engine.cluster import ray_env, running
from quantlib.engine.executor import run_phase, settle_dead
from quantlib.engine.resume import reopen

CANCEL_GRACE_S = 15.0  # an interrupted meta waits this long for its cancelled sleeve tasks to record it
SHIPPED = "ray:working_dir"  # a spec's `code_dir`: the copy of the workspace Ray shipped (the task's working dir)
#: never shipped (gitwildmatch, relative to the workspace; Ray also honours the workspace's .gitignore and
#: .rayignore): run data, environments, caches, data files. Ray refuses a package over 512 MiB.
SHIP_EXCLUDES = ("/runs/", "/lakehouse/", ".git/", ".venv/", "venv/", "venvs/", "__pycache__/", "*.pyc",
                 ".numba_cache/", ".pytest_cache/", ".ipynb_checkpoints/", ".mypy_cache/", ".ruff_cache/",
                 "/build/", "/dist/", "*.egg-info/", "bench/out/", "*.parquet", "*.feather", "*.arrow")


# ----------------------------------------------------------------------------------------------
# specs
# ----------------------------------------------------------------------------------------------
def ships_code(run: Run) -> bool:
    """A meta joining `--ray-address` ships its workspace to the cluster (its own local instance and the
    workbook cluster of the same checkout run this machine's code already)."""
    return run.options.executor.value == "ray" and bool(run.options.ray_address)


def sleeve_specs(run: Run) -> tuple[list[dict], list[dict]]:
    """(specs to execute, pinned sleeves) for a meta run. A spec is a plain dict: all a task needs.

    Paths are absolute, the driver's: runs root, the sleeves' run dir and the lakehouse the sleeve reads
    (resolved against the workspace here, never on a worker). `code_dir` says where the task reads profiles
    and notebooks: SHIPPED (the copy Ray shipped, `ships_code`), else this run's own (None: its workspace).
    `resources` are the sleeve's custom Ray resources (placement)."""
    profile = run.profile
    runs_root, depth = Path(run.runs_root).absolute(), run.options.depth
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
        name = entry.meta_profile or entry.profile
        try:
            sleeve = load_profile(name, Workspace(run.code_root).profiles, overrides=run.resolved.overrides).profile
            lakehouse = str(Workspace(run.workspace).resolve(sleeve.data.lakehouse))
        except WorkbookError:  # its task fails on it, naming it (a FAIL result, like any sleeve that cannot start)
            lakehouse = None
        specs.append({"id": entry.id, "kind": kind, "profile": name,
                      "phase": kind, "runs_dir": str(run.dir.absolute() / "sleeves"), "run_id": entry.id,
                      "runs_root": str(runs_root), "parent_run": run.id, "workspace": str(run.workspace),
                      "overrides": run.resolved.overrides, "depth": depth + 1,
                      "cache": run.options.cache, "data_runs": run.options.data_runs,
                      "lakehouse": lakehouse,
                      "code_dir": SHIPPED if ships_code(run) else run.options.code_dir,
                      "resources": dict(entry.resources or {})})
    return specs, pinned


def shipped_code(workspace: Path, data_dirs: Iterable[str | Path] = ()) -> dict:
    """Ray's runtime_env shipping `workspace` to a cluster's workers (`working_dir`), without what SHIP_EXCLUDES
    names nor `data_dirs` (the runs root, the lakehouse) when they lie inside it."""
    root = Path(workspace).resolve()
    inside = set()
    for directory in data_dirs:
        try:
            rel = Path(directory).resolve().relative_to(root)
        except ValueError:
            continue
        if rel.parts:
            inside.add(f"/{rel.as_posix()}/")
    return {"working_dir": str(root), "excludes": [*SHIP_EXCLUDES, *sorted(inside - set(SHIP_EXCLUDES))]}


def code_root(spec: dict) -> Path:
    """Where a spec's task reads profiles and notebooks: its working directory when the code was shipped (Ray
    unpacked the driver's workspace there), else the spec's code dir or workspace."""
    if spec.get("code_dir") != SHIPPED:
        return Path(spec.get("code_dir") or spec["workspace"])
    here = Path(os.getcwd())
    if not (here / "profiles" / "base.yaml").is_file() or not (here / "notebooks").is_dir():
        raise WorkbookError(f"sleeves: the shipped code at {here} (Ray's working_dir) has no profiles/base.yaml or "
                            f"notebooks/; check the workspace's .gitignore / .rayignore, which Ray also honours")
    return here


def run_spec(spec: dict, started: Callable[[Run], None] | None = None) -> dict:
    """Execute one sleeve's (or nested meta's) whole book; returns where it is and how it ended.

    Runs in a Ray worker or in this process; resumes the sleeve run if it already exists (`resume.reopen`:
    refused, as a FAIL result, if its profile no longer resolves as recorded -- `meta --force` records
    such a change in every sleeve run before the meta runs). `started(run)` is called once the run exists,
    before its first stage.
    """
    skip_unused_imports()  # a Ray worker is a process of its own (in this process: already done)
    start = time.perf_counter()
    runs_dir = Path(spec["runs_dir"])
    try:
        code = code_root(spec)
        code_dir = None if code == Path(spec["workspace"]) else str(code)
        profiles = Workspace(code).profiles  # the code's profiles, never the worker's current directory's
        if (runs_dir / spec["run_id"] / MANIFEST).exists():
            run = reopen(runs_dir, spec["run_id"], spec["phase"], spec["profile"], overrides=spec["overrides"],
                         profiles_dir=profiles)
            if run.options.code_dir != code_dir:  # shipped again: this task's copy
                run.set_options(code_dir=code_dir)
                run.save()
        else:
            resolved = load_profile(spec["profile"], profiles, overrides=spec["overrides"])
            options = RunOptions(executor="local",  # a nested meta runs its own sleeves in its task
                                 runs_root=spec["runs_root"], parent_run=spec["parent_run"], depth=spec["depth"],
                                 cache=spec.get("cache", True), data_runs=spec.get("data_runs"), code_dir=code_dir)
            run = Run.create(runs_dir, resolved, spec["phase"], Path(spec["workspace"]), run_id=spec["run_id"],
                             options=options, profiles_dir=profiles)
    except WorkbookError as exc:
        return sleeve_result(spec, "FAIL", str(exc), round(time.perf_counter() - start, 2), log=[])
    if started is not None:
        started(run)
    log = []
    ok = run_phase(run, spec["phase"], say=log.append)
    return sleeve_result(spec, "PASS" if ok else "FAIL", run.manifest.get("error"),
                         round(time.perf_counter() - start, 2), log=log)


def sleeve_result(spec: dict, status: str, error: str | None, seconds: float | None, **more) -> dict:
    """What a sleeve's execution reports (a row of `sleeves.json`, plus `more`: its log, its node)."""
    return {"id": spec["id"], "kind": spec["kind"], "profile": spec["profile"], "run_id": spec["run_id"],
            "run_dir": str(Path(spec["runs_dir"]) / spec["run_id"]), "status": status, "error": error,
            "pinned": False, "seconds": seconds, **more}


def run_books(run: Run, on_done: Callable[[dict], None], *, connect_timeout_s: float) -> tuple[dict, list[dict]]:
    """Run every unpinned sleeve of meta run `run` (how: its run options) and return (the `sleeves`
    document, the results with their logs). A local Ray instance's files live in a private folder for
    the duration (`local_ray_files`). A failed preflight raises a PreflightError carrying the document
    (`doc`: no sleeve, the per-node report)."""
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
    ship = (shipped_code(run.workspace, [run.runs_root, *{s["lakehouse"] for s in specs if s["lakehouse"]}])
            if ships_code(run) and specs else None)

    def document(results: list[dict], preflight: dict | None) -> dict:
        return {"run_id": run.id, "executor": executor, "ray_address": address,
                "ray_logs": "ray/" if local_ray else None,
                "ray_cluster": "workbook" if cluster else ("local" if local_ray else ("address" if address else None)),
                "code": ({"shipped_from": ship["working_dir"], "excludes": ship["excludes"]} if ship else None),
                "preflight": preflight,
                "sleeves": [{k: v for k, v in r.items() if k != "log"} for r in results]}

    with local_ray_files(run.dir) if local_ray else nullcontext() as private:
        try:
            ran, preflight = execute(specs, executor, address, private, on_done, connect_timeout_s=connect_timeout_s,
                                     auth=cluster.env() if cluster else None, ship=ship,
                                     warm_workers=cluster is not None)
        except nodes.PreflightError as exc:
            exc.doc = document(pinned, exc.report)
            raise
    results = pinned + ran
    return document(results, preflight), results


def execute(specs: list[dict], executor: str = "ray", address: str | None = None, private: Path | None = None,
            on_done: Callable[[dict], None] = print, *, connect_timeout_s: float,
            auth: dict[str, str] | None = None, ship: dict | None = None,
            warm_workers: bool = False) -> tuple[list[dict], dict | None]:
    """Run every spec: as Ray tasks (a local instance whose files are in `private`, see `local_ray_files`, or the
    cluster at `address`, joined within `connect_timeout_s` with `auth`'s token settings when it is the workbook
    cluster and shipping the code with `ship`, see `shipped_code`; on the workbook cluster, `warm_workers`: the
    unpinned sleeves in its warm actors, `engine.warm`) or one after another in this process.
    Returns (the results, the preflight report: None without Ray)."""
    if not specs:
        return [], None
    done = _reporting(on_done, len(specs))
    if executor == "local":
        results = []
        for spec in specs:
            results.append(run_spec(spec))
            done(results[-1])
        return results, None
    return _execute_ray(specs, address, private, connect_timeout_s, done, auth, ship, warm_workers)


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
    """`run_spec` in a Ray worker: first thing once its run exists, the task records the node it runs on in
    the run dir (`node.json`: node id, ip, host, pid, the code it runs), so a worker that dies mid-sleeve
    is named; the result names the node too (recorded in `sleeves.json`). On a cluster of several nodes the
    sleeve's kernel sees `FW_RAY_ADDRESS`, where `backtest.windows_on_ray` sends its walk-forward windows."""
    import ray

    node = nodes.this_node()

    def started(run: Run) -> None:
        storage.write_json(run.dir / nodes.NODE_FILE, {**node, "pid": os.getpid(), "at": utc_now(),
                                                       "code_dir": str(run.code_root),
                                                       "quantlib": str(Path(nodes.__file__).resolve().parents[1])})

    if sum(1 for alive in ray.nodes() if alive.get("Alive")) > 1:
        os.environ[parallel.RAY_ADDRESS_ENV] = ray.get_runtime_context().gcs_address
    result = run_spec(spec, started)
    result["node"] = node
    return result


def crashed(spec: dict, exc: BaseException) -> dict:
    """The result of a sleeve task that died (its worker or node gone: not a failed stage, which returns FAIL),
    naming the sleeve and the node it ran on (its `node.json`); its run, still recorded RUNNING by the dead
    process, and the runs nested in it are recorded FAIL (`executor.settle_dead`)."""
    run_dir = Path(spec["runs_dir"]) / spec["run_id"]
    try:
        node = storage.read_json(run_dir / nodes.NODE_FILE)
    except (DataError, OSError):
        node = None
    where = f"on node {nodes.describe(node)}" if node else "before it recorded its node"
    error = (f"sleeve {spec['id']!r}: its Ray task died {where} ({type(exc).__name__}: {first_line(exc)[:200]}); "
             f"resume the meta (--run-id {spec['parent_run']}) to rerun this sleeve only")
    settle_dead(run_dir, error)
    return sleeve_result(spec, "FAIL", error, None,
                         node={k: node[k] for k in ("id", "ip", "host") if k in node} if node else None)


def _execute_ray(specs: list[dict], address: str | None, private: Path | None, connect_timeout_s: float,
                 on_done: Callable, auth: dict[str, str] | None = None, ship: dict | None = None,
                 warm_workers: bool = False) -> tuple[list[dict], dict]:
    with ray_session(address, private, connect_timeout_s, auth, ship) as ray_start:
        import ray  # only now: Ray reads part of the environment ray_session sets when it is imported

        nodes.check_resources(specs, ray.nodes(), f"at {address}" if address else "started locally")
        task = ray.remote(num_cpus=1, max_retries=0)(run_spec_on_node)
        queued = [spec for spec in specs if warm_workers and not spec.get("resources")]  # for the warm workers
        idle = warm.pool(max(1, min(len(queued), int(ray.cluster_resources().get("CPU", 1))))) if queued else []
        preflight = nodes.preflight(specs, workers=warm.checkers(idle) if idle else None)
        pending: dict = {}  # ref -> (spec, the warm worker running it or None: a task)

        def submit(spec: dict, worker=None) -> None:
            if worker is not None:
                ref = worker.run.remote(run_spec_on_node, spec)
            else:
                ref = (task.options(resources=spec["resources"]) if spec.get("resources") else task).remote(spec)
            pending[ref] = (spec, worker)

        for spec in specs:
            if spec not in queued:
                submit(spec)
        while queued and idle:
            submit(queued.pop(0), idle.pop(0))
        results = []
        try:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                spec, worker = pending.pop(done[0])
                try:
                    result = ray.get(done[0])
                except Exception as exc:  # the task itself died (not a failed stage: those return FAIL)
                    result = crashed(spec, exc)
                if worker is not None and queued:  # a dead worker is restarted by Ray: its next sleeve waits
                    submit(queued.pop(0), worker)
                result["ray_start_seconds"] = ray_start
                results.append(result)
                on_done(result)
        except KeyboardInterrupt:
            # the meta was interrupted: a KeyboardInterrupt in every running sleeve (task or warm worker), whose
            # run_phase records its run INTERRUPTED (given CANCEL_GRACE_S to do so)
            for ref, (_, worker) in pending.items():
                if worker is None:
                    ray.cancel(ref)
                else:  # Ray cannot cancel a running actor method
                    warm.interrupt(worker)
            ray.wait(list(pending), num_returns=len(pending), timeout=CANCEL_GRACE_S)
            raise
        return sorted(results, key=lambda r: [s["id"] for s in specs].index(r["id"])), preflight


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
                auth: dict[str, str] | None = None, ship: dict | None = None) -> Iterator[float]:
    """Ray for one meta stage, shut down on exit (pass, fail or Ctrl-C); yields the seconds it took to start.

    No `address`: a fresh local instance (never another meta's) with its files in `private`
    (`local_ray_files`): token auth with its own token, every server on 127.0.0.1. An `address`: join that
    cluster (with `auth`, the workbook cluster's token settings; shipping the code with `ship`, a runtime_env,
    see `shipped_code`), giving up after `connect_timeout_s` (Ray itself retries for minutes when nothing
    answers).
    """
    if address is None and private is None:
        raise ValueError("ray_session: a local Ray instance needs its private folder (fanout.local_ray_files)")
    start = time.perf_counter()
    with _ray_env(auth if address else ray_env(private, loopback=True)):
        import ray

        try:
            try:
                if address:
                    ray_connect(address, connect_timeout_s, "meta.ray_connect_timeout_s", runtime_env=ship)
                else:
                    info = ray.init(address="local", num_cpus=os.cpu_count() or 2, include_dashboard=False,
                                    _temp_dir=str(private / "ray"), _node_ip_address=LOOPBACK,
                                    configure_logging=False, log_to_driver=False).address_info
                    if info["node_ip_address"] != LOOPBACK:
                        raise RuntimeError(f"node address {info['node_ip_address']} is not {LOOPBACK}: Ray was "
                                           f"imported before RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 was set")
            except Exception as exc:
                where, fix = ((f"at --ray-address {address}", "start the cluster there (`ray start --head`), fix "
                               "--ray-address or run with --executor local") if address else
                              ("locally", "run with --executor local"))
                raise WorkbookError(f"sleeves: cannot start Ray {where} ({type(exc).__name__}: {first_line(exc)}); {fix}") from None
            yield round(time.perf_counter() - start, 2)
        finally:
            ray.shutdown()
