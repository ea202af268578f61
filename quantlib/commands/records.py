"""`compare`, `verify` and `diff`: a run against another run or against its own record."""
from __future__ import annotations

import argparse
from pathlib import Path

from quantlib.commands.common import run_at
from quantlib.core.errors import WorkbookError
from quantlib.engine.compare import compare_runs
from quantlib.engine.diff import diff_runs
from quantlib.engine.diff_report import check_outside_runs, default_html_path, render_text, write_html
from quantlib.engine.verify import verify_run


def compare(args: argparse.Namespace) -> int:
    """Exit 0 when every artifact is the same, 1 otherwise."""
    a, b = run_at(args, args.run_a), run_at(args, args.run_b)
    compared, differences = compare_runs(a, b)
    for d in differences:
        print(f"  DIFF  {d.path}: {d.what}")
    print(f"{'SAME' if not differences else 'DIFFERENT'}: {compared} artifacts compared, {len(differences)} differ "
          f"({a.id} vs {b.id})")
    return 0 if not differences else 1


def verify(args: argparse.Namespace) -> int:
    """Re-hash, re-read and recompute a run's record; print the table and a summary; 0 verified, 1 not."""
    run = run_at(args, args.run_id)
    result = verify_run(run)
    rows = result.rows(every=args.all)
    width = min(max((len(r.item) for r in rows), default=4), 64)
    print(f"{'status':<10}  {'item':<{width}}  detail")
    for r in rows:
        print(f"{r.status:<10}  {r.item:<{width}}  {r.detail}")
    print(result.summary())
    return 0 if result.passed else 1


def diff(args: argparse.Namespace) -> int:
    """Print what differs between two runs, write the HTML page; 0 identical, 1 different."""
    if args.top < 1:
        raise WorkbookError(f"--top {args.top}: list at least 1 change")
    a, b = run_at(args, args.run_a), run_at(args, args.run_b)
    result = diff_runs(a, b)
    page = None if args.no_html else check_outside_runs(Path(args.html) if args.html else default_html_path(result), a, b)
    print(render_text(result, args.top), end="")
    if page is not None:
        print(f"html: {write_html(result, page, args.top)}")
    return 1 if result.differs else 0
