"""Phase 3 stage functions: the meta-portfolio book (SPEC §3). The meta notebooks are thin wrappers.

sleeves (run every unpinned sleeve's full book, in parallel on Ray) -> gates (sign test,
completeness) -> allocate (sleeves become assets: inner-joined out-of-sample streams, risk parity,
walk-forward meta stream) -> flatten (physical weights) -> report (meta_portfolio_report.md).
A sleeve runs in `runs/<META_RUN_ID>/sleeves/<id>/`; a pinned sleeve (`run_id`) is read where it is,
and no other run is read. Everything a sleeve task needs travels in its spec (no process-wide state).
"""
from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path


from quantlib.core import storage
from quantlib.core.errors import DataError, GateError, ProfileError, WorkbookError
from quantlib.core.profiles import load_profile
from quantlib.core.runs import Run
from quantlib.engine.context import StageContext

MAX_DEPTH = 3


# ----------------------------------------------------------------------------------------------
# profile tree
# ----------------------------------------------------------------------------------------------
def check_meta_tree(name: str, chain: tuple[str, ...] = (), profiles_dir: Path | None = None,
                    env: dict | None = None) -> int:
    """Validate a meta profile and its nested metas: every sleeve profile loads, no cycle, depth <= 3.
    Returns the depth of the tree (1 = sleeves only)."""
    chain = chain + (name,)
    if len(chain) > MAX_DEPTH:
        raise ProfileError(f"meta profile nesting deeper than {MAX_DEPTH}: {' -> '.join(chain)}; flatten the tree")
    profile = load_profile(name, profiles_dir, env=env if len(chain) == 1 else None).profile
    if not profile.meta.sleeves:
        raise ProfileError(f"profile {name!r} is not a meta profile: its meta.sleeves is empty "
                           f"(run it with `run_book.py sleeve {name}` or list sleeves under meta.sleeves)")
    depth = 1
    for entry in profile.meta.sleeves:
        if entry.meta_profile:
            if entry.meta_profile in chain:
                raise ProfileError(f"cyclic meta_profile in {name!r}: {' -> '.join(chain + (entry.meta_profile,))}; "
                                   f"remove one of the links")
            depth = max(depth, 1 + check_meta_tree(entry.meta_profile, chain, profiles_dir))
        else:
            sleeve = load_profile(entry.profile, profiles_dir).profile
            if sleeve.meta.sleeves:
                raise ProfileError(f"{name}: sleeve {entry.id!r} names meta profile {entry.profile!r} as `profile`; "
                                   f"use `meta_profile: {entry.profile}`")
    return depth


# ----------------------------------------------------------------------------------------------
# 1. sleeves
# ----------------------------------------------------------------------------------------------
def sleeve_specs(run: Run) -> tuple[list[dict], list[dict]]:
    """(specs to execute, pinned sleeves) for a meta run. A spec is a plain dict: all a task needs."""
    profile = run.profile
    runs_root = Path(run.manifest.get("runs_root") or run.dir.parent)
    specs, pinned = [], []
    for entry in profile.meta.sleeves:
        if entry.run_id:
            target = runs_root / entry.run_id
            if not (target / "manifest.json").exists():
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
                      "overrides": run.resolved.overrides, "depth": int(run.manifest.get("depth", 0)) + 1})
    return specs, pinned


def run_spec(spec: dict) -> dict:
    """Execute one sleeve's (or nested meta's) whole book; returns where it is and how it ended.

    Runs in a Ray worker or in this process; resumes the sleeve run if it already exists.
    """
    from quantlib.engine.executor import run_phase

    start = time.perf_counter()
    runs_dir = Path(spec["runs_dir"])
    if (runs_dir / spec["run_id"] / "manifest.json").exists():
        run = Run.open(runs_dir, spec["run_id"])
    else:
        resolved = load_profile(spec["profile"], overrides=spec["overrides"])
        extra = {"runs_root": spec["runs_root"], "parent_run": spec["parent_run"], "depth": spec["depth"],
                 "options": {"executor": "local"}}  # a nested meta runs its own sleeves in its task
        run = Run.create(runs_dir, resolved, spec["phase"], Path(spec["workspace"]), run_id=spec["run_id"], extra=extra)
    log = []
    ok = run_phase(run, spec["phase"], say=log.append)
    return {"id": spec["id"], "kind": spec["kind"], "profile": spec["profile"], "run_id": run.id,
            "run_dir": str(run.dir), "status": "PASS" if ok else "FAIL", "error": run.manifest.get("error"),
            "pinned": False, "seconds": round(time.perf_counter() - start, 2), "log": log}


def execute(specs: list[dict], executor: str = "ray", address: str | None = None, private: Path | None = None,
            on_done: Callable[[dict], None] = print, *, connect_timeout_s: float) -> list[dict]:
    """Run every spec: as Ray tasks (a local instance whose files are in `private`, see `local_ray_files`, or the
    cluster at `address`, joined within `connect_timeout_s`) or one after another in this process."""
    if not specs:
        return []
    if executor == "local":
        results = []
        for spec in specs:
            results.append(run_spec(spec))
            on_done(results[-1])
        return results
    return _execute_ray(specs, address, private, connect_timeout_s, on_done)


def _execute_ray(specs: list[dict], address: str | None, private: Path | None, connect_timeout_s: float,
                 on_done: Callable) -> list[dict]:
    with ray_session(address, private, connect_timeout_s) as ray_start:
        import ray  # only now: Ray reads part of the environment ray_session sets when it is imported

        task = ray.remote(num_cpus=1, max_retries=0)(run_spec)
        pending = {task.remote(spec): spec for spec in specs}
        results = []
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            spec = pending.pop(done[0])
            try:
                result = ray.get(done[0])
            except Exception as exc:  # the task itself crashed (not a failed stage: those return FAIL)
                result = {"id": spec["id"], "kind": spec["kind"], "profile": spec["profile"], "run_id": spec["run_id"],
                          "run_dir": str(Path(spec["runs_dir"]) / spec["run_id"]), "status": "FAIL", "pinned": False,
                          "error": f"task crashed: {type(exc).__name__}: {str(exc).splitlines()[0]}", "seconds": None}
            result["ray_start_seconds"] = ray_start
            results.append(result)
            on_done(result)
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
def _ray_env(private: Path | None) -> Iterator[None]:
    """Ray's own settings for this session (Ray reads them from the environment, here and in every process it
    starts), restored on exit. Always: no usage stats. A local instance (`private` given): token auth with its
    token file (`RAY_AUTH_MODE=token`, `RAY_AUTH_TOKEN_PATH`; a `RAY_AUTH_TOKEN` would take precedence, so it is
    unset) and single-machine mode (`RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`), which makes Ray keep 127.0.0.1 as
    the node address and bind its servers there. A cluster's auth settings are the user's: left alone."""
    wanted: dict[str, str | None] = {"RAY_USAGE_STATS_ENABLED": os.environ.get("RAY_USAGE_STATS_ENABLED", "0")}
    if private is not None:
        wanted.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(private / "auth_token"), RAY_AUTH_TOKEN=None,
                      RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
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
def ray_session(address: str | None, private: Path | None, connect_timeout_s: float) -> Iterator[float]:
    """Ray for one meta stage, shut down on exit (pass, fail or Ctrl-C); yields the seconds it took to start.

    No `address`: a fresh local instance (never another meta's) with its files in `private`
    (`local_ray_files`): token auth with its own token, every server on 127.0.0.1. An `address`: join that
    cluster, giving up after `connect_timeout_s` (Ray itself retries for minutes when nothing answers).
    """
    if address is None and private is None:
        raise ValueError("ray_session: a local Ray instance needs its private folder (metaflow.local_ray_files)")
    start = time.perf_counter()
    with _ray_env(None if address else private):
        import ray

        try:
            try:
                if address:
                    _connect(address, connect_timeout_s)
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


def _connect(address: str, timeout_s: float) -> None:
    """`ray.init(address)` bounded by `timeout_s`: it runs in a daemon thread that is abandoned (and disconnects
    should it still succeed) when the time is up."""
    import logging
    import threading

    import ray

    outcome: dict[str, BaseException | None] = {}
    gave_up = threading.Event()

    def join() -> None:
        try:
            ray.init(address=address, configure_logging=False, log_to_driver=False)
            outcome["error"] = None
            if gave_up.is_set():
                ray.shutdown()
        except BaseException as exc:  # handed to the caller
            outcome["error"] = exc

    worker_log = logging.getLogger("ray._private.worker")
    quiet = lambda record: "not the main thread" not in record.getMessage()  # noqa: E731 (SIGTERM-handler notice)
    worker_log.addFilter(quiet)
    thread = threading.Thread(target=join, name="fw-ray-connect", daemon=True)
    try:
        thread.start()
        thread.join(timeout_s)
    finally:
        worker_log.removeFilter(quiet)
    if thread.is_alive():
        gave_up.set()
        raise TimeoutError(f"no answer within {timeout_s:g} s, meta.ray_connect_timeout_s")
    if outcome["error"] is not None:
        raise outcome["error"]


def run_sleeves(ctx: StageContext) -> list[dict]:
    """Stage 1: every unpinned sleeve's book runs (in parallel on Ray by default); a failed one fails the meta."""
    options = ctx.run.manifest.get("options", {})
    executor, address = options.get("executor", "ray"), options.get("ray_address")
    specs, pinned = sleeve_specs(ctx.run)

    def report(result: dict) -> None:
        print(f"[sleeve {result['id']}] {result['status']} in {result['seconds']} s · {result['run_dir']}/INDEX.md",
              flush=True)

    local_ray = executor == "ray" and not address
    with local_ray_files(ctx.run.dir) if local_ray else nullcontext() as private:
        results = pinned + execute(specs, executor, address, private, report,
                                   connect_timeout_s=ctx.profile.meta.ray_connect_timeout_s)
    doc = {"run_id": ctx.run.id, "executor": executor, "ray_address": address,
           "ray_logs": "ray/" if local_ray else None,
           "sleeves": [{k: v for k, v in r.items() if k != "log"} for r in results]}
    storage.write_json(ctx.path("artifacts/sleeves.json"), doc)
    failed = [r for r in results if r["status"] != "PASS"]
    if failed:
        first = failed[0]
        raise GateError(f"sleeves: sleeve {first['id']!r} ({first['profile']}) failed: {first.get('error') or first['status']}; "
                        f"see {first['run_dir']}/INDEX.md")
    return results


# ----------------------------------------------------------------------------------------------
# 2-5. gates, allocation, flattening, report
# ----------------------------------------------------------------------------------------------
def sleeve_refs(ctx: StageContext) -> list:
    from quantlib.meta.legacy import SleeveRef

    doc = storage.read_json(ctx.require("artifacts/sleeves.json"))
    return [SleeveRef(s["id"], Path(s["run_dir"]) if s.get("run_dir") else None, s.get("kind", "sleeve"))
            for s in doc["sleeves"]]


def gates(ctx: StageContext) -> dict:
    """Stage 2: the sign-test gate (enforced with features.directional_sign_test_gate) and the
    completeness gate (always enforced), both before any aggregation."""
    from quantlib.meta import legacy as meta

    refs, cfg = sleeve_refs(ctx), ctx.profile.meta
    sign = meta.sign_test_gate(refs)
    complete = meta.completeness_gate(refs, cfg.allocation.risk_profile, cfg.single_sleeve)
    storage.write_json(ctx.path("artifacts/meta_sign_test_gate.json"), sign)
    storage.write_json(ctx.path("artifacts/completeness.json"), complete)
    if ctx.profile.features.directional_sign_test_gate:
        meta.enforce_gate(sign, "sign-test gate (features.directional_sign_test_gate)")
    meta.enforce_gate(complete, "completeness gate")
    return {"sign_tests": sign, "completeness": complete}


def allocate(ctx: StageContext) -> dict:
    """Stage 3: sleeves become assets; risk-parity (or hrp/min_variance) weights and the walk-forward
    out-of-sample meta stream."""
    from quantlib.meta import legacy as meta

    refs, alloc = sleeve_refs(ctx), ctx.profile.meta.allocation
    streams = meta.load_streams(refs, alloc.risk_profile)
    matrix, aggregation = meta.aggregate_streams(streams)
    if len(matrix) < alloc.train_days + 1:
        raise GateError(f"allocate: the joined sleeve streams have {len(matrix)} common rows, fewer than "
                        f"meta.allocation.train_days={alloc.train_days} + 1; lower it or lengthen the sleeves' backtests")
    weights = meta.meta_weights(matrix, alloc.method, alloc.min_weight, alloc.max_weight)
    oos, history = meta.walk_forward_meta(matrix, alloc.method, alloc.min_weight, alloc.max_weight,
                                          alloc.train_days, alloc.test_days)
    storage.write_parquet(ctx.path("artifacts/sleeve_returns.parquet"), matrix.rename_axis("date"))
    storage.write_parquet(ctx.path("artifacts/meta_weights.parquet"), weights.rename_axis("sleeve").to_frame())
    storage.write_parquet(ctx.path("artifacts/meta_weights_history.parquet"), history)
    storage.write_parquet(ctx.path("artifacts/meta_returns.parquet"), oos.to_frame("meta").rename_axis("date"))
    storage.write_json(ctx.path("artifacts/aggregation.json"), {**aggregation, "allocation": alloc.model_dump()})
    return {"matrix": matrix, "aggregation": aggregation, "weights": weights, "oos": oos, "history": history}


def flatten(ctx: StageContext) -> dict:
    """Stage 4: physical weight = sum over sleeves of meta weight x sleeve net weight (shorts stay negative)."""
    from quantlib.meta import legacy as meta

    refs, cfg = sleeve_refs(ctx), ctx.profile.meta
    weights = storage.read_parquet(ctx.require("artifacts/meta_weights.parquet"))["weight"]
    flat = meta.flatten_meta(weights, meta.load_books(refs, cfg.allocation.risk_profile))
    doc = {"exposures": meta.exposures(flat), "cap_check": meta.physical_cap_check(flat, cfg.physical_cap)}
    storage.write_parquet(ctx.path("artifacts/meta_flattened.parquet"), flat)
    storage.write_json(ctx.path("artifacts/exposures.json"), doc)
    return {"flat": flat, **doc}


def report(ctx: StageContext) -> dict:
    """Stage 5: meta_portfolio_report.md with computed PASS/FAIL sections; a FAIL fails the run."""
    from quantlib.meta import legacy as meta

    art = lambda rel: ctx.require(f"artifacts/{rel}")  # noqa: E731
    cfg = ctx.profile.meta
    matrix = storage.read_parquet(art("sleeve_returns.parquet"))
    exposures = storage.read_json(art("exposures.json"))
    sections = meta.report_sections(
        completeness=storage.read_json(art("completeness.json")),
        sign_tests=storage.read_json(art("meta_sign_test_gate.json")),
        weights=storage.read_parquet(art("meta_weights.parquet"))["weight"],
        allocation=cfg.allocation.model_dump(), aggregation=storage.read_json(art("aggregation.json")),
        sleeve_returns=matrix, oos=storage.read_parquet(art("meta_returns.parquet"))["meta"],
        weights_history=storage.read_parquet(art("meta_weights_history.parquet")),
        flat=storage.read_parquet(art("meta_flattened.parquet")), cap_check=exposures["cap_check"],
        annualization=meta.infer_annualization(matrix.index))
    n = len(storage.read_json(art("sleeves.json"))["sleeves"])
    text, passed = meta.render_report(sections, multi_sleeve=not cfg.single_sleeve, n_sleeves=n,
                                      profile=ctx.profile.name, run_id=ctx.run.id)
    storage.write_text(ctx.path("meta_portfolio_report.md"), text)
    storage.write_json(ctx.path("artifacts/meta_report.json"),
                       {"run_id": ctx.run.id, "passed": passed,
                        "sections": {name: sec.get("passed") for name, sec in sections.items()}})
    if not passed:
        failed = [name for name, sec in sections.items() if sec.get("passed") is not True]
        raise GateError(f"report: meta report says FAIL (sections {failed or 'sleeve count'}); "
                        f"see {ctx.run.path('meta_portfolio_report.md')}")
    return {"sections": sections, "text": text, "passed": passed}
