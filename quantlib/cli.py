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
  python run_book.py cluster start             # a Ray head that later metas join (status, stop)
  python run_book.py show RUN_ID               # print a run's INDEX.md (RUN_ID may be META/SLEEVE)

Options anywhere: --runs-dir DIR (before or after the command); on run commands -p section.key=value
overrides a profile key (recorded like FW_SECTION__KEY=value). --version prints the version.
"""
from __future__ import annotations

import argparse
import difflib
import importlib
import os
import re
import sys
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

from quantlib.core.errors import RunInterrupted, WorkbookError
from quantlib.core.lean import skip_unused_imports
from quantlib.core.workspace import Workspace
from quantlib.engine import kernel

BASELINES = ("rating_all", "rating_ma")  # their meta profiles: quantlib.commands.phases.BASELINES
INVALID_CHOICE = re.compile(r"argument (?P<arg>[^:]+): invalid choice: '(?P<given>[^']*)' \(choose from (?P<choices>.*)\)")


def version() -> str:
    """`fractal-workbook <version> (python <x.y.z>, workspace <root>)`."""
    try:
        number = metadata.version("fractal-workbook")
    except metadata.PackageNotFoundError:
        number = "unknown"
    return f"fractal-workbook {number} (python {sys.version.split()[0]}, workspace {Workspace.current().root})"


class Parser(argparse.ArgumentParser):
    """argparse with closest-match suggestions for a mistyped command or choice (`sleev` -> `sleeve`)."""

    def error(self, message: str):  # noqa: D102 - argparse's hook; exits 2
        match = INVALID_CHOICE.search(message)
        if match:
            choices = re.findall(r"'([^']*)'", match["choices"])
            close = difflib.get_close_matches(match["given"], choices, n=1, cutoff=0.5)
            if close:
                message += f"; did you mean {close[0]!r}?"
        super().error(message)


def resolve(command: str | Callable) -> Callable[[argparse.Namespace], int]:
    """A command's function from its "module:function" string, imported now (only the command that runs
    pays for its imports: scipy and the walk-forward for audit-lookahead, replay and verify)."""
    if callable(command):
        return command
    module, _, name = command.partition(":")
    return getattr(importlib.import_module(module), name)


def params_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("-p", "--param", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one profile key for this run (value parsed as YAML; repeatable; wins over "
                        "FW_SECTION__KEY; recorded in the run like an FW_ variable, so a resume needs the same "
                        "settings), e.g. -p data.lookback_days=300")


def force_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--force", action="store_true",
                   help="resume --run-id even though its profile now resolves differently (edited profile files, "
                        "other FW_* variables): the remaining stages run with the new values, and the change "
                        "(keys, old values, when) is recorded in the manifest and INDEX.md")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="run_book.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=version())
    parser.add_argument("--runs-dir", help="where run directories live (default: ./runs; also accepted after the command)")
    # every command accepts --runs-dir too; SUPPRESS keeps a value given before the command
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--runs-dir", default=argparse.SUPPRESS,
                        help="where run directories live (default: ./runs)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_parser = sub.add_parser

    def command(name: str, **kw) -> argparse.ArgumentParser:
        return add_parser(name, parents=[common], **kw)

    sub.add_parser = command  # type: ignore[method-assign]

    def run_pair(p: argparse.ArgumentParser) -> None:
        for name in ("run_a", "run_b"):
            p.add_argument(name, metavar=name.upper(), help="run id (under --runs-dir), run directory or META/SLEEVE")

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
    params_option(p)
    p.set_defaults(func="quantlib.commands.phases:data", first_phase="data")

    p = sub.add_parser("sleeve", help="Phase 2: one sleeve's book (aggregate ... report)",
                       description="Run one sleeve's book for PROFILE: aggregate with strict health, HTR selection, "
                                   "synthesis and sign test, pre-optimization analysis, optimization, report and audit.")
    p.add_argument("profile", metavar="PROFILE", help="sleeve profile in profiles/ (e.g. demo_crypto_long)")
    p.add_argument("--run-id", help="resume this run at its first incomplete stage (or create it)")
    p.add_argument("--skip-validation", action="store_true", help="skip the walk-forward validation backtest")
    p.add_argument("--skip-analysis", action="store_true", help="skip the post-analysis charts")
    no_cache(p)
    force_option(p)
    params_option(p)
    p.set_defaults(func="quantlib.commands.phases:sleeve", first_phase="sleeve")

    def ray_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--executor", choices=["ray", "local"], default="ray",
                       help="run the sleeves as Ray tasks (default) or one after another in this process")
        p.add_argument("--ray-address", help="join this Ray cluster instead of starting a local one, giving up after "
                                             "meta.ray_connect_timeout_s (30 s); runs and lakehouse paths must then "
                                             "be on storage every node sees")
        no_cache(p)
        params_option(p)

    p = sub.add_parser("meta", help="Phase 3: sleeves in parallel on Ray, gates, risk parity, flattening",
                       description="Run the meta book of PROFILE: every sleeve's book (Ray tasks), the sign-test and "
                                   "completeness gates, the meta allocation, flattening and the meta report.")
    p.add_argument("profile", metavar="PROFILE", help="meta profile in profiles/ (e.g. demo_meta)")
    p.add_argument("--run-id", help="resume this run at its first incomplete stage (or create it)")
    force_option(p)
    ray_options(p)
    p.set_defaults(func="quantlib.commands.phases:meta", first_phase="meta")

    p = sub.add_parser("baseline", help="the Binance rating baselines: a LONG/SHORT pair, in parallel, audited",
                       description="Run the long and short sleeves of a rating baseline in parallel, audit both and "
                                   "combine them (meta profiles meta_rating_all / meta_rating_ma).")
    p.add_argument("name", choices=BASELINES, metavar="NAME", help="rating_all | rating_ma")
    ray_options(p)
    p.set_defaults(func="quantlib.commands.phases:baseline", first_phase="meta")

    p = sub.add_parser("demo", help="the whole workflow offline: data phase, then a three-sleeve meta portfolio",
                       description="Data phase on the simulated crypto and equities venues, then the demo_meta "
                                   "portfolio (crypto LONG + crypto SHORT + equities LONG sleeves, with validation).")
    p.add_argument("--profiles", nargs="+", default=["demo", "demo_equities"], help=argparse.SUPPRESS)
    p.add_argument("--meta-profile", default="demo_meta", help=argparse.SUPPRESS)
    ray_options(p)
    p.set_defaults(func="quantlib.commands.phases:demo", first_phase="data")

    p = sub.add_parser("audit-lookahead", help="prove a sleeve run's decisions ignore data after a date",
                       description="Copy the lakehouse RUN_ID read, with every OHLCV bar and features row after "
                                   "a cutoff perturbed (noise) and events planted after it, rerun the walk-forward from the raw "
                                   "data and check that the universe, eligibility, selection, weights, trades, "
                                   "strategy and benchmark returns up to the cutoff are unchanged.")
    p.add_argument("run_id", metavar="RUN_ID", help="a sleeve run: its id, its directory or META/SLEEVE")
    p.add_argument("--at", help="cutoff date (ISO; default: the middle window's decision date)")
    p.add_argument("--seed", type=int, default=0, help="seed of the perturbation")
    p.add_argument("--events", nargs="*", default=["delist", "spike", "listing"], metavar="EVENT",
                   choices=["delist", "spike", "listing"],
                   help="events planted after the cutoff: a held symbol delisted, a held symbol +600 %%, "
                        "a new listing (default: all three)")
    p.set_defaults(func="quantlib.commands.audit:audit_lookahead")

    p = sub.add_parser("replay", help="rebuild one rebalance decision of a sleeve run and prove it equals the record",
                       description="Rebuild one rebalance decision of sleeve run RUN_ID from its recorded inputs "
                                   "(its resolved profile and the lakehouse files whose hashes its manifest recorded; "
                                   "refused, exit 1, if they changed) -- point-in-time universe, eligibility, "
                                   "selection, atoms, weights per risk profile, trades -- and compare it exactly with "
                                   "what the run recorded. Without --at the production decision, with --at DATE the "
                                   "walk-forward rebalance of that date. Writes nothing. Exit 0 MATCH, 1 DIFF (the "
                                   "first differing artifact, field and row are printed), 2 unknown run or not a "
                                   "rebalance date.")
    p.add_argument("run_id", metavar="RUN_ID", help="a sleeve run: its id, its directory or META/SLEEVE")
    p.add_argument("--at", metavar="DATE", help="a walk-forward rebalance date (ISO; default: the production decision)")
    p.add_argument("--from-run", action="store_true",
                   help="replay from the run's own copies of its inputs (returns, screener, benchmark) instead of "
                        "the lakehouse, e.g. after a later data run changed it")
    p.set_defaults(func="quantlib.commands.audit:replay")

    p = sub.add_parser("compare", help="compare two runs artifact by artifact",
                       description="Compare every artifact of two runs of the same phase (a meta's sleeves too): "
                                   "parquet frames exactly, JSON and text apart from run ids, paths and times.")
    run_pair(p)
    p.set_defaults(func="quantlib.commands.records:compare")

    p = sub.add_parser("verify", help="check a finished run against its record: hashes, inputs, gates",
                       description="Re-hash every artifact, executed notebook and HTML export the manifest records, "
                                   "re-hash the lakehouse and definition files the run read (naming what changed "
                                   "since), check every gate file and recompute the gates that pure functions give "
                                   "(sign tests, sleeve audit, meta completeness, sign-test and report gates, meta "
                                   "weights); a meta's nested and pinned sleeve runs too. Package versions and git "
                                   "revision are compared with the current ones (informational). Writes nothing. "
                                   "Exit 0 when everything matches, 1 otherwise.")
    p.add_argument("run_id", metavar="RUN_ID", help="run id (under --runs-dir), run directory or META/SLEEVE")
    p.add_argument("--all", action="store_true", help="list every item (default: OK items folded per kind)")
    p.set_defaults(func="quantlib.commands.records:verify")

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
    p.set_defaults(func="quantlib.commands.records:diff")

    p = sub.add_parser("runs", help="list runs with their status; `runs prune` deletes old ones",
                       description="List runs, newest first, a meta's sleeve runs indented below it as META/SLEEVE "
                                   "(the name show, verify and audit-lookahead take); `runs prune --help`: delete old runs.")
    p.set_defaults(func="quantlib.commands.listing:runs")
    actions = p.add_subparsers(dest="action", metavar="ACTION")
    q = actions.add_parser("prune", parents=[common], help="delete old runs (dry run unless --yes)",
                           description="Delete old runs under --runs-dir: those beyond the newest N of their profile "
                                       "(--keep) and/or created more than DAYS ago (--older-than). A dry run unless "
                                       "--yes: it prints every run with its decision and the bytes freed. Never "
                                       "deleted: a RUNNING run, a run a profile or a kept meta pins as a sleeve, a "
                                       "data run a kept run read, and _static/ (the reports' shared plotly.js).")
    q.add_argument("--keep", metavar="N", help="keep the newest N runs of every profile")
    q.add_argument("--older-than", metavar="DAYS", help="delete only runs created more than DAYS days ago")
    q.add_argument("--yes", action="store_true", help="delete (without it: print what would be deleted)")
    q.set_defaults(func="quantlib.commands.listing:runs_prune")

    p = sub.add_parser("cluster", help="start, show or stop the workbook's Ray cluster (metas join it)",
                       description="A Ray head node for this runs root that outlives the command: every later "
                                   "meta, demo and baseline in the runs root joins it instead of starting Ray. "
                                   "Token-authenticated, loopback only unless --host; `stop` ends only its processes.")
    p.set_defaults(func="quantlib.commands.cluster:status")  # each action sets its own
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    q = actions.add_parser("start", parents=[common], help="start the head node (refused when one runs)")
    q.add_argument("--host", default="127.0.0.1", help="interface its servers listen on (default 127.0.0.1; "
                                                       "another address exposes it deliberately)")
    q.add_argument("--port", type=int, default=0, help="GCS port (default: a free one)")
    q.add_argument("--num-cpus", type=int, help="CPUs it offers (default: all)")
    q.set_defaults(func="quantlib.commands.cluster:start")
    q = actions.add_parser("status", parents=[common], help="address, pid, token and logs; exit 1 when not running")
    q.set_defaults(func="quantlib.commands.cluster:status")
    q = actions.add_parser("stop", parents=[common], help="stop it (only its own processes)")
    q.set_defaults(func="quantlib.commands.cluster:stop")

    p = sub.add_parser("show", help="print a run's INDEX.md",
                       description="Print the INDEX.md of RUN_ID, rendered from its manifest as it reads now "
                                   "(a RUNNING run whose process is gone shows as STALE).")
    p.add_argument("run_id", metavar="RUN_ID", help="run id (under --runs-dir), run directory or META/SLEEVE "
                                                    "(a meta's sleeve run)")
    p.set_defaults(func="quantlib.commands.listing:show")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    skip_unused_imports()
    # stage kernels must run this interpreter (the `python3` kernelspec launches `python` from PATH)
    os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])

    try:
        if getattr(args, "first_phase", None):  # its kernel boots and imports while this process imports its
            kernel.prestart(args.first_phase, progress=True)  # modules and creates the run (else: shut down at exit)
        return resolve(args.func)(args)
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
