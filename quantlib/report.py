"""Display helpers shared by the stage notebooks: plotly figures that render offline everywhere."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path


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
    from . import storage

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
