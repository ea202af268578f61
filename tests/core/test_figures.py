"""`quantlib.core.figures`: the runs root's shared plotly.js, where a page finds it, and compact figure JSON.

What the compaction draws is compared with the original figure in headless chromium by
`tests/engine/test_html.py`; here: the JSON itself.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import nbformat
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from quantlib.core import figures
from quantlib.core.figures import (PLOTLY_MIME, STATIC_DIR, compact_figure, compact_notebook_figures, figure_json,
                                   plotly_js_bytes, plotly_js_name, shared_plotly_js, static_root_for)
from quantlib.core.profiles import load_profile
from quantlib.core.runs import Run, RunOptions


# ---------------------------------------------------------------------------------------------- shared file
def test_shared_plotly_js_is_written_once_and_repaired_if_different(tmp_path):
    path = shared_plotly_js(tmp_path)
    assert path == tmp_path / STATIC_DIR / plotly_js_name() and path.read_bytes() == plotly_js_bytes()
    assert plotly_js_name().startswith("plotly-") and plotly_js_name().endswith(".min.js")
    stamp = path.stat().st_mtime_ns
    os.utime(path, ns=(stamp - 10**9, stamp - 10**9))  # an older mtime: a rewrite would change it
    assert shared_plotly_js(tmp_path) == path and path.stat().st_mtime_ns == stamp - 10**9  # not rewritten

    path.write_bytes(plotly_js_bytes()[:1000])  # truncated (e.g. a copy cut short)
    assert shared_plotly_js(tmp_path).read_bytes() == plotly_js_bytes()
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temp file left behind


def make_run(runs_dir: Path, run_id: str, **options) -> Run:
    return Run.create(runs_dir, load_profile("demo"), "sleeve", runs_dir, run_id=run_id,
                      options=RunOptions(**options))


def test_static_root_of_top_level_nested_and_outside_pages(tmp_path):
    root = tmp_path / "runs"
    top = make_run(root, "top")
    sleeve = make_run(root / "meta-1" / "sleeves", "crypto", runs_root=str(root), parent_run="meta-1", depth=1)
    nested = make_run(root / "meta-1" / "sleeves" / "inner" / "sleeves", "eq", runs_root=str(root), depth=2)
    assert static_root_for(top.dir / "notebooks" / "01_a.html") == root.resolve()
    assert static_root_for(sleeve.dir / "plots" / "drift.html") == root.resolve()
    assert static_root_for(nested.dir / "notebooks" / "01_a.html") == root.resolve()
    assert static_root_for(tmp_path / "loose" / "page.html") == (tmp_path / "loose").resolve()


def test_static_root_follows_a_runs_folder_moved_as_a_whole(tmp_path):
    root = tmp_path / "runs"
    make_run(root / "meta-1" / "sleeves", "crypto", runs_root=str(root), depth=1)
    moved = tmp_path / "archive" / "runs"
    moved.parent.mkdir()
    root.rename(moved)  # the recorded runs_root is now stale
    page = moved / "meta-1" / "sleeves" / "crypto" / "plots" / "x.html"
    assert static_root_for(page) == moved.resolve()
    assert not root.exists()


def test_plotly_script_is_relative_to_the_page(tmp_path):
    root = tmp_path / "runs"
    sleeve = make_run(root / "meta-1" / "sleeves", "crypto", runs_root=str(root), depth=1)
    tag = figures.plotly_script(sleeve.dir / "plots" / "drift.html")
    assert f'src="../../../../{STATIC_DIR}/{plotly_js_name()}"' in tag
    assert (root / STATIC_DIR / plotly_js_name()).is_file()
    assert "Charts not drawn" in tag  # the note a page shows when the file is not there


# ---------------------------------------------------------------------------------------------- compact JSON
def test_dates_shorten_and_even_steps_become_a_start_and_a_step():
    daily = pd.date_range("2026-01-01", periods=6, freq="D", tz="UTC")
    weekdays = pd.bdate_range("2026-01-01", periods=6, tz="UTC")
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True)
    fig.add_trace(go.Scatter(x=daily, y=[1, 2, 3, 4, 5, 6], name="even"), row=1, col=1)
    fig.add_trace(go.Bar(x=weekdays, y=[1, 2, 3, 4, 5, 6], name="uneven"), row=2, col=1)
    fig.add_trace(go.Scatter(x=["a", "b", "c"], y=[1, 2, 3], name="categories"), row=2, col=1)
    doc = figure_json(fig)
    even, uneven, categories = doc["data"]
    assert "x" not in even and even["x0"] == "2026-01-01" and even["dx"] == 86_400_000
    assert doc["layout"]["xaxis"]["type"] == "date"
    assert uneven["x"] == [d.strftime("%Y-%m-%d") for d in weekdays]  # weekend gaps: a list, shortened
    assert categories["x"] == ["a", "b", "c"]


def test_intraday_times_keep_their_clock_and_foreign_offsets_are_untouched():
    doc = {"data": [{"type": "scatter", "x": ["2026-01-01T09:30:00+00:00", "2026-01-01T10:00:00+00:00"]},
                    {"type": "scatter", "x": ["2026-01-01T09:30:00+02:00", "2026-01-01T10:00:00+02:00"]}],
           "layout": {}}
    doc["data"].append({"type": "scatter", "x": [f"2026-01-01T09:30:0{i}.25+00:00" for i in range(4)]})
    compact_figure(doc)
    assert doc["data"][0]["x"] == ["2026-01-01 09:30:00", "2026-01-01 10:00:00"]
    assert doc["data"][2]["x"] == [f"2026-01-01 09:30:0{i}.25" for i in range(4)]  # fractions: never a step
    assert doc["data"][1]["x"] == ["2026-01-01T09:30:00+02:00", "2026-01-01T10:00:00+02:00"]


def test_template_keeps_only_what_the_figure_uses():
    full = json.loads(go.Figure(go.Bar(x=[1], y=[1])).to_json())["layout"]["template"]
    assert {"heatmap", "scatter3d"} <= set(full["data"]) and "scene" in full["layout"]
    doc = figure_json(go.Figure([go.Bar(x=[1], y=[1]), go.Scatter(x=[1], y=[2])]))
    template = doc["layout"]["template"]
    assert set(template["data"]) == {"bar", "scatter"}
    assert not {"scene", "polar", "ternary", "geo"} & set(template["layout"])
    assert template["layout"]["colorway"] == full["layout"]["colorway"]  # the look of a 2D figure stays
    polar = figure_json(go.Figure(go.Scatterpolar(r=[1, 2], theta=[0, 90])))["layout"]["template"]["layout"]
    assert "polar" in polar and "scene" not in polar


def test_compact_notebook_figures_is_the_same_notebook_with_one_line_per_figure(tmp_path):
    fig = go.Figure(go.Scatter(x=list(range(300)), y=[float(i) ** 0.5 for i in range(300)], name="planted"))
    cell = nbformat.v4.new_code_cell("figures.show(fig)", execution_count=1)
    cell.outputs = [nbformat.v4.new_output("display_data", data={PLOTLY_MIME: json.loads(fig.to_json()),
                                                                 "text/plain": "<plotly figure>"})]
    path = tmp_path / "nb.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# title"), cell]), str(path))
    before = json.loads(path.read_text(encoding="utf-8"))
    size = path.stat().st_size

    assert compact_notebook_figures(path) == 1
    assert json.loads(path.read_text(encoding="utf-8")) == before  # the same document
    nbformat.validate(nbformat.read(str(path), as_version=4))
    lines = path.read_text(encoding="utf-8").splitlines()
    assert sum(PLOTLY_MIME in line for line in lines) == 1 and path.stat().st_size < size
    assert '"# title"' in path.read_text(encoding="utf-8")  # the rest keeps nbformat's layout

    path.write_text("{ truncated", encoding="utf-8")
    assert compact_notebook_figures(path) == 0 and path.read_text(encoding="utf-8") == "{ truncated"


# ----------------------------------------------------------------------------------------------
# layouts that can be read; funnels that name their filters
# ----------------------------------------------------------------------------------------------
def test_wrap_title_breaks_at_spaces_and_keeps_tagged_lines():
    from quantlib.core.figures import wrap_title

    assert wrap_title("aaa bbb ccc", 7) == "aaa bbb<br>ccc"
    assert wrap_title("short", 40) == "short"
    assert wrap_title("aaa bbb<br><sup>x y z w</sup>", 10) == "aaa bbb<br><sup>x y z w</sup>"


def test_readable_layout_wraps_a_long_title_and_makes_room_for_it():
    from quantlib.core.figures import readable_layout

    title = "Cluster map: averaged correlation in dendrogram order (16 clusters, Ward cut at 0.45)"
    doc = figure_json(go.Figure(go.Heatmap(z=[[1]]), layout=dict(title=title, width=500)))
    text = doc["layout"]["title"]["text"]
    lines = text.split("<br>")
    assert len(lines) == 2 and " ".join(lines) == title
    assert all(len(line) * 8.5 <= 500 - 60 for line in lines)  # each line fits the figure's width
    assert doc["layout"]["margin"]["t"] == 30 + 24 * 2
    assert readable_layout(doc)["layout"]["title"]["text"] == text  # idempotent


def test_readable_layout_moves_a_legend_too_tall_for_the_plot_below_it():
    many = go.Figure([go.Scatter(x=[1], y=[k], name=f"series {k}") for k in range(30)], layout=dict(height=400))
    doc = figure_json(many)
    legend = doc["layout"]["legend"]
    assert legend["orientation"] == "h" and legend["y"] < 0
    assert doc["layout"]["height"] > 400  # grown by the legend's rows
    few = figure_json(go.Figure([go.Scatter(x=[1], y=[k], name=f"s{k}") for k in range(5)], layout=dict(height=400)))
    assert "orientation" not in (few["layout"].get("legend") or {}) and few["layout"]["height"] == 400


def _funnel():
    import pandas as pd

    rows = [("long", 0, "universe", 10.0), ("long", 1, "type == spot", 8.0), ("long", 2, "rating > 0.1", 5.0),
            ("short", 0, "universe", 10.0), ("short", 1, "type == spot", 8.0), ("short", 2, "rating < -0.1", 2.0),
            ("short", 3, "value_traded > 1e6", 1.0)]
    return pd.DataFrame(rows, columns=["scanner", "step", "filter", "remaining"])


def test_funnel_table_names_filters_in_pipeline_order_with_integer_counts():
    from quantlib.core.figures import filter_order, funnel_table

    assert filter_order(_funnel()) == ["universe", "type == spot", "rating > 0.1", "rating < -0.1",
                                       "value_traded > 1e6"]
    table = funnel_table(_funnel())
    assert list(table.index) == filter_order(_funnel()) and list(table.columns) == ["long", "short"]
    assert str(table["long"].dtype) == "Int64"
    assert table["long"].isna().tolist() == [False, False, False, True, True]
    assert table["long"].dropna().tolist() == [10, 8, 5]
    assert table["short"].isna().tolist() == [False, False, True, False, False]
    assert table["short"].dropna().tolist() == [10, 8, 2, 1]


def test_funnel_figure_x_axis_names_the_filters_and_counts_are_integers():
    from quantlib.core.figures import funnel_figure, short_label

    fig = funnel_figure(_funnel())
    assert list(fig.layout.xaxis.categoryarray) == ["universe", "type == spot", "rating > 0.1", "rating < -0.1",
                                                    "value_traded > 1e6"]
    short = next(t for t in fig.data if t.name == "short")
    assert list(short.x) == ["universe", "type == spot", "rating < -0.1", "value_traded > 1e6"]
    assert list(short.y) == [10, 8, 2, 1] and all(isinstance(v, int) for v in short.y)
    assert fig.layout.yaxis.tickformat == "d"
    assert short_label("x" * 40, 10) == "x" * 9 + "…"


def test_selection_funnel_names_steps_and_shows_integers():
    from quantlib.core.figures import selection_funnel_figure

    audit = {"stage_reached": 1, "funnel": [{"step": "candidates", "remaining": 91},
                                            {"step": "after_hard_vetoes", "remaining": 62.0}]}
    fig = selection_funnel_figure(audit)
    assert list(fig.data[0].y) == ["candidates", "after hard vetoes"] and list(fig.data[0].x) == [91, 62]
    assert fig.data[0].texttemplate == "%{x:d}"


def test_compact_table_moves_constant_columns_out_and_shows_big_numbers_in_millions():
    import pandas as pd

    from quantlib.core.figures import compact_table

    frame = pd.DataFrame({"symbol": ["A", "B"], "direction": ["LONG", "LONG"], "alpha": [0.123456, 0.5],
                          "value_traded": [2.96e8, 1.66e7], "tick_size": [1e-5, 0.1]})
    styler, constant = compact_table(frame)
    assert constant == {"direction": "LONG"}
    shown = styler.data
    assert list(shown.columns) == ["symbol", "alpha", "value_traded (M)", "tick_size"]
    assert shown["value_traded (M)"].tolist() == [296.0, 16.6]
    html = styler.to_html()
    assert "0.1235" in html and "296.0" in html and "1e-05" in html and "LONG" not in html
