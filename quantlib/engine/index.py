"""INDEX.md: a run's table of contents -- status, stages with their notebooks, gates, sleeve runs, artifacts."""
from __future__ import annotations

import json
import os
import socket
from pathlib import Path

from quantlib.core import storage
from quantlib.core.errors import WorkbookError
from quantlib.core.figures import STATIC_DIR, run_static_root
from quantlib.core.gates import verdict
from quantlib.core.registry import stages
from quantlib.core.runs import INDEX, REPORT, STALE_AFTER_S, Run, describe_process, run_status


def write_index(run: Run, phase: str) -> Path:
    """INDEX.md: profile name, run id, status, stage table with links, artifacts with hashes."""
    return storage.write_text(run.dir / INDEX, render_index(run, phase))


def render_index(run: Run, phase: str) -> str:
    """The text of INDEX.md (also what `run_book.py show` prints, with the status as read now)."""
    m = run.manifest
    status = run.status
    report = m.get("report") or {}
    lines = [f"# Run `{m['run_id']}`", ""]
    if report.get("sha256"):  # the page to open first (engine.run_report)
        lines += [f"**Report: [{REPORT}]({REPORT})** -- the run on one page (out-of-sample performance, "
                  "composition, gates)", ""]
    lines += [f"- **Status:** {status}",
             f"- **Profile:** `{m['profile']}` (extends: {' <- '.join(m.get('extends_chain', []))})",
             f"- **Run id:** `{m['run_id']}`",
             f"- **Phase:** {phase}",
             f"- **Created:** {m.get('created_at', '')}  **Finished:** {m.get('finished_at', '')}",
             f"- **Git revision:** `{m.get('git_revision', '')}`",
             f"- **Process:** {describe_process(m)}",
             "- **Resolved profile:** [profile.resolved.yaml](profile.resolved.yaml) · "
             "[manifest.json](manifest.json)"]
    if m.get("env_overrides"):
        lines.append(f"- **Environment overrides:** `{json.dumps(m['env_overrides'], default=str)}`")
    if m.get("resumes"):
        last = m["resumes"][-1]
        lines.append(f"- **Resumed:** {len(m['resumes'])}× (last at {last.get('at', '')}; the status each resume "
                     f"found is in the manifest's `resumes`)")
    notes = [f"> **FAIL:** {m['error']}"] if m.get("error") else []
    if status == "INTERRUPTED":
        i = m.get("interrupted") or {}
        notes.append(f"> **INTERRUPTED** by {i.get('by', '?')} in stage {i.get('stage') or '(between stages)'} at "
                     f"{i.get('at', '?')}; resume it with `--run-id {m['run_id']}` (continues at that stage)")
    if status == "STALE":
        here = (m.get("process") or {}).get("host") == socket.gethostname()
        gone = "is gone" if here else f"has not written the manifest for {STALE_AFTER_S // 3600} h"
        notes.append(f"> **STALE:** recorded RUNNING, but its process ({describe_process(m)}) {gone}; resume it "
                     f"with `--run-id {m['run_id']}`")
    if m.get("skipped"):
        lines.append("- **Skipped on request:** " + ", ".join(f"{name} ({why})" for name, why in m["skipped"].items()))
    if run.options.data_runs:
        lines.append("- **Pinned data runs (every sleeve reads one of these):** "
                     + ", ".join(f"`{d}`" for d in run.options.data_runs))
    if m.get("data_run"):
        lines.append(f"- **Data run:** `{m['data_run']}`")
    if run.options.parent_run:
        lines.append(f"- **Parent run:** `{run.options.parent_run}` ([INDEX.md](../../INDEX.md))")
    lines.append(_static_line(run))
    lines += [line for note in notes for line in ("", note)]
    lines += ["", "## Stages", "", "| # | stage | status | seconds | notebook | report |", "|---|---|---|---|---|---|"]
    for index, stage in enumerate(stages(phase), start=1):
        rec = m.get("stages", {}).get(stage.name, {})
        nb = rec.get("notebook")
        html = rec.get("html")
        status = rec.get("status", "pending") + (f" ({rec['reason']})" if rec.get("reason") else "")
        if rec.get("cached_from"):
            status += f" (cached from `{rec['cached_from_path']}`)"
        lines.append(f"| {index} | {stage.name} | {status} | {rec.get('seconds', '')} | "
                     f"{f'[ipynb]({nb})' if nb else ''} | {f'[html]({html})' if html else ''} |")
    lines += _gate_lines(run, phase) + _children_lines(run) + _change_lines(m)
    lines += ["", "## Artifacts", "", "| file | sha256 |", "|---|---|"]
    if report.get("sha256"):
        lines.append(f"| [{REPORT}]({REPORT}) | `{report['sha256'][:12]}` |")
    for stage in stages(phase):
        rec = m.get("stages", {}).get(stage.name, {})
        for rel, digest in rec.get("outputs", {}).items():
            lines.append(f"| [{rel}]({rel}) | `{digest[:12]}` |")
        for rel, digest in rec.get("lakehouse_outputs", {}).items():
            lines.append(f"| lakehouse/{rel} | `{digest[:12]}` |")
    return "\n".join(lines) + "\n"


def _change_lines(m: dict) -> list[str]:
    """The profile changes a forced resume recorded (`engine.resume.record_change`)."""
    rows = []
    for change in m.get("profile_changes", []):
        before = ", ".join(change.get("completed_stages", [])) or "none"
        rows += [f"| {change.get('at', '')} | `{c['key']}` | `{json.dumps(c['old'], default=str)}` | "
                 f"`{json.dumps(c['new'], default=str)}` | {before} |" for c in change.get("changes", [])]
    if not rows:
        return []
    return ["", "## Profile changes (resumed with --force)", "",
            "Stages completed before a change ran with the old values; the resolved profile holds the new ones.", "",
            "| when | key | old | new | stages completed before |", "|---|---|---|---|---|", *rows]


def _static_line(run: Run) -> str:
    """Where the HTML reports load their shared files from, and what moving the run alone needs."""
    static = Path(os.path.relpath(run_static_root(run) / STATIC_DIR, run.dir.resolve())).as_posix()
    return (f"- **HTML reports:** load plotly.js and their stylesheets from `{static}/`, the runs folder's "
            f"shared copy, by relative paths: moving the whole runs folder keeps them working; a run moved "
            f"alone needs a copy of `_static/` at that same relative place (user guide §5)")


def _children_lines(run: Run) -> list[str]:
    """The sleeve runs of a meta run (runs/<META>/sleeves/<id>/), linked, with their status."""
    rows = []
    for manifest in sorted((run.dir / "sleeves").glob("*/manifest.json")):
        try:
            doc = storage.read_json(manifest)
        except WorkbookError:
            doc = {}
        sid = manifest.parent.name
        page = f" · [{REPORT}](sleeves/{sid}/{REPORT})" if (doc.get("report") or {}).get("sha256") else ""
        rows.append(f"| {sid} | `{doc.get('profile', '?')}` | {doc.get('phase', '?')} | "
                    f"{run_status(doc, manifest) if doc else 'UNREADABLE'} | "
                    f"[INDEX.md](sleeves/{sid}/INDEX.md){page} |")
    return ["", "## Sleeve runs", "", "| sleeve | profile | phase | status | report |", "|---|---|---|---|---|", *rows] if rows else []


def _gate_lines(run: Run, phase: str) -> list[str]:
    """Gate verdicts read from the gate artifacts the stages wrote (never assumed)."""
    rows = []
    for stage in stages(phase):
        for gate in stage.gates:
            rel = gate.path
            path = run.dir / rel
            if not path.exists():
                rows.append(f"| {rel} | not run |")
                continue
            try:
                passed = verdict(storage.read_json(path))
            except WorkbookError:
                passed = None
            shown = "PASS" if passed is True else "FAIL" if passed is False else "not checked"
            rows.append(f"| [{rel}]({rel}) | {shown} |")
    return ["", "## Gates", "", "| gate | verdict |", "|---|---|", *rows] if rows else []
