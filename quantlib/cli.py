"""Fractal Workbook orchestration CLI: runs a phase's stage notebooks with papermill into runs/<RUN_ID>/.

  python run_book.py demo                      # the whole workflow offline (simulated venues)
  python run_book.py data [--profile P]        # Phase 1: scan, ingest, metadata, features, backfill
  python run_book.py sleeve PROFILE            # Phase 2: one sleeve (selection -> optimization -> audit)
  python run_book.py meta PROFILE              # Phase 3: sleeves in parallel on Ray -> fractal portfolio
  python run_book.py baseline rating_all       # the Binance rating LONG/SHORT pair, audited
  python run_book.py audit-lookahead RUN_ID    # prove a sleeve's decisions ignore later data
  python run_book.py replay RUN_ID [--at DATE] # rebuild one rebalance decision, prove it equals the record
  python run_book.py compare RUN_A RUN_B       # same artifacts? (parquet exact, JSON apart from ids/times)
  python run_book.py verify RUN_ID             # does a run still match its record? (hashes, inputs, gates)
  python run_book.py diff RUN_A RUN_B          # what changed: profile, inputs, gates, weights, metrics (+ HTML)
  python run_book.py runs                      # list runs with status
  python run_book.py runs prune --keep 3       # what deleting old runs would free (--yes deletes)
  python run_book.py show RUN_ID               # print a run's INDEX.md
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from quantlib.backtest.lookahead import audit_run
from quantlib.backtest.replay import ReplayRefused, replay_run, report_lines
from quantlib.core import registry
from quantlib.core.errors import RunInterrupted, WorkbookError
from quantlib.core.ids import check_run_id
from quantlib.core.profiles import load_profile
from quantlib.core.runs import INDEX, MANIFEST, REPORT, Run, RunOptions, list_runs, open_run
from quantlib.engine.compare import compare_runs
from quantlib.engine.diff import diff_runs
from quantlib.engine.diff_report import check_outside_runs, default_html_path, render_text, write_html
from quantlib.core.workspace import Workspace
from quantlib.engine.executor import run_phase as execute
from quantlib.engine.prune import apply_prune, human_bytes, parse_days, parse_keep, plan_lines, plan_prune
from quantlib.engine.verify import verify_run
from quantlib.engine.index import render_index
from quantlib.engine.resume import reopen
from quantlib.meta.tree import check_meta_tree, pin_data_runs


def _runs_dir(args: argparse.Namespace) -> Path:
    return Path(args.runs_dir).resolve() if args.runs_dir else Workspace.current().runs


DEFAULT_DATA_PROFILE = "demo"


def _resuming(args: argparse.Namespace) -> bool:
    """--run-id names an existing run (checked as an id first: it never reaches a path unchecked)."""
    run_id = getattr(args, "run_id", None)
    return bool(run_id) and (_runs_dir(args) / check_run_id(run_id) / MANIFEST).exists()


def run_phase(phase: str, profile: str | None, args: argparse.Namespace, skip: dict[str, str] | None = None,
              options=None) -> tuple[bool, Path]:
    """Create (or resume with --run-id: `engine.resume.reopen`, refused unless same phase, profile and
    values, or --force) a run of `profile` (None: the data default, or the resumed run's) and execute `phase`."""

    runs_dir = _runs_dir(args)
    run_id = getattr(args, "run_id", None)
    if _resuming(args):
        run = reopen(runs_dir, run_id, phase, profile, env=os.environ, force=getattr(args, "force", False))
        if getattr(args, "no_cache", False) and run.options.cache:
            run.set_options(cache=False)  # the remaining stages (and a meta's sleeves) compute
        print(f"resuming run {run.id} ({run.dir})")
    else:
        run = Run.create(runs_dir, load_profile(profile or DEFAULT_DATA_PROFILE, env=os.environ), phase,
                         Workspace.current().root, run_id=run_id, options=options)
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
    print(f"{'PASS' if ok else 'FAIL'} in {time.perf_counter() - start:.1f} s · report: {run.dir / 'INDEX.md'}")
    if phase == "sleeve":  # the meta commands print their page after the markdown report
        _print_report(run.dir)
    return ok, run.dir


def _print_report(run_dir: Path, head: str = "open: ") -> None:
    """The run's report.html, the last line a sleeve or meta command prints (when it was written)."""
    if (run_dir / REPORT).is_file():
        print(f"{head}{run_dir / REPORT}")


def cmd_data(args: argparse.Namespace) -> int:
    ok, _ = run_phase("data", args.profile, args, options=RunOptions(cache=not args.no_cache))
    return 0 if ok else 1


def cmd_sleeve(args: argparse.Namespace) -> int:
    skip = {}
    if args.skip_validation:
        skip["validate"] = "--skip-validation"
    if args.skip_analysis:
        skip["post_analysis"] = "--skip-analysis"
    ok, _ = run_phase("sleeve", args.profile, args, skip=skip, options=RunOptions(cache=not args.no_cache))
    return 0 if ok else 1


def run_meta(profile: str, args: argparse.Namespace) -> tuple[bool, Path]:

    check_meta_tree(profile, env=os.environ)  # cycles, depth, unknown sleeve profiles: rejected before any run exists
    # one data run per sleeve, pinned now and handed to every sleeve (a resumed meta keeps its own pins)
    pinned = None if _resuming(args) else pin_data_runs(profile, _runs_dir(args), env=os.environ)
    return run_phase("meta", profile, args, options=RunOptions(executor=args.executor, ray_address=args.ray_address,
                                                              cache=not args.no_cache, data_runs=pinned))


def cmd_meta(args: argparse.Namespace) -> int:
    ok, run_dir = run_meta(args.profile, args)
    print(f"meta report: {run_dir / 'meta_portfolio_report.md'}")
    _print_report(run_dir)
    return 0 if ok else 1


BASELINES = {"rating_all": "meta_rating_all", "rating_ma": "meta_rating_ma"}


def cmd_baseline(args: argparse.Namespace) -> int:
    print(f"baseline {args.name}: the LONG and SHORT sleeves in parallel, each audited, then combined "
          f"({BASELINES[args.name]})")
    args.run_id = None
    ok, run_dir = run_meta(BASELINES[args.name], args)
    for index in sorted(run_dir.glob("sleeves/*/INDEX.md")):
        print(f"  sleeve report: {index}")
    print(f"meta report: {run_dir / 'meta_portfolio_report.md'}")
    _print_report(run_dir)
    return 0 if ok else 1


def cmd_demo(args: argparse.Namespace) -> int:
    print("Fractal Workbook demo (offline): data phase on the simulated crypto and equities venues, then a\n"
          "meta portfolio of a crypto LONG, a crypto SHORT and an equities LONG sleeve, each validated walk-forward")
    start = time.perf_counter()
    args.run_id = None
    results = [run_phase("data", profile, args, options=RunOptions(cache=not args.no_cache))
               for profile in args.profiles]
    if all(ok for ok, _ in results):
        results.append(run_meta(args.meta_profile, args))
    print(f"\nDemo finished in {time.perf_counter() - start:.0f} s. Reports:")
    for ok, run_dir in results:
        print(f"  {'PASS' if ok else 'FAIL'}  {run_dir / 'INDEX.md'}")
    if len(results) > len(args.profiles):
        print(f"\nThe fractal portfolio (markdown): {results[-1][1] / 'meta_portfolio_report.md'}")
        _print_report(results[-1][1], "Open this page: ")
    return 0 if all(ok for ok, _ in results) else 1


def pd_date(value) -> str:
    """A timestamp as an ISO date (no 00:00:00)."""
    return str(value)[:10]


def cmd_audit_lookahead(args: argparse.Namespace) -> int:

    run = Run.open(_runs_dir(args), args.run_id)
    print(f"look-ahead audit of {run.id}: rerunning its walk-forward from a copy of the lakehouse whose bars and "
          f"features after the cutoff are noise (events: {', '.join(args.events)}) ...")
    result = audit_run(run, args.at, args.seed, args.events)
    info = result.info
    print(f"cutoff {pd_date(info['cutoff'])} · {info['windows_checked']} of {info['windows_total']} windows "
          f"decided by then · planted: " + (", ".join(f"{k} {v['symbol']}" for k, v in info["events"].items())
                                             or "nothing (no held symbol)"))
    for check in result.checks:
        print(f"  {'PASS' if check.passed else 'FAIL'}  {check.code}: {check.detail}")
    print(f"{'PASS' if result.passed else 'FAIL'} · {run.path(registry.path('sleeve', 'lookahead_audit'))}")
    return 0 if result.passed else 1


def cmd_replay(args: argparse.Namespace) -> int:
    """Exit 0 MATCH, 1 DIFF or inputs no longer as recorded, 2 unknown run / not a rebalance date."""
    run = Run.open(_runs_dir(args), args.run_id)
    try:
        result = replay_run(run, args.at, from_run=args.from_run)
    except ReplayRefused as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print("\n".join(report_lines(result)))
    return 0 if result.matched else 1


def _run_at(args: argparse.Namespace, ref: str) -> Run:
    """A run given by its directory or by its id under --runs-dir."""
    return open_run(ref, _runs_dir(args))


def cmd_compare(args: argparse.Namespace) -> int:

    a, b = _run_at(args, args.run_a), _run_at(args, args.run_b)
    compared, differences = compare_runs(a, b)
    for d in differences:
        print(f"  DIFF  {d.path}: {d.what}")
    print(f"{'SAME' if not differences else 'DIFFERENT'}: {compared} artifacts compared, {len(differences)} differ "
          f"({a.id} vs {b.id})")
    return 0 if not differences else 1


def cmd_verify(args: argparse.Namespace) -> int:
    """Re-hash, re-read and recompute a run's record; print the table and a summary; 0 verified, 1 not."""
    run = _run_at(args, args.run_id)
    result = verify_run(run)
    rows = result.rows(every=args.all)
    width = min(max((len(r.item) for r in rows), default=4), 64)
    print(f"{'status':<10}  {'item':<{width}}  detail")
    for r in rows:
        print(f"{r.status:<10}  {r.item:<{width}}  {r.detail}")
    print(result.summary())
    return 0 if result.passed else 1
def cmd_diff(args: argparse.Namespace) -> int:
    """Print what differs between two runs, write the HTML page; 0 identical, 1 different."""
    if args.top < 1:
        raise WorkbookError(f"--top {args.top}: list at least 1 change")
    a, b = _run_at(args, args.run_a), _run_at(args, args.run_b)
    result = diff_runs(a, b)
    page = None if args.no_html else check_outside_runs(Path(args.html) if args.html else default_html_path(result), a, b)
    print(render_text(result, args.top), end="")
    if page is not None:
        print(f"html: {write_html(result, page, args.top)}")
    return 1 if result.differs else 0


def cmd_runs(args: argparse.Namespace) -> int:

    rows = list_runs(_runs_dir(args))
    if not rows:
        print(f"no runs under {_runs_dir(args)}")
        return 0
    print(f"{'run id':<48} {'profile':<22} {'phase':<6} {'status':<11} {'stages':<7} created")
    for r in rows:
        print(f"{r['run_id']:<48} {r['profile']:<22} {r['phase']:<6} {r['status']:<11} {r['stages']:<7} {r['created_at']}")
    return 0


def cmd_runs_prune(args: argparse.Namespace) -> int:
    """Dry run by default: print what would be deleted and the bytes freed; delete only with --yes."""
    keep, days = parse_keep(args.keep), parse_days(args.older_than)
    plan = plan_prune(_runs_dir(args), keep=keep, older_than_days=days)
    criteria = " and ".join(c for c in (keep is not None and f"beyond the newest {keep} per profile",
                                        days is not None and f"older than {days:g} days") if c)
    print(f"runs prune under {plan.runs_root}: delete runs {criteria} "
          f"({'deleting' if args.yes else 'dry run, nothing is deleted'})")
    print("\n".join(plan_lines(plan)) if plan.decisions else "  no runs")
    size = f"{human_bytes(plan.bytes_freed)} ({plan.bytes_freed:,} bytes)"
    if not plan.deletions:
        print("nothing to delete")
    elif not args.yes:
        print(f"would delete {len(plan.deletions)} run(s) and free {size}; run again with --yes to delete them")
    else:
        deleted = apply_prune(plan)
        freed = sum(d.entry.bytes for d in plan.deletions if d.entry.dir in deleted)
        print(f"deleted {len(deleted)} run(s), freed {human_bytes(freed)} ({freed:,} bytes)"
              + (f"; {len(plan.deletions) - len(deleted)} became RUNNING or unreadable and stayed"
                 if len(deleted) < len(plan.deletions) else ""))
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    """INDEX.md as it reads now: rendered from the manifest (so a run without INDEX.md, or one gone STALE,
    shows its real state), the same text the orchestrator writes."""
    run = Run.open(_runs_dir(args), args.run_id)
    print(render_index(run, run.manifest.get("phase", "?")), end="")
    return 0


def force_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--force", action="store_true",
                   help="resume --run-id even though its profile now resolves differently (edited profile files, "
                        "other FW_* variables): the remaining stages run with the new values, and the change "
                        "(keys, old values, when) is recorded in the manifest and INDEX.md")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="run_book.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs-dir", help="where run directories live (default: ./runs)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def run_pair(p: argparse.ArgumentParser) -> None:
        for name in ("run_a", "run_b"):
            p.add_argument(name, metavar=name.upper(), help="run id (under --runs-dir) or run directory")

    def no_cache(p: argparse.ArgumentParser) -> None:
        p.add_argument("--no-cache", action="store_true",
                       help="compute every stage, even one an earlier run already computed from the same code, "
                            "parameters and inputs (by default such a stage is restored from that run)")

    p = sub.add_parser("data", help="Phase 1: scanners, ingestion, metadata, ratings, backfill",
                       description="Run the data phase of PROFILE into a new run dir (or resume --run-id).")
    p.add_argument("--profile", help="data profile in profiles/ (default: demo; resuming: the run's)")
    p.add_argument("--run-id", help="resume this run at its first incomplete stage (or create it)")
    no_cache(p)
    force_option(p)
    p.set_defaults(func=cmd_data)

    p = sub.add_parser("sleeve", help="Phase 2: one sleeve's book (aggregate ... report)",
                       description="Run one sleeve's book for PROFILE: aggregate with strict health, HTR selection, "
                                   "synthesis and sign test, pre-optimization analysis, optimization, report and audit.")
    p.add_argument("profile", metavar="PROFILE", help="sleeve profile in profiles/ (e.g. demo_crypto_long)")
    p.add_argument("--run-id", help="resume this run at its first incomplete stage (or create it)")
    p.add_argument("--skip-validation", action="store_true", help="skip the walk-forward validation backtest")
    p.add_argument("--skip-analysis", action="store_true", help="skip the post-analysis charts")
    no_cache(p)
    force_option(p)
    p.set_defaults(func=cmd_sleeve)

    def ray_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--executor", choices=["ray", "local"], default="ray",
                       help="run the sleeves as Ray tasks (default) or one after another in this process")
        p.add_argument("--ray-address", help="join this Ray cluster instead of starting a local one, giving up after "
                                             "meta.ray_connect_timeout_s (30 s); runs and lakehouse paths must then "
                                             "be on storage every node sees")
        no_cache(p)

    p = sub.add_parser("meta", help="Phase 3: sleeves in parallel on Ray, gates, risk parity, flattening",
                       description="Run the meta book of PROFILE: every sleeve's book (Ray tasks), the sign-test and "
                                   "completeness gates, the meta allocation, flattening and the meta report.")
    p.add_argument("profile", metavar="PROFILE", help="meta profile in profiles/ (e.g. demo_meta)")
    p.add_argument("--run-id", help="resume this run at its first incomplete stage (or create it)")
    force_option(p)
    ray_options(p)
    p.set_defaults(func=cmd_meta)

    p = sub.add_parser("baseline", help="the Binance rating baselines: a LONG/SHORT pair, in parallel, audited",
                       description="Run the long and short sleeves of a rating baseline in parallel, audit both and "
                                   "combine them (meta profiles meta_rating_all / meta_rating_ma).")
    p.add_argument("name", choices=sorted(BASELINES), metavar="NAME", help="rating_all | rating_ma")
    ray_options(p)
    p.set_defaults(func=cmd_baseline)

    p = sub.add_parser("demo", help="the whole workflow offline: data phase, then a three-sleeve meta portfolio",
                       description="Data phase on the simulated crypto and equities venues, then the demo_meta "
                                   "portfolio (crypto LONG + crypto SHORT + equities LONG sleeves, with validation).")
    p.add_argument("--profiles", nargs="+", default=["demo", "demo_equities"], help=argparse.SUPPRESS)
    p.add_argument("--meta-profile", default="demo_meta", help=argparse.SUPPRESS)
    ray_options(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("audit-lookahead", help="prove a sleeve run's decisions ignore data after a date",
                       description="Copy the lakehouse RUN_ID read, with every OHLCV bar and features row after "
                                   "a cutoff perturbed (noise) and events planted after it, rerun the walk-forward from the raw "
                                   "data and check that the universe, eligibility, selection, weights, trades, "
                                   "strategy and benchmark returns up to the cutoff are unchanged.")
    p.add_argument("run_id", metavar="RUN_ID", help="a sleeve run")
    p.add_argument("--at", help="cutoff date (ISO; default: the middle window's decision date)")
    p.add_argument("--seed", type=int, default=0, help="seed of the perturbation")
    p.add_argument("--events", nargs="*", default=["delist", "spike", "listing"], metavar="EVENT",
                   choices=["delist", "spike", "listing"],
                   help="events planted after the cutoff: a held symbol delisted, a held symbol +600 %%, "
                        "a new listing (default: all three)")
    p.set_defaults(func=cmd_audit_lookahead)

    p = sub.add_parser("replay", help="rebuild one rebalance decision of a sleeve run and prove it equals the record",
                       description="Rebuild one rebalance decision of sleeve run RUN_ID from its recorded inputs "
                                   "(its resolved profile and the lakehouse files whose hashes its manifest recorded; "
                                   "refused, exit 1, if they changed) -- point-in-time universe, eligibility, "
                                   "selection, atoms, weights per risk profile, trades -- and compare it exactly with "
                                   "what the run recorded. Without --at the production decision, with --at DATE the "
                                   "walk-forward rebalance of that date. Writes nothing. Exit 0 MATCH, 1 DIFF (the "
                                   "first differing artifact, field and row are printed), 2 unknown run or not a "
                                   "rebalance date.")
    p.add_argument("run_id", metavar="RUN_ID", help="a sleeve run")
    p.add_argument("--at", metavar="DATE", help="a walk-forward rebalance date (ISO; default: the production decision)")
    p.add_argument("--from-run", action="store_true",
                   help="replay from the run's own copies of its inputs (returns, screener, benchmark) instead of "
                        "the lakehouse, e.g. after a later data run changed it")
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser("compare", help="compare two runs artifact by artifact",
                       description="Compare every artifact of two runs of the same phase (a meta's sleeves too): "
                                   "parquet frames exactly, JSON and text apart from run ids, paths and times.")
    run_pair(p)
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("verify", help="check a finished run against its record: hashes, inputs, gates",
                       description="Re-hash every artifact, executed notebook and HTML export the manifest records, "
                                   "re-hash the lakehouse and definition files the run read (naming what changed "
                                   "since), check every gate file and recompute the gates that pure functions give "
                                   "(sign tests, sleeve audit, meta completeness, sign-test and report gates, meta "
                                   "weights); a meta's nested and pinned sleeve runs too. Package versions and git "
                                   "revision are compared with the current ones (informational). Writes nothing. "
                                   "Exit 0 when everything matches, 1 otherwise.")
    p.add_argument("run_id", metavar="RUN_ID", help="run id (under --runs-dir) or run directory")
    p.add_argument("--all", action="store_true", help="list every item (default: OK items folded per kind)")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("diff", help="what differs between two runs: profile, inputs, gates, weights, metrics",
                       description="Diff two sleeve runs, two meta runs or a meta's sleeve (RUN/sleeves/<id>) with a "
                                   "sleeve run: resolved-profile keys, data inputs, gate verdicts and checks, weights "
                                   "per risk profile (atoms and physical names; a meta's sleeve weights and "
                                   "flattened book), out-of-sample metric deltas and the correlation of the "
                                   "out-of-sample returns on common dates; a meta adds one line per sleeve. Also "
                                   "writes an HTML page with the weight changes and equity curves. Exit 0 when "
                                   "nothing differs, 1 when something does, 2 on bad input.")
    run_pair(p)
    p.add_argument("--top", type=int, default=10, metavar="N",
                   help="largest weight changes listed per vector, checks and files per list (default 10)")
    p.add_argument("--html", metavar="PATH", help="write the HTML page here (default: "
                                                   "<temp dir>/fractal-workbook-diff/<A>__vs__<B>.html; never inside a run)")
    p.add_argument("--no-html", action="store_true", help="terminal text only")
    p.set_defaults(func=cmd_diff)

    p = sub.add_parser("runs", help="list runs with their status; `runs prune` deletes old ones",
                       description="List runs, newest first (`runs prune --help`: delete old runs).")
    p.set_defaults(func=cmd_runs)
    actions = p.add_subparsers(dest="action", metavar="ACTION")
    q = actions.add_parser("prune", help="delete old runs (dry run unless --yes)",
                           description="Delete old runs under --runs-dir: those beyond the newest N of their profile "
                                       "(--keep) and/or created more than DAYS ago (--older-than). A dry run unless "
                                       "--yes: it prints every run with its decision and the bytes freed. Never "
                                       "deleted: a RUNNING run, a run a profile or a kept meta pins as a sleeve, a "
                                       "data run a kept run read, and _static/ (the reports' shared plotly.js).")
    q.add_argument("--keep", metavar="N", help="keep the newest N runs of every profile")
    q.add_argument("--older-than", metavar="DAYS", help="delete only runs created more than DAYS days ago")
    q.add_argument("--yes", action="store_true", help="delete (without it: print what would be deleted)")
    q.set_defaults(func=cmd_runs_prune)

    p = sub.add_parser("show", help="print a run's INDEX.md",
                       description="Print the INDEX.md of RUN_ID, rendered from its manifest as it reads now "
                                   "(a RUNNING run whose process is gone shows as STALE).")
    p.add_argument("run_id", metavar="RUN_ID")
    p.set_defaults(func=cmd_show)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # stage kernels must run this interpreter (the `python3` kernelspec launches `python` from PATH)
    os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])

    try:
        return args.func(args)
    except WorkbookError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except RunInterrupted as exc:  # SIGTERM (or SIGINT) during a run: 128 + the signal, as a shell reports it
        return 128 + exc.signum
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and closed early: not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
