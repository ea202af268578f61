"""`runs` (a meta's sleeve runs as a tree below it), `runs prune` and `show`."""
from __future__ import annotations

import argparse

from quantlib.commands.common import run_at, runs_dir
from quantlib.core.runs import list_runs, nested_runs
from quantlib.engine.index import render_index
from quantlib.engine.prune import apply_prune, human_bytes, parse_days, parse_keep, plan_lines, plan_prune

ID_WIDTH = 48


def tree_lines(rows: list[dict], nested: dict[str, list[tuple[int, dict]]]) -> list[str]:
    """The table: one line per run, a meta's sleeve runs right below it as `├─ META/SLEEVE` (indented per level);
    the id column is as wide as its longest entry (at least `ID_WIDTH`), two spaces before the profile."""
    entries: list[tuple[str, dict]] = []
    for r in rows:
        entries.append((r["run_id"], r))
        children = nested.get(r["run_id"], [])
        for i, (depth, child) in enumerate(children):
            after = next((d for d, _ in children[i + 1:] if d <= depth), 0)  # the next entry not below this one
            entries.append((f"{'   ' * (depth - 1)}{'└─' if after < depth else '├─'} {child['run_id']}", child))
    width = max([ID_WIDTH - 2] + [len(label) for label, _ in entries]) + 1

    def line(label: str, r: dict) -> str:
        return (f"{label:<{width}} {r['profile']:<22} {r['phase']:<6} {r['status']:<11} {r['stages']:<7} "
                f"{r['created_at']}").rstrip()

    header = {"profile": "profile", "phase": "phase", "status": "status", "stages": "stages", "created_at": "created"}
    return [line("run id", header)] + [line(label, r) for label, r in entries]


def runs(args: argparse.Namespace) -> int:
    """List runs, newest first; a meta's sleeve runs (`runs/<META>/sleeves/<id>/`) as a tree below it."""
    root = runs_dir(args)
    rows = list_runs(root)
    if not rows:
        print(f"no runs under {root}")
        return 0
    nested = {r["run_id"]: nested_runs(root / r["run_id"]) for r in rows if r["phase"] == "meta"}
    print("\n".join(tree_lines(rows, nested)))
    return 0


def runs_prune(args: argparse.Namespace) -> int:
    """Dry run by default: print what would be deleted and the bytes freed; delete only with --yes."""
    keep, days = parse_keep(args.keep), parse_days(args.older_than)
    plan = plan_prune(runs_dir(args), keep=keep, older_than_days=days)
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


def show(args: argparse.Namespace) -> int:
    """INDEX.md as it reads now: rendered from the manifest (so a run without INDEX.md, or one gone STALE,
    shows its real state), the same text the orchestrator writes. RUN_ID may be META/SLEEVE."""
    run = run_at(args, args.run_id)
    print(render_index(run, run.manifest.get("phase", "?")), end="")
    return 0
