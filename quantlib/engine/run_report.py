"""`report.html` at the root of a sleeve or meta run: the one offline page a portfolio manager reads top to
bottom -- out-of-sample KPIs next to the benchmarks, equity, drawdowns, calendar returns, rolling risk,
composition and, for a meta, the sleeves as assets and the flattened book; gates and provenance last.

Built from the run's artifacts (`engine.report_data`, figures `engine.report_charts`) after the last stage,
also when a gate failed; a section whose artifacts are missing says so in one line. plotly.js is the runs
root's shared copy (`core.figures.plotly_script`), every link is relative to the run, no absolute path is
printed. The page records in `<html data-figures data-drawn data-errors>` how many charts it holds, how many
drew and the script errors it saw (what the headless-chromium test reads).
"""
from __future__ import annotations

import html
import math
import re
from pathlib import Path
from typing import Callable

import pandas as pd

from quantlib.core import registry, storage
from quantlib.core.figures import figure_div, figure_json, plotly_script, run_static_root
from quantlib.core.gates import verdict
from quantlib.core.runs import INDEX, MANIFEST, REPORT, Run
from quantlib.engine import report_charts as charts
from quantlib.engine.report_data import (Missing, Source, Streams, exposure_by_decision, meta_exposure,
                                         meta_sleeves, meta_streams, sleeve_streams, with_totals)
from quantlib.portfolio.metrics import metrics_table
from quantlib.portfolio.performance import (contributions, drawdown_table, held_weights, relative_stats,
                                            turnover_series)

ROLLING_DAYS = 63
KPI_COLUMNS = [("cagr", "CAGR", "pct"), ("vol", "Volatility", "pct"), ("sharpe", "Sharpe", "num"),
               ("sortino", "Sortino", "num"), ("max_drawdown", "Max drawdown", "pct"), ("calmar", "Calmar", "num"),
               ("hit_rate", "Hit rate", "pct"), ("var95", "VaR 95 (1 day)", "pct"), ("cvar95", "CVaR 95 (1 day)", "pct"),
               ("turnover_annual", "Turnover / year", "pct"), ("cost_drag", "Cost drag / year", "pct"),
               ("n_days", "Days", "int")]
UNITS = "CAGR, volatility, turnover and cost drag per year; Sharpe and Sortino annualized with rf = 0; VaR and " \
        "CVaR are 1-day historical losses at 95 %; hit rate = share of days with a positive return."

_HEAD = """<!DOCTYPE html><html lang="en" data-errors="0"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1"><title>{title}</title>
<script>window.fwErrors = [];
window.addEventListener("error", function (e) {{ window.fwErrors.push(String(e.message));
  document.documentElement.dataset.errors = String(window.fwErrors.length); }});</script>
{plotly}
<style>
body{{font:14px/1.45 -apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;margin:0 auto;max-width:1280px;padding:12px 28px;color:#1b1f24}}
h1{{font-size:24px;margin:8px 0 2px}} h2{{font-size:19px;margin:30px 0 8px;border-bottom:2px solid #1f3b73;padding-bottom:3px}}
h3{{font-size:15px;margin:18px 0 6px}} .sub{{color:#555;margin:0 0 8px}} .note{{color:#555;font-size:12.5px}}
table{{border-collapse:collapse;margin:6px 0 10px;font-variant-numeric:tabular-nums}}
th,td{{padding:4px 9px;border-bottom:1px solid #e3e6ea;text-align:right;white-space:nowrap}}
th{{background:#f3f5f8;font-weight:600}} td:first-child,th:first-child{{text-align:left}}
table.text td,table.text th{{text-align:left;white-space:normal}} tr.book td{{font-weight:700;background:#eef3fb}} .missing{{background:#fff6e0;border-left:4px solid #e0a800;padding:6px 10px}}
.pass{{color:#1b7d2e;font-weight:700}} .fail{{color:#c62828;font-weight:700}} .grid{{display:grid;grid-template-columns:1fr 1fr;gap:12px}}
.scroll{{max-height:520px;overflow-y:auto;display:inline-block}} th.sort{{cursor:pointer}} th.sort:after{{content:" \\21C5";color:#999}}
.status{{display:inline-block;padding:2px 10px;border-radius:4px;color:#fff;font-weight:700}}
tr.failrow td{{background:#fdecea}} .plotly-graph-div{{margin:4px 0 12px}} a{{color:#1f5fb4}}
</style></head><body>
"""
_TAIL = """<script>
document.querySelectorAll("table.sortable").forEach(function (table) {
  table.querySelectorAll("th").forEach(function (th, col) {
    th.classList.add("sort");
    th.addEventListener("click", function () {
      var body = table.tBodies[0], rows = Array.from(body.rows), asc = th.dataset.asc !== "1";
      rows.sort(function (a, b) {
        var x = a.cells[col].dataset.v || a.cells[col].textContent, y = b.cells[col].dataset.v || b.cells[col].textContent;
        var nx = parseFloat(x), ny = parseFloat(y);
        var c = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : x.localeCompare(y);
        return asc ? c : -c;
      });
      th.dataset.asc = asc ? "1" : "0";
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
});
window.addEventListener("load", function () {
  var divs = document.querySelectorAll(".plotly-graph-div");
  var drawn = Array.from(divs).filter(function (d) { return d._fullLayout && d.data && d.data.length; });
  document.documentElement.dataset.figures = String(divs.length);
  document.documentElement.dataset.drawn = String(drawn.length);
});
</script></body></html>
"""


# ------------------------------------------------------------------------------------------ formatting
def pct(v: float, digits: int = 1) -> str:
    """A fraction as a percentage with its unit (`0.1234` -> `12.3 %`); — when undefined."""
    return "—" if v is None or not math.isfinite(float(v)) else f"{float(v) * 100:,.{digits}f} %"


def num(v: float, digits: int = 2) -> str:
    return "—" if v is None or not math.isfinite(float(v)) else f"{float(v):,.{digits}f}"


def day(ts) -> str:
    """A date as YYYY-MM-DD (never 00:00:00); — for none."""
    return "—" if ts is None or (not isinstance(ts, str) and pd.isna(ts)) else pd.Timestamp(ts).strftime("%Y-%m-%d")


def when(text: str | None) -> str:
    """A recorded UTC timestamp as `YYYY-MM-DD HH:MM UTC`."""
    return "—" if not text else pd.Timestamp(text).strftime("%Y-%m-%d %H:%M UTC")


def _cell(v, kind: str) -> str:
    if kind == "pct":
        return pct(v)
    if kind == "int":
        return "—" if v is None or pd.isna(v) else f"{int(v):,}"
    return num(v)


def table(header: list[str], rows: list[list[str]], classes: list[str] | None = None, sortable: bool = False,
          values: list[list[str | None]] | None = None, text: bool = False) -> str:
    """An HTML table of already formatted (escaped here) cells; `values` are sort keys for a sortable one."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header) if any(header) else ""
    body = []
    for i, row in enumerate(rows):
        keys = values[i] if values else [None] * len(row)
        cells = "".join(f"<td{'' if k is None else f' data-v={chr(34)}{html.escape(str(k))}{chr(34)}'}>"
                        f"{html.escape(str(c))}</td>" for c, k in zip(row, keys))
        cls = f' class="{classes[i]}"' if classes and classes[i] else ""
        body.append(f"<tr{cls}>{cells}</tr>")
    kinds = " ".join(k for k, on in (("sortable", sortable), ("text", text)) if on)
    return (f"<table{f' class={chr(34)}{kinds}{chr(34)}' if kinds else ''}>{f'<thead><tr>{head}</tr></thead>' if head else ''}"
            f"<tbody>{''.join(body)}</tbody></table>")


def missing(title: str, reason: str) -> str:
    return f'<p class="missing"><b>{html.escape(title)}</b>: not available — {html.escape(reason)}</p>'


# ------------------------------------------------------------------------------------------ the page
class Page:
    """The sections of one report, figures counted; a failing section becomes a one-line note."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.figures = 0

    def fig(self, figure) -> str:
        self.figures += 1
        return figure_div(figure_json(figure))

    def section(self, title: str, build: Callable[[], str], level: int = 2) -> None:
        try:
            body = build()
        except Missing as exc:
            body = missing(title, str(exc))
        except Exception as exc:  # noqa: BLE001 -- the page is written even when one section cannot be
            body = missing(title, f"{type(exc).__name__}: {exc}")
        self.parts.append(f"<h{level}>{html.escape(title)}</h{level}>\n{body}")


def kpi_block(s: Streams, note: str) -> str:
    kpis = s.kpis()
    rows = [[str(name)] + [_cell(kpis.loc[name].get(key), kind) for key, _, kind in KPI_COLUMNS] for name in kpis.index]
    classes = ["book" if name == s.book else "" for name in kpis.index]
    oos = s.returns[s.book].dropna()
    if oos.empty:
        raise Missing("no out-of-sample day")
    first, last = oos.index[[0, -1]]
    return (f'<p class="sub">Out of sample, {day(first)} → {day(last)} ({len(oos)} days, '
            f'{s.annualization} periods a year). {html.escape(note)}</p>'
            + table(["stream"] + [label for _, label, _ in KPI_COLUMNS], rows, classes)
            + f'<p class="note">{UNITS}</p>')


def relative_block(s: Streams) -> str:
    rows = []
    for bench in (s.market, s.equal):
        if bench:
            st = relative_stats(s.returns[s.book], s.returns[bench], s.annualization)
            rows.append([bench, pct(st["alpha"]), num(st["beta"]), num(st["information_ratio"]),
                         pct(st["tracking_error"]), num(st["correlation"]), f"{st['n_days']:,}"])
    if not rows:
        raise Missing("no benchmark stream")
    return (table(["vs benchmark", "alpha / year", "beta", "information ratio", "tracking error / year",
                   "correlation", "common days"], rows)
            + '<p class="note">beta = cov(r, m) / var(m); alpha = (mean r − beta · mean m) × periods a year; '
              "tracking error = std(r − m) annualized; information ratio = annualized mean(r − m) / tracking error.</p>")


def drawdowns_block(s: Streams) -> str:
    dd = drawdown_table(s.returns[s.book], 5)
    rows = [[str(i + 1), day(r.start), day(r.trough), "not recovered" if pd.isna(r.recovery) else day(r.recovery),
             pct(r.depth), f"{r.length} days"] for i, r in enumerate(dd.itertuples())]
    return (table(["#", "start", "trough", "recovery", "depth", "length"], rows)
            + '<p class="note">start: first day under the running peak; recovery: first day back at it; '
              "length: days under water.</p>")


def performance(page: Page, s: Streams) -> None:
    streams = [str(c) for c in s.returns.columns]
    palette = charts.colors(streams, s.book, s.market, s.equal)
    shown = s.returns[[c for c in (s.book, s.market, s.equal) if c]]
    page.section("Equity and drawdowns", lambda: page.fig(charts.equity_figure(s.returns, palette, s.book))
                 + page.fig(charts.underwater_figure(shown, palette, s.book)))
    page.section("Calendar returns", lambda: page.fig(charts.monthly_figure(s.returns[s.book], s.book))
                 + page.fig(charts.yearly_figure(shown, palette)))
    market = s.returns[s.market] if s.market else None
    page.section(f"Rolling {ROLLING_DAYS}-day volatility, Sharpe and beta", lambda: page.fig(
        charts.rolling_figure(s.returns[s.book], market, ROLLING_DAYS, s.annualization, palette)))
    page.section("Alpha, beta, information ratio, tracking error", lambda: relative_block(s))
    page.section("Return distribution", lambda: page.fig(charts.distribution_figure(shown, palette)))
    page.section("The five worst drawdowns", lambda: drawdowns_block(s))


def book_table(flat: pd.DataFrame, extra: list[str]) -> str:
    """The physical book, largest |net weight| first, sortable by any column."""
    flat = flat.reindex(flat["net_weight"].abs().sort_values(ascending=False).index)
    rows, keys = [], []
    for r in flat.itertuples():
        rows.append([r.symbol, "LONG" if r.net_weight >= 0 else "SHORT", pct(r.net_weight, 2), pct(r.gross_weight, 2),
                     *[str(getattr(r, c)) for c in extra]])
        keys.append([None, None, f"{r.net_weight:.10f}", f"{r.gross_weight:.10f}", *[None] * len(extra)])
    return f'<div class="scroll">{table(["symbol", "side", "net weight", "gross weight", *extra], rows, sortable=True, values=keys)}</div>'


def link(rel: str, text: str | None = None) -> str:
    return f'<a href="{html.escape(rel)}">{html.escape(text or rel)}</a>'


def sleeve_composition(page: Page, src: Source, s: Streams) -> None:
    """Each section reads its own artifact, so a missing one is that section's note, not a page that fails."""
    def book() -> pd.DataFrame:
        flat = src.read("flattened")
        return flat[flat["profile"].astype(str) == s.book]

    csv = registry.path("sleeve", "flattened_csv")
    page.parts.append("<h2>Composition</h2>")
    page.section("Weights treemap (physical names)", lambda: page.fig(charts.treemap_figure(
        book(), f"Physical book of {s.book}: LONG and SHORT names by |net weight|")), 3)
    cls = src.run.profile.sleeve.asset_class

    def exposure() -> str:
        frame = with_totals(exposure_by_decision(src.read("wf_holdings"), s.book, cls))
        return page.fig(charts.exposure_figure(frame, f"Exposure held from each rebalance ({s.book}): "
                                                      "asset class · venue · side"))

    def rebalances() -> str:
        turnover = src.read("wf_turnover")[s.book]
        at = turnover[turnover > 0]
        cost = src.read("wf_costs")[s.book].reindex(at.index) if src.has("wf_costs") else None
        return page.fig(charts.rebalance_figure(at, cost, f"Turnover and cost per rebalance ({s.book})"))

    page.section("Exposure over time", exposure, 3)
    page.section("Turnover and cost drag per rebalance", rebalances, 3)
    def physical() -> str:
        names = book()
        return (f'<p class="sub">{len(names)} names of {html.escape(s.book)} · CSV: {link(csv)}</p>'
                + book_table(names, []))

    page.section("Physical book", physical, 3)


def meta_sections(page: Page, src: Source, s: Streams) -> None:
    """The sleeves as assets and the flattened book; each section reads its own artifacts (a missing one is
    that section's note)."""
    oos = s.returns[s.book].dropna()

    def assets() -> str:
        joined = src.read("sleeve_returns").copy()
        joined.index = pd.DatetimeIndex(joined.index)
        on_oos = joined.reindex(oos.index)
        kpis = metrics_table(on_oos, s.annualization)
        weights = src.read("meta_weights")["weight"]
        links = {ref.id: f"sleeves/{ref.id}/{REPORT}" for ref in meta_sleeves(src)
                 if (src.run.dir / "sleeves" / ref.id / REPORT).is_file()}
        rows = [[str(sid), pct(weights.get(sid, float("nan"))), pct(k.cagr), pct(k.vol), num(k.sharpe),
                 pct(k.max_drawdown)] for sid, k in kpis.iterrows()]
        reports = " · ".join(link(rel, sid) for sid, rel in links.items())
        return (table(["sleeve", "weight now", "CAGR", "volatility", "Sharpe", "max drawdown"], rows)
                + f'<p class="note">Each sleeve on the meta\'s out-of-sample days (joined calendar). '
                  f"Sleeve reports: {reports or '—'}</p>")

    def contribution() -> str:
        held = held_weights(src.read("meta_weights_history"), oos.index)
        return page.fig(charts.contribution_figure(contributions(held, src.read("sleeve_returns").reindex(oos.index))))

    page.section("The sleeves as assets", assets)
    page.section("Sleeve weights over time", lambda: page.fig(charts.weights_history_figure(
        src.read("meta_weights_history"))), 3)
    page.section("Sleeve correlation", lambda: page.fig(charts.correlation_figure(src.read("sleeve_returns"))), 3)
    page.section("Sleeve contributions", contribution, 3)
    csv = registry.path("meta", "meta_flattened_csv")
    page.parts.append("<h2>Composition</h2>")
    page.section("Weights treemap (physical names)", lambda: page.fig(charts.treemap_figure(
        src.read("meta_flattened"), "The flattened book: LONG and SHORT names by |net weight|")), 3)
    page.section("Exposure over time", lambda: page.fig(charts.exposure_figure(
        with_totals(meta_exposure(src, pd.DatetimeIndex(oos.index))), "Exposure: asset class · venue · side "
        "(meta weight × each sleeve's holdings)")), 3)
    page.section("Turnover per rebalance", lambda: page.fig(charts.rebalance_figure(
        turnover_series(src.read("meta_weights_history")), None, "Turnover of the sleeve weights per rebalance"))
        + '<p class="note">Trading costs are charged inside each sleeve\'s returns; moving weight between '
          "sleeves is not charged.</p>", 3)

    def flattened() -> str:
        flat = src.read("meta_flattened")
        csv_note = link(csv) if (src.run.dir / csv).is_file() else f"{csv} not written by this run"
        return f'<p class="sub">{len(flat)} physical names · CSV: {csv_note}</p>' + book_table(flat, ["contributors"])

    page.section("Flattened book", flattened, 3)


def gates_block(src: Source) -> str:
    rows, classes = [], []
    items = [a for st in registry.stages(src.phase) for a in st.gates] + list(registry.COMMAND_ARTIFACTS.get(src.phase, ()))
    for gate in items:
        path = src.run.dir / gate.path
        if not path.is_file():
            rows.append([gate.name, "not run", gate.path, ""])
            classes.append("")
            continue
        doc = storage.read_json(path)
        ok = verdict(doc)
        if ok is None and isinstance(doc.get("passed"), bool):  # a gate file written before `gate` was recorded
            ok = doc["passed"]
        failed = [f"{c.get('code')}: {c.get('detail')}" for c in doc.get("checks", [])
                  if isinstance(c, dict) and c.get("passed") is False and c.get("required", True)]
        rows.append([gate.name, {True: "PASS", False: "FAIL"}.get(ok, "not checked"), gate.path, "; ".join(failed)[:400]])
        classes.append("" if ok is not False else "failrow")
    out = table(["gate", "verdict", "file", "failed checks"], rows, classes, text=True)
    return re.sub(r"<td>(PASS|FAIL)</td>", lambda m: f'<td class="{m.group(1).lower()}">{m.group(1)}</td>', out)


def provenance_block(run: Run) -> str:
    m = run.manifest
    data = m.get("data_run") or ", ".join(run.options.data_runs or []) or "—"
    rows = [["run id", m.get("run_id", "")], ["profile", f"{m.get('profile', '')} (extends "
            f"{' ← '.join(m.get('extends_chain', [])[1:]) or '—'})"], ["phase", m.get("phase", "")],
            ["status", run.status], ["data run", data], ["parent run", run.options.parent_run or "—"],
            ["git revision", m.get("git_revision", "")], ["created", when(m.get("created_at"))],
            ["finished", when(m.get("finished_at"))],
            ["versions", ", ".join(f"{k} {v}" for k, v in (m.get("versions") or {}).items()
                                   if k in ("python", "fractal-workbook", "pandas", "plotly"))]]
    return (table(["", ""], rows, text=True) + f'<p class="note">{link(INDEX)} (stages, notebooks, artifacts with sha256) · '
            f'{link("manifest.json")} · {link("profile.resolved.yaml")}</p>')


#: An absolute path still in the page after `scrub`'s roots: a "/" that no word, path, URL, base64 or tag
#: character precedes (html.escape has turned quotes into entities, so text paths follow a ";" or a space).
_ABSOLUTE = re.compile(r"(?<![\w+/=\"'<.:\\\x00-])/[\w.+@~%-]+(?:/[\w.+@~%-]+)*/?")


def _outside(path: str) -> str:
    """A path outside the run, the runs root and the workspace, as `…/<run id>/rest` from the outermost run
    folder on it (a pinned sleeve's run elsewhere), else `…/<file name>`."""
    parts = Path(path).parts
    for i in range(1, len(parts)):
        if (Path(*parts[:i + 1]) / MANIFEST).is_file():
            return "…/" + "/".join(parts[i:])
    return "…/" + (parts[-1] if len(parts) > 1 else "")


def scrub(text: str, run: Run) -> str:
    """No absolute path in the page (an HTML text): the run's own folder becomes relative (`.`), the runs
    root `<runs>`, the workspace `<workspace>` (each matched as a whole path component, so `/runs/R1` leaves
    `/runs/R10` alone), and any other absolute path is shortened by `_outside`."""
    roots = [(run.dir.resolve(), ""), (run.dir, ""), (run_static_root(run).resolve(), "\x00runs\x00"),
             (run_static_root(run), "\x00runs\x00"), (run.workspace.resolve(), "\x00workspace\x00"),
             (run.workspace, "\x00workspace\x00")]
    for root, to in sorted(roots, key=lambda r: -len(str(r[0]))):  # the deepest root first
        pattern = re.compile(re.escape(str(root)) + r"(/|(?=$|[^\w.-]))")
        text = pattern.sub(lambda m: (to + "/" if to else "") if m.group(1) else (to or "."), text)
    text = _ABSOLUTE.sub(lambda m: _outside(m.group(0)), text)
    return text.replace("\x00runs\x00", "&lt;runs&gt;").replace("\x00workspace\x00", "&lt;workspace&gt;")


def render(run: Run, page_path: Path) -> str:
    """The whole HTML page of `run` (phase sleeve or meta)."""
    phase = run.manifest.get("phase")
    if phase not in ("sleeve", "meta"):
        raise ValueError(f"report.html is written for sleeve and meta runs, not {phase!r}")
    src, page = Source(run, phase), Page()
    status = run.status
    color = {"PASS": "#1b7d2e", "FAIL": "#c62828"}.get(status, "#8a6d00")
    what = "meta portfolio" if phase == "meta" else "sleeve"
    head = (f"<h1>{html.escape(run.manifest.get('profile', ''))}: {what} report</h1>"
            f'<p class="sub"><span class="status" style="background:{color}">{html.escape(status)}</span> '
            f"run <code>{html.escape(run.id)}</code> · {link(INDEX)}</p>")
    if run.manifest.get("error"):
        head += f'<p class="missing"><b>FAIL:</b> {html.escape(str(run.manifest["error"]))}</p>'
    page.parts.append(head)
    streams: Streams | None = None
    try:
        streams = sleeve_streams(src) if phase == "sleeve" else meta_streams(src)
    except Exception as exc:  # noqa: BLE001 -- Missing, or an artifact unlike what the page expects
        reason = str(exc) if isinstance(exc, Missing) else f"{type(exc).__name__}: {exc}"
        page.parts.append(f"<h2>Key figures</h2>{missing('Out-of-sample performance', reason)}")
    if streams is not None:
        note = ("In-sample statistics are in the tearsheet (reports/), labelled as such." if phase == "sleeve" else
                "The meta stream is walk-forward: weights fitted on past sleeve returns only.")
        page.section("Key figures (out of sample)", lambda: kpi_block(streams, note))
        performance(page, streams)
        (sleeve_composition if phase == "sleeve" else meta_sections)(page, src, streams)
    page.section("Gates", lambda: gates_block(src))
    page.section("Provenance", lambda: provenance_block(run))
    title = f"{run.manifest.get('profile', '')} · {run.id}"
    text = (_HEAD.format(title=html.escape(title), plotly=plotly_script(page_path))
            + "\n".join(page.parts) + _TAIL)
    return scrub(text, run)


def write_report(run: Run) -> Path:
    """Write `<run>/report.html` atomically; returns its path."""
    target = run.dir / REPORT
    return storage.write_text(target, render(run, target))


def record_report(run: Run, say: Callable[[str], None] = print) -> Path | None:
    """Write `report.html` after a sleeve or meta phase and record its sha256 in the manifest (`report`);
    a report that cannot be built is said and recorded, never fails the run."""
    try:
        path = write_report(run)
    except Exception as exc:  # noqa: BLE001 -- the run's verdict stands without its page
        run.manifest["report"] = {"path": REPORT, "error": f"{type(exc).__name__}: {exc}"}
        say(f"report: not written ({type(exc).__name__}: {exc})")
        return None
    run.manifest["report"] = {"path": REPORT, "sha256": storage.sha256_file(path)}
    return path
