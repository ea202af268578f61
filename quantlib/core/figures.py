"""Display helpers shared by the stage notebooks: plotly figures that render offline everywhere."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from quantlib.core import storage


@lru_cache(maxsize=1)
def plotly_js() -> str:
    """The plotly.js bundle shipped inside the plotly package (never a CDN)."""
    import plotly

    path = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    return path.read_text(encoding="utf-8")


def show(fig) -> None:
    """Display a figure as a plotly mime bundle plus an HTML div (the HTML export embeds plotly.js)."""
    import json

    from IPython.display import display

    bundle = {
        "application/vnd.plotly.v1+json": json.loads(fig.to_json()),
        "text/html": fig.to_html(include_plotlyjs=False, full_html=False),
    }
    display(bundle, raw=True)


def write_figure_html(fig, path: str | Path) -> Path:
    """A standalone HTML file with plotly.js embedded."""

    return storage.write_text(path, fig.to_html(include_plotlyjs=True, full_html=True))


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


def write_figures_html(figures: list, path: str | Path, title: str) -> Path:
    """One standalone HTML page holding several figures, plotly.js embedded once (works offline)."""

    divs = [fig.to_html(include_plotlyjs=(i == 0), full_html=False) for i, fig in enumerate(figures)]
    html = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{title}</title></head>"
            f"<body><h1>{title}</h1>{''.join(divs)}</body></html>")
    return storage.write_text(path, html)


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
