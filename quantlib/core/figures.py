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
    """The compact JSON of a plotly figure (numpy arrays as plotly's base64 typed arrays)."""
    return compact_figure(json.loads(fig.to_json()))


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


def compact_notebook_figures(notebook: str | Path) -> int:
    """Rewrite an executed notebook with each plotly figure's JSON on one line (nbformat's indented
    layout spends a line per array element); the rest keeps nbformat's layout. Returns the figures
    rewritten (0: the file is left as it is). The result is the same notebook for every JSON reader."""
    path = Path(notebook)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # unreadable (e.g. a kernel died mid-write): left for the error report
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


def funnel_figure(funnel):
    """Remaining candidates after each filter, one line per scanner."""
    import plotly.express as px

    fig = px.line(funnel, x="step", y="remaining", color="scanner", markers=True, hover_data=["filter"],
                  title="Scanner funnels: candidates remaining after each step")
    return fig.update_layout(height=380)


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
    fig = px.funnel(x=[s["remaining"] for s in funnel], y=[s["step"] for s in funnel],
                    title=f"HTR funnel (stage reached: {audit.get('stage_reached')})")
    return fig.update_layout(height=360)


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
