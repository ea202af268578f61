"""`run_book.py diff` output: the terminal text (sections, aligned columns) and the HTML page.

The text lists, per section, what differs (weights: the `top` largest |Δ| of each vector, metrics: every
value that differs). The HTML page holds the same text and plotly figures: before/after weights of the
top changes (grouped bars per vector) and the out-of-sample equity curves of both runs overlaid. It is
written by `write_page` only, offline (plotly.js embedded once), never inside a run directory.
"""
from __future__ import annotations

import html
import math
import re
import tempfile
from pathlib import Path
from typing import Any

import plotly.graph_objects as go

from quantlib.core import storage
from quantlib.core.errors import WorkbookError
from quantlib.core.figures import plotly_js
from quantlib.core.runs import Run
from quantlib.engine.diff import TOL, RunDiff, WeightDiff, fact_differs, label, to_json
from quantlib.portfolio.metrics import wealth

A_COLOR, B_COLOR = "#4c78a8", "#f58518"
PALETTE = ("#4c78a8", "#f58518", "#54a24b", "#e45756", "#72b7b2", "#b279a2", "#ff9da6", "#9d755d", "#bab0ac")


# ---------------------------------------------------------------------------------------- text
def _table(rows: list[list[str]], right: set[int] = frozenset(), indent: str = "  ") -> list[str]:
    """Rows as aligned columns (`right`: right-aligned column indexes)."""
    if not rows:
        return []
    widths = [max(len(r[i]) for r in rows if i < len(r)) for i in range(max(map(len, rows)))]
    return [indent + "  ".join(c.rjust(widths[i]) if i in right else c.ljust(widths[i])
                               for i, c in enumerate(r)).rstrip() for r in rows]


def _num(value: Any, digits: int = 6) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return to_json(value)
    if isinstance(value, int):
        return str(value)
    return "NaN" if math.isnan(value) else f"{value:.{digits}f}"


def _signed(value: float, digits: int = 6) -> str:
    """A delta; one too small for `digits` decimals in scientific notation (never a bare +0.000000)."""
    if math.isnan(value):
        return "NaN"
    return f"{value:+.2e}" if 0 < abs(value) < 0.5 * 10 ** -digits else f"{value:+.{digits}f}"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _differ(n: int, word: str) -> str:
    """`1 key differs`, `3 keys differ`."""
    return f"{_plural(n, word)} {'differs' if n == 1 else 'differ'}"


def _status(run: Run) -> str:
    return str(run.manifest.get("status", "?"))


def _profile_lines(d: RunDiff, wide: int = 48) -> list[str]:
    """Changed keys as `key  A → B`; a value longer than `wide` characters gets A and B lines of its own."""
    head = "Profile (profile.resolved.yaml): " + (_differ(len(d.profile), "key") if d.profile else "same")
    short = [c for c in d.profile if max(len(to_json(c.a)), len(to_json(c.b))) <= wide]
    lines = [head, *_table([[c.key, to_json(c.a), "→", to_json(c.b)] for c in short])]
    for c in d.profile:
        if c not in short:
            lines += [f"  {c.key}", f"      A  {to_json(c.a)}", f"      B  {to_json(c.b)}"]
    return lines


def _fact(value: Any) -> str:
    return "? (not found)" if value is None else to_json(value)


def _inputs_lines(d: RunDiff, top: int) -> list[str]:
    i = d.inputs
    lines = [f"Data inputs: {'differ' if i.differs else 'same'}"]
    rows = [[c.key, _fact(c.a), "→" if fact_differs(c) else "", _fact(c.b) if c.a != c.b else "(same)"] for c in i.facts]
    counts = f"{len(i.changed)} changed, {len(i.added)} added, {len(i.removed)} removed"
    rows.append(["input files", f"{i.n_files} recorded", "", counts])
    lines += _table(rows)
    for word, names in (("changed", i.changed), ("added", i.added), ("removed", i.removed)):
        lines += [f"      {word}: {n}" for n in names[:top]]
        if len(names) > top:
            lines.append(f"      ... and {len(names) - top} more {word}")
    return lines


def _gate_lines(d: RunDiff, top: int) -> list[str]:
    flips = sum(g.a != g.b for g in d.gates)
    checks = sum(len(g.checks) for g in d.gates)
    lines = [f"Gates: {_plural(flips, 'verdict')} changed, {_plural(checks, 'check')} changed outcome"]
    rows = [["gate", "A", "B", ""]]
    for g in d.gates:
        rows.append([g.gate, g.a, g.b, "*" if g.differs else ""])
        rows += [[f"  {c.key}", c.a or "—", c.b or "—", "→"] for c in g.checks[:top]]
        if len(g.checks) > top:
            rows.append([f"  ... and {len(g.checks) - top} more checks", "", "", ""])
    return lines + _table(rows)


def _weight_lines(w: WeightDiff, top: int) -> list[str]:
    if w.missing:
        return [f"  {w.title} ({w.source}): only in {'B' if w.missing == 'A' else 'A'}"]
    head = (f"  {w.title} ({w.source}): {w.count('changed')} changed, {w.count('added')} added, "
            f"{w.count('removed')} removed")
    rows = [["#", w.unit, "A", "B", "Δ (B−A)", ""]]
    rows += [[str(k), r.name, _num(r.a), _num(r.b), _signed(r.delta), r.status]
             for k, r in enumerate(w.rows[:top], start=1)]
    lines = [head, *_table(rows, right={0, 2, 3, 4}, indent="    ")]
    if len(w.rows) > top:
        lines.append(f"    ... and {len(w.rows) - top} more")
    return lines


def _weights_section(d: RunDiff, top: int) -> list[str]:
    changed = [w for w in d.weights if w.rows or w.missing]
    same = [w.title for w in d.weights if not (w.rows or w.missing)]
    lines = [f"Weights: {len(changed)} of {_differ(len(d.weights), 'vector')} (top {top} by |Δ|; held = |w| > {TOL:g})"]
    for w in changed:
        lines += _weight_lines(w, top)
    if same:
        lines.append("  same: " + ", ".join(same))
    return lines


def _metrics_lines(d: RunDiff) -> list[str]:
    m = d.metrics
    if m.missing:
        return [f"Out-of-sample metrics ({m.source}): not recorded in {m.missing}"]
    if not m.rows and not d.correlations:
        return ["Out-of-sample metrics: not recorded in either run"]
    lines = [f"Out-of-sample metrics ({m.source}): "
             + (_differ(len(m.rows), "value") if m.rows else "same")]
    rows = [["stream", "metric", "A", "B", "Δ (B−A)"]]
    rows += [[r.stream if k == 0 or m.rows[k - 1].stream != r.stream else "", r.metric, _num(r.a), _num(r.b),
              _signed(r.delta)] for k, r in enumerate(m.rows)]
    return lines + (_table(rows, right={2, 3, 4}) if m.rows else [])


def _correlation_lines(d: RunDiff) -> list[str]:
    if not d.correlations:
        return []
    lines = ["Out-of-sample returns: correlation of A and B on their common dates"]
    rows = [["stream", "corr", "common days", "A days", "B days", ""]]
    for c in d.correlations:
        note = "identical" if c.identical else ("only in A" if not c.n_b else "only in B" if not c.n_a else "differ")
        rows.append([c.stream, _num(c.corr, 4), str(c.n_common), str(c.n_a), str(c.n_b), note])
    return lines + _table(rows, right={1, 2, 3, 4})


def summary(d: RunDiff) -> str:
    """One line: what differs (for a meta's per-sleeve lines)."""
    if not d.differs:
        return "no difference"
    parts = []
    if d.profile:
        parts.append(f"profile {_plural(len(d.profile), 'key')}")
    if d.inputs.differs:
        parts.append(f"inputs {len(d.inputs.changed) + len(d.inputs.added) + len(d.inputs.removed)} files"
                     + (", data run" if any(c.key == "data run" and fact_differs(c) for c in d.inputs.facts) else ""))
    if any(g.differs for g in d.gates):
        parts.append("gates " + ", ".join(f"{g.gate} {g.a}→{g.b}" if g.a != g.b else g.gate
                                          for g in d.gates if g.differs))
    moved = [w for w in d.weights if w.rows or w.missing]
    if moved:
        top = max((w for w in moved if w.rows), key=lambda w: abs(w.rows[0].delta), default=None)
        parts.append(f"weights {_plural(len(moved), 'vector')}" + (f" (max |Δ| {abs(top.rows[0].delta):.4f} {top.title})" if top else ""))
    if d.metrics.rows or d.metrics.missing:
        parts.append(f"metrics {len(d.metrics.rows)} values" if d.metrics.rows else f"metrics only in "
                     f"{'B' if d.metrics.missing == 'A' else 'A'}")
    corr = [c for c in d.correlations if not c.identical]
    if corr:
        parts.append("returns " + ", ".join(f"{c.stream} corr {_num(c.corr, 4)}" for c in corr[:2])
                     + f" ({corr[0].n_common} common days)")
    sleeves = [sid for sid, s in d.sleeves if isinstance(s, str) or s.differs]
    if sleeves:
        parts.append("sleeves " + ", ".join(sleeves))
    return "DIFFERENT: " + "; ".join(parts)


def _sleeve_lines(d: RunDiff, width: int = 110) -> list[str]:
    if d.phase != "meta":
        return []
    differ = sum(isinstance(s, str) or s.differs for _, s in d.sleeves)
    lines = [(f"Sleeves: {differ} of {_differ(len(d.sleeves), 'sleeve')} (each diffed like a sleeve run; "
              "`diff A/sleeves/<id> B/sleeves/<id>` for the detail)")]
    if not d.sleeves:
        return lines + ["  none"]
    pad = max(len(sid) for sid, _ in d.sleeves) + 4
    for sid, s in d.sleeves:
        parts = (s if isinstance(s, str) else summary(s)).split("; ")
        row = f"  {sid.ljust(pad - 4)}  {parts[0]}"
        for part in parts[1:]:  # wrapped between parts so a long summary stays readable
            if len(row) + len(part) + 2 > width:
                lines.append(row + ";")
                row = " " * pad + part
            else:
                row += "; " + part
        lines.append(row)
    return lines


def render_text(d: RunDiff, top: int = 10) -> str:
    """The whole terminal report, sections separated by blank lines, ending with the verdict."""
    head = [f"diff of two {d.phase} runs"] + _table(
        [["A", label(d.a), _status(d.a), str(d.a.dir)], ["B", label(d.b), _status(d.b), str(d.b.dir)]])
    sections = [head, _profile_lines(d), _inputs_lines(d, top), _gate_lines(d, top), _weights_section(d, top),
                _metrics_lines(d), _correlation_lines(d), _sleeve_lines(d)]
    found = d.differing_sections()
    verdict = (f"DIFFERENT: {', '.join(found)}" if found else
               "no difference (profile, data inputs, gates, weights, metrics, returns" +
               (", sleeves)" if d.phase == "meta" else ")"))
    return "\n\n".join("\n".join(s) for s in sections if s) + f"\n\n{verdict}\n"


# ---------------------------------------------------------------------------------------- HTML
def weights_figure(w: WeightDiff, top: int) -> go.Figure:
    """Grouped horizontal bars: A's (upper) and B's weight of the `top` largest changes (largest at the top)."""
    rows = w.rows[:top][::-1]
    names = [r.name for r in rows]
    fig = go.Figure([go.Bar(y=names, x=[r.b or 0.0 for r in rows], name="B", orientation="h", marker_color=B_COLOR),
                     go.Bar(y=names, x=[r.a or 0.0 for r in rows], name="A", orientation="h", marker_color=A_COLOR)])
    fig.update_layout(title={"text": f"Weights · {w.title}: top {len(rows)} changes by |Δ|", "x": 0.01, "xanchor": "left"},
                      barmode="group", height=max(300, 130 + 34 * len(rows)), margin={"l": 20, "r": 20, "t": 70, "b": 40},
                      legend={"orientation": "h", "yanchor": "bottom", "y": 1.0, "xanchor": "right", "x": 1.0, "traceorder": "reversed"},
                      xaxis_title="weight")
    fig.update_yaxes(automargin=True)
    return fig


def equity_figure(d: RunDiff) -> go.Figure:
    """Out-of-sample wealth of every stream, A solid and B dashed in one colour per stream."""
    fig = go.Figure()
    for i, (stream, pair) in enumerate(d.returns.items()):
        for run, series, dash in (("A", pair[0], "solid"), ("B", pair[1], "dash")):
            if series is not None and len(series):
                w = wealth(series)
                fig.add_trace(go.Scatter(x=w.index, y=w.to_numpy(), mode="lines", name=f"{stream} · {run}",
                                         line={"color": PALETTE[i % len(PALETTE)], "dash": dash, "width": 1.6}))
    fig.update_layout(title={"text": "Out-of-sample equity curves (A solid, B dashed; wealth from 1.0)",
                                 "x": 0.01, "xanchor": "left"}, height=520, margin={"l": 20, "r": 20, "t": 70, "b": 40},
                      yaxis_title="wealth", legend={"orientation": "v", "x": 1.01, "y": 1.0})
    fig.update_yaxes(automargin=True)
    return fig


def figures(d: RunDiff, top: int = 10) -> list[go.Figure]:
    """The page's figures: weight changes of every differing vector, then the equity curves."""
    out = [weights_figure(w, top) for w in d.weights if w.rows]
    if any(a is not None or b is not None for a, b in d.returns.values()):
        out.append(equity_figure(d))
    return out


def default_html_path(d: RunDiff) -> Path:
    """`<temp dir>/fractal-workbook-diff/<A>__vs__<B>.html` (never inside a run)."""
    safe = [re.sub(r"[^A-Za-z0-9_.-]+", "+", label(r)) for r in (d.a, d.b)]
    return Path(tempfile.gettempdir()) / "fractal-workbook-diff" / f"{safe[0]}__vs__{safe[1]}.html"


def check_outside_runs(path: Path, *runs: Run) -> Path:
    """`path` resolved; WorkbookError when it lies inside one of the runs being read."""
    target = path.resolve()
    for run in runs:
        root = run.dir.resolve()
        if target == root or root in target.parents:
            raise WorkbookError(f"--html {path}: inside run {run.dir}; runs are audit records, "
                                f"write the page elsewhere")
    return target


def write_page(path: Path, title: str, text: str, figs: list[go.Figure]) -> Path:
    """The standalone HTML page: title, the verdict (the text's last line), the figures, then the whole
    text report; plotly.js embedded once (offline)."""
    divs = "\n".join(f.to_html(include_plotlyjs=False, full_html=False, config={"displaylogo": False}) for f in figs)
    verdict = text.rstrip().splitlines()[-1] if text.strip() else ""
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<script type='text/javascript'>{plotly_js()}</script>"
            "<style>body{font-family:sans-serif;margin:16px 24px;max-width:1340px}"
            "pre{font-size:12px;background:#f6f8fa;padding:12px;overflow-x:auto}"
            "h1{font-size:22px} h2{font-size:18px;margin-top:28px} .plotly-graph-div{margin-bottom:24px}</style></head>"
            f"<body><h1>{html.escape(title)}</h1><p><b>{html.escape(verdict)}</b></p>{divs}"
            f"<h2>Report</h2><pre>{html.escape(text)}</pre></body></html>")
    return storage.write_text(path, page)


def write_html(d: RunDiff, path: Path | None = None, top: int = 10) -> Path:
    """Write the diff page to `path` (default `default_html_path`), refusing a path inside either run."""
    target = check_outside_runs(Path(path) if path else default_html_path(d), d.a, d.b)
    target.parent.mkdir(parents=True, exist_ok=True)
    return write_page(target, f"diff: {label(d.a)} → {label(d.b)}", render_text(d, top), figures(d, top))
