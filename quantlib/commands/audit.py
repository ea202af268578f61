"""`audit-lookahead` and `replay`: re-decide a sleeve run's past and prove it equals the record."""
from __future__ import annotations

import argparse
import sys

import pandas as pd

from quantlib.backtest.lookahead import audit_run
from quantlib.backtest.replay import ReplayRefused, replay_run, report_lines
from quantlib.commands.common import run_at
from quantlib.core import registry
from quantlib.core.errors import DataError


def pd_date(value) -> str:
    """A timestamp as an ISO date (no 00:00:00)."""
    return str(value)[:10]


def check_date(value: str | None, option: str = "--at") -> None:
    """A DataError for a value that is not an ISO date (before any work starts)."""
    if value is None:
        return
    try:
        pd.Timestamp(value)
    except (ValueError, TypeError):
        raise DataError(f"{option} {value!r}: not a date; give an ISO date such as 2026-06-01") from None


def audit_lookahead(args: argparse.Namespace) -> int:
    """Exit 0 when every check passed, 1 when one failed."""
    check_date(args.at)
    run = run_at(args, args.run_id)  # a run id, a run directory or META/SLEEVE
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


def replay(args: argparse.Namespace) -> int:
    """Exit 0 MATCH, 1 DIFF or inputs no longer as recorded, 2 unknown run / not a rebalance date."""
    check_date(args.at)
    run = run_at(args, args.run_id)
    try:
        result = replay_run(run, args.at, from_run=args.from_run)
    except ReplayRefused as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print("\n".join(report_lines(result)))
    return 0 if result.matched else 1
