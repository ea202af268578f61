"""HTML exports of executed notebooks: offline (plotly.js embedded, no CDN), in a background thread."""
from __future__ import annotations

from pathlib import Path

from quantlib.core import storage
from quantlib.core.figures import plotly_js


class HtmlExports:
    """HTML exports in a background thread: nbconvert runs while the kernel computes the next stage.

    The thread never touches the manifest: `wait` (called before the manifest and INDEX.md are
    written for the last time) copies each result (`html` or `html_error`) into its stage record.
    """

    def __init__(self) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="html-export")
        self.pending: list = []

    def submit(self, notebook: Path, record: dict) -> None:
        self.pending.append((record, self.pool.submit(_html_result, notebook)))

    def wait(self) -> None:
        for record, future in self.pending:
            record.update(future.result())
        self.pending.clear()
        self.pool.shutdown(wait=True)


def _html_result(notebook: Path) -> dict:
    """Export the HTML report; a failed export is recorded, never masks the stage's own outcome."""
    try:
        page = export_notebook_html(notebook)
        return {"html": f"notebooks/{page.name}", "html_sha256": storage.sha256_file(page)}
    except Exception as exc:
        return {"html_error": f"{type(exc).__name__}: {exc}"}


def export_html(notebook: Path, record: dict) -> None:
    """Export now (no background thread) and record the result in the stage record."""
    record.update(_html_result(notebook))


OFFLINE_TEMPLATE = """{%- extends 'lab/index.html.j2' -%}
{%- block html_head_js_requirejs -%}{%- endblock html_head_js_requirejs -%}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
"""
"""The lab template without require.js and MathJax, which it would load from a CDN."""


def export_notebook_html(notebook: Path) -> Path:
    """HTML export of an executed notebook with plotly.js embedded once (works offline, no CDN)."""
    import jinja2
    import nbformat
    from nbconvert import HTMLExporter

    nb = nbformat.read(str(notebook), as_version=4)
    offline = jinja2.DictLoader({"offline.html.j2": OFFLINE_TEMPLATE})
    exporter = HTMLExporter(template_name="lab", extra_loaders=[offline], template_file="offline.html.j2")
    body, _ = exporter.from_notebook_node(nb)
    if "plotly-graph-div" in body or "Plotly.newPlot" in body:
        body = body.replace("</head>", f'<script type="text/javascript">{plotly_js()}</script>\n</head>', 1)
    return storage.write_text(notebook.with_suffix(".html"), body)
