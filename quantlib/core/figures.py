"""Display helpers shared by the stage notebooks: plotly figures that render offline everywhere.

plotly.js (4.8 MB) is written once per runs root, as `<runs root>/_static/plotly-<plotly.js version>.min.js`,
and every HTML page (notebook exports, standalone plot files, tearsheets) loads it with a `<script src>`
relative to the page -- no CDN, and no copy per page. The runs root of a page is that of the run holding
it (`run_static_root`: a meta's sleeve runs under `<META>/sleeves/<id>/` share the top folder's
`_static/`); a page outside any run gets a `_static/` in its own folder. A page whose `_static/` is not
where the path points (a run directory moved alone) says so in a red note instead of drawing.
The executed notebooks hold each figure once, as compact plotly JSON (`show`, `compact_figure`).
"""
from __future__ import annotations

import json
import os
import re
import secrets
from datetime import datetime, timezone
from functools import lru_cache
from html import escape as html_escape
from pathlib import Path
from urllib.parse import quote

from quantlib.core import storage
from quantlib.core.errors import WorkbookError
from quantlib.core.runs import MANIFEST, Run

STATIC_DIR = "_static"
"""The folder of a runs root holding the files its HTML pages share (plotly.js, the notebook CSS)."""
PLOTLY_MIME = "application/vnd.plotly.v1+json"

_MISSING_NOTE = """<script type="text/javascript">window.Plotly || document.addEventListener("DOMContentLoaded", function () {
  var note = document.createElement("p");
  note.id = "fw-plotly-missing";
  note.style.cssText = "background:#fdd;border:1px solid #b00;padding:8px;font:14px sans-serif";
  note.textContent = "Charts not drawn: plotly.js did not load from " + __SRC__ + " (relative to this page). "
    + "Keep the run inside its runs folder next to _static/, or copy that folder's _static/ to the same place.";
  document.body.insertBefore(note, document.body.firstChild);
});</script>"""
"""Shown (instead of blank charts) when the shared plotly.js is not where the page expects it."""


@lru_cache(maxsize=1)
def plotly_js_bytes() -> bytes:
    """The plotly.js bundle shipped inside the plotly package (never a CDN)."""
    import plotly

    return (Path(plotly.__file__).parent / "package_data" / "plotly.min.js").read_bytes()


def plotly_js() -> str:
    """The plotly.js bundle as text."""
    return plotly_js_bytes().decode("utf-8")


@lru_cache(maxsize=1)
def plotly_js_name() -> str:
    """`plotly-<plotly.js version>.min.js`: a new plotly release gets a new file, old pages keep theirs."""
    from plotly.offline import get_plotlyjs_version

    return f"plotly-{get_plotlyjs_version()}.min.js"


# ----------------------------------------------------------------------------------------------
# the shared folder of a runs root
# ----------------------------------------------------------------------------------------------
def shared_file(static_root: str | Path, name: str, data: bytes) -> Path:
    """`<static_root>/_static/<name>` holding `data`, written (atomically) only if absent or different.

    Parallel writers (a meta's sleeves) write identical bytes, and each write is one rename."""
    target = Path(static_root) / STATIC_DIR / name
    try:
        same = target.stat().st_size == len(data) and target.read_bytes() == data
    except OSError:
        same = False
    if not same:
        storage.write_bytes(target, data)
    return target


def shared_plotly_js(static_root: str | Path) -> Path:
    """`<static_root>/_static/plotly-<version>.min.js` (see `shared_file`)."""
    return shared_file(static_root, plotly_js_name(), plotly_js_bytes())


def run_static_root(run: Run) -> Path:
    """The runs root of `run` found from where its directory is now (a sleeve of depth d sits 2d levels
    below it, `<root>/<META>/sleeves/<id>/`), so the pages of a runs folder moved as a whole still point
    inside it; it is `run.runs_root` as long as nothing moved."""
    parents = run.dir.resolve().parents
    depth = run.options.depth
    return parents[2 * depth] if 2 * depth < len(parents) else run.runs_root


def static_root_for(page: str | Path) -> Path:
    """The runs root whose `_static/` an HTML file at `page` uses: that of the run holding it
    (`run_static_root`; the top folder for a meta's sleeve runs), else the page's own folder."""
    folder = Path(page).resolve().parent
    for candidate in (folder, *list(folder.parents)[:2]):  # a run's pages sit at most two levels down
        if (candidate / MANIFEST).is_file():
            try:
                return run_static_root(Run.at(candidate))
            except (WorkbookError, ValueError):  # an unreadable manifest: the folder above the run
                return candidate.parent
    return folder


def relative_src(page: str | Path, target: str | Path) -> str:
    """`target` as a URL relative to the folder of `page` (what a `src`/`href` in `page` needs)."""
    return quote(Path(os.path.relpath(Path(target).resolve(), Path(page).resolve().parent)).as_posix())


def plotly_script(page: str | Path, static_root: str | Path | None = None) -> str:
    """The `<head>` tags that load the shared plotly.js by a path relative to `page` (written first if
    needed; `static_root` None: `static_root_for(page)`), plus the note shown if it does not load."""
    bundle = shared_plotly_js(static_root_for(page) if static_root is None else static_root)
    src = relative_src(page, bundle)
    return (f'<script type="text/javascript" charset="utf-8" src="{src}"></script>\n'
            + _MISSING_NOTE.replace("__SRC__", json.dumps(src)))


def with_plotly_script(html: str, page: str | Path, static_root: str | Path | None = None) -> str:
    """`html` with `plotly_script` inserted before its `</head>`."""
    if "</head>" not in html:
        raise ValueError(f"{page}: HTML without </head>, cannot load plotly.js")
    return html.replace("</head>", plotly_script(page, static_root) + "\n</head>", 1)


# ----------------------------------------------------------------------------------------------
# figures: compact JSON, notebook display, standalone pages
# ----------------------------------------------------------------------------------------------
_UTC_DATETIME = re.compile(r"^(\d{4}-\d{2}-\d{2})(?:[T ](\d{2}:\d{2}:\d{2}(?:\.\d+)?))?(?:Z|[+-]00:?00)?$")
_MIDNIGHT = re.compile(r"^00:00:00(?:\.0+)?$")


def _short_date(text: str) -> str | None:
    """An ISO date-time in UTC as plotly.js reads it, shortest form (None: not one)."""
    match = _UTC_DATETIME.match(text)
    if not match:
        return None
    day, clock = match.groups()
    return day if clock is None or _MIDNIGHT.match(clock) else f"{day} {clock}"


_SUBPLOT_TRACES = {
    "scene": {"scatter3d", "surface", "mesh3d", "cone", "streamtube", "volume", "isosurface"},
    "ternary": {"scatterternary"}, "polar": {"scatterpolar", "scatterpolargl", "barpolar"},
    "geo": {"scattergeo", "choropleth"}, "smith": {"scattersmith"},
    "mapbox": {"scattermapbox", "choroplethmapbox", "densitymapbox"},
    "map": {"scattermap", "choroplethmap", "densitymap"},
}
"""Template layout keys that style one kind of subplot, and the trace types drawn on it."""
_STEPPED_TYPES = ("scatter", "scattergl", "bar")
"""Trace types whose coordinates plotly.js can build from a start and a step (`x0`/`dx`, `y0`/`dy`)."""


def _ms(day: str) -> int:
    """Milliseconds since the epoch of a `_short_date` string (plotly.js's unit for a date step)."""
    stamp = datetime.fromisoformat(day).replace(tzinfo=timezone.utc)
    return int(stamp.timestamp() * 1000)


def compact_figure(doc: dict) -> dict:
    """A figure's JSON made smaller without changing what plotly.js draws (in place; returned).

    - UTC date-times become the shortest string plotly.js reads as the same instant (plotly.js ignores
      time zones): `2026-03-29T00:00:00+00:00` -> `2026-03-29`;
    - evenly spaced dates of a scatter or bar trace become a start and a step (`x0` + `dx` in ms, on an
      axis typed `date`), e.g. a daily equity curve;
    - the template keeps the per-trace-type defaults of the trace types the figure has (plotly.py
      embeds all ~25 of them in every figure) and the styling of the subplot kinds it has (3D scenes,
      polar, ternary, geo and map styling go when the figure has none), and its default colorscales
      only if something in the figure can map values to colors."""
    traces = doc.get("data") or []
    layout = doc.setdefault("layout", {})
    for trace in traces:
        for key in ("x", "y", "base"):
            values = trace.get(key)
            if not (isinstance(values, list) and values and all(isinstance(v, str) for v in values)):
                continue
            short = [_short_date(v) for v in values]
            if any(s is None for s in short):
                continue
            trace[key] = short
            axis = f"{key}axis{str(trace.get(f'{key}axis', key))[1:]}"
            if (key != "base" and len(short) > 2 and trace.get("type", "scatter") in _STEPPED_TYPES
                    and not any("." in day for day in short)  # whole seconds: a step in ms is exact
                    and (layout.get(axis) or {}).get("type") in (None, "date")):
                ms = [_ms(day) for day in short]
                steps = {b - a for a, b in zip(ms, ms[1:])}
                if len(steps) == 1 and min(steps) > 0:
                    del trace[key]
                    trace[f"{key}0"], trace[f"d{key}"] = short[0], steps.pop()
                    layout.setdefault(axis, {})["type"] = "date"
    template = layout.get("template")
    used = {t.get("type", "scatter") for t in traces}
    if isinstance(template, dict) and isinstance(template.get("data"), dict):
        template["data"] = {k: v for k, v in template["data"].items() if k in used}
    if isinstance(template, dict) and isinstance(template.get("layout"), dict):
        for subplot, kinds in _SUBPLOT_TRACES.items():  # the styling of subplot kinds the figure lacks
            if not used & kinds and not any(k.startswith(subplot) for k in layout):
                template["layout"].pop(subplot, None)
        if not _maps_values_to_colors(traces, layout):
            template["layout"].pop("colorscale", None)
            template["layout"].pop("coloraxis", None)
    return doc


def _maps_values_to_colors(traces: list, layout: dict) -> bool:
    """Whether a colorscale may be drawn: a color axis, a trace with `z`, a colorscale or a color axis of
    its own, or a marker/line whose colors are an array (which may be numbers)."""
    if any(k.startswith("coloraxis") for k in layout):
        return True
    for trace in traces:
        if {"z", "colorscale", "coloraxis"} & set(trace):
            return True
        for part in (trace.get("marker"), trace.get("line"), (trace.get("marker") or {}).get("line")):
            if isinstance(part, dict) and ({"colorscale", "coloraxis"} & set(part)
                                           or isinstance(part.get("color"), (list, dict))):
                return True
    return False


def figure_json(fig) -> dict:
    """The compact JSON of a plotly figure (numpy arrays as plotly's base64 typed arrays), its title and
    legend given room (`readable_layout`)."""
    return compact_figure(readable_layout(json.loads(fig.to_json())))


# ----------------------------------------------------------------------------------------------
# layouts that can be read: titles that fit, legends without a scrollbar
# ----------------------------------------------------------------------------------------------
DEFAULT_WIDTH, DEFAULT_HEIGHT = 900, 450
"""What a figure without width / height is assumed to get (JupyterLab's output area, plotly's default)."""
TITLE_CHAR_PX, TITLE_LINE_PX, LEGEND_ROW_PX = 8.5, 24, 20
_NO_LEGEND_TYPES = {"heatmap", "histogram2d", "contour", "surface", "histogram2dcontour", "table", "indicator"}


def wrap_title(text: str, chars: int) -> str:
    """`text` broken with `<br>` at spaces so that no line is longer than `chars` (existing `<br>` kept;
    a line holding HTML tags, e.g. a `<sup>` subtitle, is left whole)."""
    import textwrap

    lines = []
    for part in re.split(r"<br\s*/?>", text):
        lines.extend([part] if "<" in part or len(part) <= chars
                     else textwrap.wrap(part, max(chars, 10), break_long_words=False) or [part])
    return "<br>".join(lines)


def _legend_entries(doc: dict) -> list[str]:
    """Names of the traces the legend shows (plotly shows a legend only for 2+ entries unless asked)."""
    traces = [t for t in doc.get("data") or [] if t.get("type", "scatter") not in _NO_LEGEND_TYPES
              and t.get("showlegend", True) is not False]
    if len(traces) < 2 and (doc.get("layout") or {}).get("showlegend") is not True:
        return []
    return [str(t.get("name") or "") for t in traces]


def readable_layout(doc: dict) -> dict:
    """A figure's JSON laid out so its title and legend can be read (in place; returned).

    - the title is wrapped to the figure's width (`layout.width`, else DEFAULT_WIDTH) and the top
      margin grows by a line per title line: no title clipped at the right edge;
    - a legend taller than the plot (more entries than fit at LEGEND_ROW_PX each) moves below the plot
      in rows, and the figure grows by those rows: no legend behind a scrollbar."""
    layout = doc.setdefault("layout", {})
    width = float(layout.get("width") or DEFAULT_WIDTH)
    height = float(layout.get("height") or DEFAULT_HEIGHT)
    margin = layout.setdefault("margin", {})
    text = figure_title(doc)
    if text:
        wrapped = wrap_title(text, int((width - 60) / TITLE_CHAR_PX))
        title = layout["title"] if isinstance(layout.get("title"), dict) else {}
        layout["title"] = {**title, "text": wrapped}
        lines = wrapped.count("<br>") + 1
        margin["t"] = max(int(margin.get("t") or 0), 30 + TITLE_LINE_PX * lines)
    entries = _legend_entries(doc)
    legend = layout.get("legend") or {}
    usable = height - float(margin.get("t") or 100) - float(margin.get("b") or 80)
    if entries and legend.get("orientation") != "h" and len(entries) * LEGEND_ROW_PX > usable:
        longest = max(len(e) for e in entries) * 7 + 40  # px per entry: label + symbol
        per_row = max(1, int((width - 80) // longest))
        rows = -(-len(entries) // per_row)
        layout["legend"] = {**legend, "orientation": "h", "yanchor": "top", "y": -0.12, "x": 0, "xanchor": "left"}
        layout["height"] = int(height + rows * LEGEND_ROW_PX + 40)
        margin["b"] = max(int(margin.get("b") or 0), rows * LEGEND_ROW_PX + 60)
    return doc


def figure_div(doc: dict, full_html: bool = False) -> str:
    """An HTML `<div>` (or, `full_html`, a page) drawing a figure's JSON with the page's plotly.js
    (not included)."""
    import plotly.io as pio

    return pio.to_html(doc, include_plotlyjs=False, full_html=full_html, validate=False)


def figure_title(doc: dict) -> str:
    """The figure's title text ('' if it has none)."""
    title = (doc.get("layout") or {}).get("title")
    return str(title.get("text") or "") if isinstance(title, dict) else str(title or "")


def show(fig) -> None:
    """Display a figure as a plotly mime bundle (compact JSON), drawn by JupyterLab's plotly renderer.

    The executed notebook holds the figure once (no HTML copy, no plotly.js); the HTML export draws it
    from that JSON (`quantlib.engine.html`) with the runs root's shared plotly.js."""
    from IPython.display import display

    doc = figure_json(fig)
    display({PLOTLY_MIME: doc, "text/plain": f"<plotly figure: {figure_title(doc) or 'untitled'}>"}, raw=True)


def notebook_json(notebook: str | Path) -> dict | None:
    """An executed notebook's JSON, or None when it cannot be read (e.g. a kernel died mid-write: the file is
    left as it is for the error report)."""
    try:
        return json.loads(Path(notebook).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def compact_notebook_figures(notebook: str | Path, doc: dict | None = None) -> int:
    """Rewrite an executed notebook with each plotly figure's JSON on one line (nbformat's indented
    layout spends a line per array element); the rest keeps nbformat's layout. Returns the figures
    rewritten (0: the file is left as it is). The result is the same notebook for every JSON reader.
    `doc`: the file's JSON when the caller has read it already (it is changed here)."""
    path = Path(notebook)
    doc = notebook_json(path) if doc is None else doc
    if doc is None:
        return 0
    raw: dict[str, str] = {}
    nonce = secrets.token_hex(8)
    for cell in doc.get("cells", []):
        for output in cell.get("outputs", []):
            data = output.get("data")
            if isinstance(data, dict) and isinstance(data.get(PLOTLY_MIME), dict):
                token = f"fw-figure-{nonce}-{len(raw)}"
                raw[json.dumps(token)] = json.dumps(data[PLOTLY_MIME], ensure_ascii=False, separators=(",", ":"),
                                                    sort_keys=True)
                data[PLOTLY_MIME] = token
    if not raw:
        return 0
    text = json.dumps(doc, indent=1, ensure_ascii=False, sort_keys=True)  # nbformat's own layout
    for token, value in raw.items():
        text = text.replace(token, value, 1)
    try:
        storage.write_text(path, text + "\n")
    except OSError:  # e.g. a full disk: the notebook stays as papermill wrote it (atomic write)
        return 0
    return len(raw)


def write_figure_html(fig, path: str | Path, static_root: str | Path | None = None) -> Path:
    """A standalone HTML page drawing `fig` with the shared plotly.js (`plotly_script`; works offline)."""
    page = figure_div(figure_json(fig), full_html=True)
    return storage.write_text(path, with_plotly_script(page, path, static_root))


FILTER_LABEL_CHARS = 32
"""A filter's text longer than this is shortened on an axis (`short_label`); hover shows all of it."""


def short_label(text: str, chars: int = FILTER_LABEL_CHARS) -> str:
    """`text` cut to `chars` characters, an ellipsis marking the cut."""
    text = str(text)
    return text if len(text) <= chars else text[:chars - 1].rstrip() + "…"


def filter_order(funnel) -> list[str]:
    """The filters of a funnel (columns scanner, step, filter, remaining) in pipeline order, each once:
    scanners are merged in name order; a filter not seen yet goes just before the next of its scanner's
    filters already placed (at the end if none), so each scanner's own order is kept."""
    order: list[str] = []
    for _, rows in funnel.sort_values(["scanner", "step"], kind="stable").groupby("scanner", sort=True):
        names = list(dict.fromkeys(rows["filter"].astype(str)))
        for i, name in enumerate(names):
            if name in order:
                continue
            later = next((n for n in names[i + 1:] if n in order), None)
            order.insert(order.index(later) if later is not None else len(order), name)
    return order


def funnel_table(funnel):
    """Candidates remaining after each filter: one row per filter (named, pipeline order), one integer
    column per scanner (<NA> where a scanner does not have that filter)."""
    import pandas as pd

    if funnel.empty:
        return pd.DataFrame(index=pd.Index([], name="filter"))
    table = funnel.assign(filter=funnel["filter"].astype(str)).pivot_table(
        index="filter", columns="scanner", values="remaining", aggfunc="last")
    table = table.reindex(filter_order(funnel)).round().astype("Int64")
    table.columns.name = None
    table.index = pd.Index([short_label(f, 60) for f in table.index], name="filter")
    return table


def funnel_figure(funnel):
    """Candidates remaining after each filter, one line per scanner; the x axis names the filters."""
    import plotly.graph_objects as go

    order = filter_order(funnel)
    labels = {name: short_label(name) for name in order}
    if len(set(labels.values())) < len(labels):  # two filters cut to the same text: number them
        labels = {name: f"{i + 1}. {short_label(name, FILTER_LABEL_CHARS - 4)}" for i, name in enumerate(order)}
    fig = go.Figure()
    for scanner, rows in funnel.sort_values(["scanner", "step"], kind="stable").groupby("scanner", sort=True):
        names = rows["filter"].astype(str).tolist()
        fig.add_trace(go.Scatter(
            x=[labels[n] for n in names], y=rows["remaining"].round().astype(int).tolist(), name=str(scanner),
            mode="lines+markers", customdata=names,
            hovertemplate=f"{scanner}<br>%{{customdata}}<br>%{{y:d}} remaining<extra></extra>"))
    fig.update_xaxes(type="category", categoryorder="array", categoryarray=[labels[n] for n in order],
                     tickangle=-35, automargin=True, title_text="filter (in pipeline order)")
    fig.update_yaxes(tickformat="d", rangemode="tozero", title_text="candidates remaining")
    return fig.update_layout(height=460, legend_title_text="scanner",
                             title="Scanner funnels: candidates remaining after each filter")


def status_figure(table, column: str = "status", title: str = "Ingestion outcome per symbol"):
    """Bar chart of counts per status."""
    import plotly.express as px

    counts = table[column].value_counts().rename_axis(column).reset_index(name="symbols")
    return px.bar(counts, x=column, y="symbols", title=title).update_layout(height=320)


def ratings_figure(snapshot):
    """Histogram of the latest recommend_all / recommend_ma / recommend_other."""
    import plotly.express as px

    long = snapshot.melt(id_vars="symbol", value_vars=["recommend_all", "recommend_ma", "recommend_other"],
                         var_name="rating", value_name="value")
    fig = px.histogram(long, x="value", color="rating", barmode="overlay", nbins=40,
                       title="Technical ratings: latest snapshot")
    return fig.update_layout(height=360)


def write_figures_html(figures: list, path: str | Path, title: str, static_root: str | Path | None = None) -> Path:
    """One standalone HTML page holding several figures, loading the shared plotly.js (works offline)."""
    divs = [figure_div(figure_json(fig)) for fig in figures]
    title = html_escape(title)
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{title}</title></head>"
            f"<body><h1>{title}</h1>{''.join(divs)}</body></html>")
    return storage.write_text(path, with_plotly_script(page, path, static_root))


def selection_funnel_figure(audit: dict):
    """Candidates remaining after each step of the HTR funnel."""
    import plotly.express as px

    funnel = audit.get("funnel", [])
    steps = [str(s["step"]).replace("_", " ") for s in funnel]
    fig = px.funnel(x=[int(round(s["remaining"])) for s in funnel], y=steps,
                    title=f"HTR funnel (stage reached: {audit.get('stage_reached')})")
    fig.update_traces(texttemplate="%{x:d}", hovertemplate="%{y}<br>%{x:d} remaining<extra></extra>")
    return fig.update_layout(height=max(300, 120 + 40 * len(steps)), yaxis_title=None)


def antifragility_figure(stats):
    """Antifragility score per atom, coloured by skew."""
    import plotly.express as px

    frame = stats.reset_index().sort_values("antifragility", ascending=False)
    fig = px.bar(frame, x=frame.columns[0], y="antifragility", color="skew", title="Antifragility per atom (training window)")
    return fig.update_layout(height=360, xaxis_tickangle=-45)


def weights_by_profile_figure(weights):
    """Atom weights of every risk profile side by side."""
    import plotly.express as px

    fig = px.bar(weights, x="atom_id", y="weight", color="profile", barmode="group",
                 title="Optimizer weights per risk profile (synthetic-long atoms)")
    return fig.update_layout(height=420, xaxis_tickangle=-45)


# ----------------------------------------------------------------------------------------------
# tables that fit the page
# ----------------------------------------------------------------------------------------------
def compact_table(frame, millions_from: float = 1e5):
    """`frame` made narrow enough for the page, nothing recomputed: columns with one value on every row
    are taken out (returned as {column: value}, to print above the table), floats keep 4 significant
    digits and a column whose values reach `millions_from` is shown in millions (`value_traded (M)`).
    Returns (a pandas Styler without the index, the constant columns)."""
    import numpy as np
    import pandas as pd

    constant = {c: frame[c].iloc[0] for c in frame.columns
                if len(frame) > 1 and frame[c].nunique(dropna=False) == 1}
    table = frame.drop(columns=list(constant))
    formats = {}
    for column in table.columns:
        values = table[column]
        if pd.api.types.is_float_dtype(values):
            big = np.nanmax(np.abs(values.to_numpy(dtype=float))) if values.notna().any() else 0.0
            if big >= millions_from:
                table = table.assign(**{column: values / 1e6}).rename(columns={column: f"{column} (M)"})
                formats[f"{column} (M)"] = "{:,.1f}"
            else:
                formats[column] = "{:.4g}"
    styler = table.style.format(formats, na_rep="").hide(axis="index")
    return styler, constant


def show_table(frame, note: str = "") -> None:
    """Display `compact_table(frame)`: a line naming the columns equal on every row, then the table."""
    from IPython.display import Markdown, display

    styler, constant = compact_table(frame)
    same = ", ".join(f"{c} = `{v}`" for c, v in constant.items())
    text = " · ".join(t for t in (note, f"same on every row: {same}" if same else "") if t)
    if text:
        display(Markdown(text))
    display(styler)
