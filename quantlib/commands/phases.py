"""The commands that run phases: data, sleeve, meta, baseline and demo (each creates or resumes runs)."""
from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from quantlib.commands.common import runs_dir
from quantlib.core import storage
from quantlib.core.errors import first_line
from quantlib.core.ids import check_run_id
from quantlib.core.profiles import ParamEnv, Profile, check_kind, load_profile
from quantlib.core.runs import INDEX, MANIFEST, REPORT, Run, RunOptions
from quantlib.core.workspace import Workspace
from quantlib.engine import cluster
from quantlib.engine.executor import run_phase as execute
from quantlib.engine.resume import reopen
from quantlib.meta.tree import check_meta_tree, pin_data_runs

DEFAULT_DATA_PROFILE = "demo"
BASELINES = {"rating_all": "meta_rating_all", "rating_ma": "meta_rating_ma"}
META_REPORT = "meta_portfolio_report.md"


def environment(args: argparse.Namespace) -> ParamEnv:
    """The environment profiles resolve with: `os.environ` plus the command's `-p section.key=value`."""
    return ParamEnv(os.environ, getattr(args, "param", None) or ())


def _resuming(args: argparse.Namespace) -> bool:
    """--run-id names an existing run (checked as an id first: it never reaches a path unchecked)."""
    run_id = getattr(args, "run_id", None)
    return bool(run_id) and (runs_dir(args) / check_run_id(run_id) / MANIFEST).exists()


def writable_root(args: argparse.Namespace) -> Path:
    """The runs root, created if missing and checked writable before any run directory is made."""
    return storage.check_writable(runs_dir(args), "--runs-dir",
                                  "point --runs-dir at a directory you can write (or fix its permissions)")


def check_lakehouse(workspace: Path, profile: Profile) -> None:
    """A data run writes the lakehouse: refuse an unwritable `data.lakehouse` before any stage starts."""
    lake = Workspace(workspace).resolve(profile.data.lakehouse)
    storage.check_writable(lake, "data.lakehouse", "set data.lakehouse to a writable directory "
                                                   "(FW_DATA__LAKEHOUSE=DIR or -p data.lakehouse=DIR)")


def run_phase(phase: str, profile: str | None, args: argparse.Namespace, skip: dict[str, str] | None = None,
              options=None) -> tuple[bool, Path]:
    """Create (or resume with --run-id: `engine.resume.reopen`, refused unless same phase, profile and
    values, or --force) a run of `profile` (None: the data default, or the resumed run's) and execute `phase`.
    A profile of another kind (a sleeve profile as a data run, ...) is refused before anything is written."""
    root = runs_dir(args)
    run_id = getattr(args, "run_id", None)
    env = environment(args)
    if _resuming(args):
        run = reopen(root, run_id, phase, profile, env=env, force=getattr(args, "force", False))
        if phase == "data":
            check_lakehouse(run.workspace, run.profile)
        if getattr(args, "no_cache", False) and run.options.cache:
            run.set_options(cache=False)  # the remaining stages (and a meta's sleeves) compute
        print(f"resuming run {run.id} ({run.dir})")
    else:
        resolved = load_profile(profile or DEFAULT_DATA_PROFILE, env=env)
        check_kind(resolved, phase)
        if phase == "data":
            check_lakehouse(Workspace.current().root, resolved.profile)
        run = Run.create(writable_root(args), resolved, phase, Workspace.current().root, run_id=run_id,
                         options=options)
        print(f"run {run.id} ({run.dir})")
    start = time.perf_counter()
    try:
        ok = execute(run, phase, skip=skip)
    except KeyboardInterrupt:  # recorded by the executor; the process exits 130 / 143 (main)
        status = run.manifest.get("status")  # a signal during the final bookkeeping leaves PASS / FAIL
        print(f"INTERRUPTED after {time.perf_counter() - start:.1f} s · run {run.id} recorded {status}"
              + ("; resume it with --run-id " + run.id if status == "INTERRUPTED" else "")
              + f" · report: {run.dir / INDEX}", file=sys.stderr)
        raise
    print(f"{'PASS' if ok else 'FAIL'} in {time.perf_counter() - start:.1f} s · report: {run.dir / INDEX}")
    if phase == "sleeve":  # the meta commands print their page after the markdown report
        print_report(run.dir)
    return ok, run.dir


def print_report(run_dir: Path, head: str = "open: ") -> None:
    """The run's report.html, the last line a sleeve or meta command prints (when it was written)."""
    if (run_dir / REPORT).is_file():
        print(f"{head}{run_dir / REPORT}")


def data(args: argparse.Namespace) -> int:
    ok, _ = run_phase("data", args.profile, args, options=RunOptions(cache=not args.no_cache))
    return 0 if ok else 1


def sleeve(args: argparse.Namespace) -> int:
    skip = {}
    if args.skip_validation:
        skip["validate"] = "--skip-validation"
    if args.skip_analysis:
        skip["post_analysis"] = "--skip-analysis"
    ok, _ = run_phase("sleeve", args.profile, args, skip=skip, options=RunOptions(cache=not args.no_cache))
    return 0 if ok else 1


def run_meta(profile: str, args: argparse.Namespace) -> tuple[bool, Path]:
    env = environment(args)
    check_meta_tree(profile, env=env)  # cycles, depth, unknown sleeve profiles: rejected before any run exists
    # one data run per sleeve, pinned now and handed to every sleeve (a resumed meta keeps its own pins)
    pinned = None if _resuming(args) else pin_data_runs(profile, runs_dir(args), env=env)
    return run_phase("meta", profile, args, options=RunOptions(executor=args.executor, ray_address=args.ray_address,
                                                              cache=not args.no_cache, data_runs=pinned))


def print_meta_report(run_dir: Path) -> None:
    """`meta report: <file>` when the meta wrote it (a failed meta may stop before its report stage)."""
    report = run_dir / META_REPORT
    print(f"meta report: {report}" if report.exists() else f"no meta report (the run stopped before it): {run_dir / INDEX}")


def finish_meta(ok: bool, run_dir: Path) -> int:
    """The last lines of a meta command (its markdown report, then its page) and its exit code."""
    print_meta_report(run_dir)
    print_report(run_dir)
    return 0 if ok else 1


def meta(args: argparse.Namespace) -> int:
    return finish_meta(*run_meta(args.profile, args))


def baseline(args: argparse.Namespace) -> int:
    print(f"baseline {args.name}: the LONG and SHORT sleeves in parallel, each audited, then combined "
          f"({BASELINES[args.name]})")
    args.run_id = None
    ok, run_dir = run_meta(BASELINES[args.name], args)
    for index in sorted(run_dir.glob(f"sleeves/*/{INDEX}")):
        print(f"  sleeve report: {index}")
    return finish_meta(ok, run_dir)


@contextmanager
def ray_ahead(args: argparse.Namespace) -> Iterator[Callable[[], None]]:
    """The demo's Ray, started while its data runs (Ray's start-up, ~7 s, mostly waits on a core the data
    phase leaves idle): a workbook cluster for the runs root (`engine.cluster.start`) in a background thread,
    which the meta joins (`fanout` uses a running workbook cluster) and which is stopped when the demo ends,
    also on failure or Ctrl-C. Yields `ready()`, called before the meta: it waits for the start and says what
    the meta will use. Nothing is started for `--executor local`, `--ray-address`, or when a workbook cluster
    already runs for this runs root (the meta joins that one and it is left running)."""
    root, outcome = runs_dir(args), {}
    if args.executor != "ray" or args.ray_address or cluster.running(root, Workspace.current().root):
        yield lambda: None
        return

    def start() -> None:
        try:
            outcome["cluster"] = cluster.start(root)
        except BaseException as exc:  # noqa: BLE001 -- reported by ready(); the meta then starts its own Ray
            outcome["error"] = exc

    thread = threading.Thread(target=start, name="fw-demo-ray", daemon=True)
    thread.start()

    def ready() -> None:
        thread.join()
        if "cluster" in outcome:
            print(f"Ray: a workbook cluster for this demo at {outcome['cluster'].address} (started while the data "
                  f"ran; stopped at the end)")
        else:
            print(f"Ray: the demo's cluster did not start ({first_line(outcome.get('error'))}); the meta starts its own")

    try:
        yield ready
    finally:
        thread.join()
        if "cluster" in outcome:
            cluster.stop(root)


def demo(args: argparse.Namespace) -> int:
    print("Fractal Workbook demo (offline): data phase on the simulated crypto and equities venues, then a\n"
          "meta portfolio of a crypto LONG, a crypto SHORT and an equities LONG sleeve, each validated walk-forward")
    start = time.perf_counter()
    args.run_id = None
    with ray_ahead(args) as ray_ready:
        results = [run_phase("data", profile, args, options=RunOptions(cache=not args.no_cache))
                   for profile in args.profiles]
        if all(ok for ok, _ in results):
            ray_ready()
            results.append(run_meta(args.meta_profile, args))
    print(f"\nDemo finished in {time.perf_counter() - start:.0f} s. Reports:")
    for ok, run_dir in results:
        print(f"  {'PASS' if ok else 'FAIL'}  {run_dir / INDEX}")
    if len(results) > len(args.profiles):  # the meta ran: its page exists whether it passed or failed
        if (results[-1][1] / META_REPORT).exists():
            print(f"\nThe fractal portfolio (markdown): {results[-1][1] / META_REPORT}")
        print_report(results[-1][1], "Open this page: ")
    return 0 if all(ok for ok, _ in results) else 1
