"""HTML pages of a run: shared plotly.js and stylesheets in the runs root's `_static/`, relative paths from
nested sleeve runs, and -- in headless chromium, from file:// URLs -- charts that actually draw, the same
as before their JSON was compacted, and a visible note when a run was moved without `_static/`.
"""
from __future__ import annotations

import json

import re
import shutil
from pathlib import Path

import nbformat
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
import pytest
from plotly.subplots import make_subplots

from conftest import dom, needs_chromium
from quantlib.core.figures import (PLOTLY_MIME, STATIC_DIR, figure_json, plotly_js_bytes, plotly_js_name,
                                   with_plotly_script, write_figure_html, write_figures_html)
from quantlib.core.profiles import load_profile
from quantlib.core.runs import Run, RunOptions
from quantlib.engine.html import export_notebook_html



def refs(page: str) -> list[str]:
    """Every script `src` and stylesheet `href` of a page."""
    return re.findall(r"<(?:script|link)\b[^>]*\b(?:src|href)=\"([^\"]+)\"", page)


def sleeve_run(root: Path) -> Run:
    """A sleeve run of a meta, where the meta phase puts it: `<root>/<META>/sleeves/<id>/`."""
    return Run.create(root / "meta-1" / "sleeves", load_profile("demo"), "sleeve", root, run_id="crypto_long",
                      options=RunOptions(runs_root=str(root), parent_run="meta-1", depth=1))


def chart_notebook(path: Path, name: str = "planted-bars") -> Path:
    """An executed-looking notebook with one figure, as `figures.show` displays it."""
    fig = go.Figure(go.Bar(x=["a", "b", "c"], y=[1, 3, 2], name=name))
    cell = nbformat.v4.new_code_cell("figures.show(fig)", execution_count=1)
    cell.outputs = [nbformat.v4.new_output("display_data", data={PLOTLY_MIME: figure_json(fig),
                                                                 "text/plain": "<plotly figure>"})]
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nbformat.v4.new_notebook(cells=[cell]), str(path))
    return path


def drew(html: str) -> bool:
    return "js-plotly-plot" in html and 'class="main-svg"' in html


def test_nested_sleeve_pages_load_the_runs_roots_shared_files(tmp_path):
    root = tmp_path / "runs"
    run = sleeve_run(root)
    notebook_page = export_notebook_html(chart_notebook(run.dir / "notebooks" / "01_chart.ipynb"))
    plot_page = write_figure_html(go.Figure(go.Scatter(x=[1, 2], y=[2, 1])), run.dir / "plots" / "x.html")
    for page in (notebook_page, plot_page):
        text = page.read_text(encoding="utf-8")
        assert refs(text), text[:500]
        for ref in refs(text):
            assert ref.startswith(f"../../../../{STATIC_DIR}/"), ref  # up: plots/, crypto_long, sleeves, meta-1
            assert (page.parent / ref).resolve().parent == (root / STATIC_DIR).resolve()
            assert (page.parent / ref).is_file()
    assert (root / STATIC_DIR / plotly_js_name()).read_bytes() == plotly_js_bytes()
    assert [p.relative_to(root) for p in root.rglob(STATIC_DIR)] == [Path(STATIC_DIR)]  # one copy only


def test_notebook_export_links_shared_stylesheets_instead_of_inlining_them(tmp_path):
    root = tmp_path / "runs"
    first = export_notebook_html(chart_notebook(root / "r1" / "notebooks" / "01_a.ipynb"), root)
    second = export_notebook_html(chart_notebook(root / "r2" / "notebooks" / "01_b.ipynb", "other"), root)
    head = first.read_text(encoding="utf-8").split("</head>")[0]
    assert "<style" not in head and len(first.read_text(encoding="utf-8")) < 60_000
    sheets = [r for r in refs(head) if r.endswith(".css")]
    css = "".join((first.parent / r).read_text(encoding="utf-8") for r in sheets)
    assert ".jp-Notebook" in css and "--jp-layout-color0" in css  # the lab template's CSS and theme
    assert [r for r in refs(second.read_text(encoding="utf-8")) if r.endswith(".css")] == sheets  # shared
    assert len(list((root / STATIC_DIR).glob("*.css"))) == len(sheets)


@needs_chromium
def test_exported_notebook_chart_draws_from_a_file_url(tmp_path):
    run = sleeve_run(tmp_path / "runs")
    page = export_notebook_html(chart_notebook(run.dir / "notebooks" / "01_chart.ipynb"))
    html = dom(page)
    assert drew(html), html[-3000:]
    assert "planted-bars" in html and 'id="fw-plotly-missing"' not in html


@needs_chromium
def test_a_run_moved_without_static_says_so_instead_of_drawing_blank(tmp_path):
    run = sleeve_run(tmp_path / "runs")
    export_notebook_html(chart_notebook(run.dir / "notebooks" / "01_chart.ipynb"))
    moved = tmp_path / "elsewhere" / "a" / "b" / "crypto_long"
    shutil.copytree(run.dir, moved)
    html = dom(moved / "notebooks" / "01_chart.html")
    note = re.search(r'<p id="fw-plotly-missing"[^>]*>([^<]*)</p>', html)
    assert not drew(html) and note and "Charts not drawn: plotly.js did not load from" in note.group(1), html[-3000:]
    shutil.copytree(tmp_path / "runs" / STATIC_DIR, tmp_path / "elsewhere" / STATIC_DIR)  # the documented fix
    assert drew(dom(moved / "notebooks" / "01_chart.html"))


def svg_signature(html: str) -> list[str]:
    """What a chart drew: every SVG path's geometry and style (colours), every raster (a heatmap's pixels)
    and every SVG text (axis ticks, legend, colorbar), in order."""
    svg = "".join(re.findall(r'<svg class="main-svg".*?</svg>', html, re.S))
    paths = [m.group(0) for m in re.finditer(r"<path\b[^>]*>", svg)]
    return ([" ".join(re.findall(r'\s(?:d|style)="([^"]*)"', path)) for path in paths]
            + re.findall(r'<image\b[^>]*href="([^"]+)"', svg) + re.findall(r"<text[^>]*>([^<]*)</text>", svg))


def dated_subplots() -> go.Figure:
    """Daily dates (become start + step), 10-day dates with a stack, weekday dates with gaps (stay a list)."""
    daily = pd.date_range("2026-01-01", periods=40, freq="D", tz="UTC")
    weekdays = pd.bdate_range("2026-01-01", periods=30, tz="UTC")
    fig = make_subplots(rows=2, cols=1, shared_xaxes=False)
    fig.add_trace(go.Scatter(x=daily, y=[1 + 0.01 * i for i in range(40)], name="daily equity"), row=1, col=1)
    fig.add_trace(go.Scatter(x=daily[::10], y=[0.2, 0.5, 0.1, 0.3], stackgroup="w", name="stacked"), row=1, col=1)
    fig.add_trace(go.Bar(x=weekdays, y=[(-1) ** i * i for i in range(30)], name="weekday bars"), row=2, col=1)
    return fig.update_layout(title="compaction check")


def colored() -> go.Figure:
    """A heatmap and value-coloured markers: the template's colorscales must stay."""
    fig = make_subplots(rows=1, cols=2)
    fig.add_trace(go.Heatmap(z=[[1, 0.2, -0.5], [0.2, 1, 0.1], [-0.5, 0.1, 1]], x=["a", "b", "c"], y=["a", "b", "c"]),
                  row=1, col=1)
    fig.add_trace(go.Scatter(x=[1, 2, 3], y=[3, 1, 2], mode="markers", marker={"color": [0.1, 0.5, 0.9], "size": 12}),
                  row=1, col=2)
    return fig


@needs_chromium
@pytest.mark.parametrize("make", [dated_subplots, colored, lambda: px.histogram(x=[0.1, 0.6, 0.6, 0.35, -0.2] * 5)])
def test_compacted_figures_draw_exactly_what_the_original_json_draws(tmp_path, make):
    import plotly.io as pio

    from quantlib.core.figures import readable_layout

    fig = make().update_layout(width=900, height=600)
    # the full JSON, as before, with the same room for the title and legend (figure_json applies it too)
    original = pio.to_html(readable_layout(json.loads(fig.to_json())), include_plotlyjs=False, full_html=True,
                           validate=False)
    pages = {"original": tmp_path / "original.html", "compact": tmp_path / "compact.html"}
    pages["original"].write_text(with_plotly_script(original, pages["original"]), encoding="utf-8")
    write_figure_html(fig, pages["compact"])
    assert len(pages["compact"].read_bytes()) < 0.8 * len(pages["original"].read_bytes())
    drawn = {name: svg_signature(dom(page)) for name, page in pages.items()}
    assert len(drawn["original"]) > 10, drawn  # something was drawn
    assert drawn["compact"] == drawn["original"]
    if make is dated_subplots:
        assert "Jan 11" in " ".join(drawn["original"])  # on date axes


@needs_chromium
def test_tearsheet_page_with_several_figures_draws_each(tmp_path):
    figs = [go.Figure(go.Bar(x=["a", "b"], y=[1, 2])), go.Figure(go.Scatter(x=[1, 2, 3], y=[3, 1, 2]))]
    page = write_figures_html(figs, tmp_path / "reports" / "tearsheet_x.html", "sleeve <x> · profile")
    text = page.read_text(encoding="utf-8")
    assert "<title>sleeve &lt;x&gt; · profile</title>" in text and len(text) < 100_000
    assert dom(page).count('class="main-svg"') >= 2 * len(figs)  # plotly draws 2 svg layers per chart
