"""HTML exports of executed notebooks, in a background thread: offline (no CDN) and small.

An export is nbconvert's lab template whose shared parts live once in the runs root's `_static/` and are
loaded by paths relative to the page: its stylesheets (`link_head_styles`: content-named copies instead
of ~260 KB inlined per page) and plotly.js (`quantlib.core.figures.plotly_script`). Figures are stored
in the executed notebook once, as plotly JSON (`figures.show`); the export draws each from that JSON.
"""
from __future__ import annotations

import hashlib
import re
from pathlib import Path

from quantlib.core import storage
from quantlib.core.figures import (PLOTLY_MIME, figure_div, relative_src, shared_file, static_root_for,
                                   with_plotly_script)


class HtmlExports:
    """HTML exports in a background thread: nbconvert runs while the kernel computes the next stage.

    The thread never touches the manifest: `wait` (called before the manifest and INDEX.md are
    written for the last time) copies each result (`html` or `html_error`) into its stage record.
    """

    def __init__(self, static_root: Path | None = None) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="html-export")
        self.pending: list = []
        self.static_root = static_root  # the run's runs root (None: found from the notebook's run)

    def submit(self, notebook: Path, record: dict) -> None:
        self.pending.append((record, self.pool.submit(_html_result, notebook, self.static_root)))

    def wait(self) -> None:
        for record, future in self.pending:
            record.update(future.result())
        self.pending.clear()
        self.pool.shutdown(wait=True)


def _html_result(notebook: Path, static_root: Path | None = None) -> dict:
    """Export the HTML report; a failed export is recorded, never masks the stage's own outcome."""
    try:
        page = export_notebook_html(notebook, static_root)
        return {"html": f"notebooks/{page.name}", "html_sha256": storage.sha256_file(page)}
    except Exception as exc:
        return {"html_error": f"{type(exc).__name__}: {exc}"}


def export_html(notebook: Path, record: dict, static_root: Path | None = None) -> None:
    """Export now (no background thread) and record the result in the stage record."""
    record.update(_html_result(notebook, static_root))


OFFLINE_TEMPLATE = """{%- extends 'lab/index.html.j2' -%}
{%- block html_head_js_requirejs -%}{%- endblock html_head_js_requirejs -%}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
"""
"""The lab template without require.js, MathJax and mermaid.js, which it would load from a CDN."""


def export_notebook_html(notebook: Path, static_root: Path | None = None) -> Path:
    """HTML export of an executed notebook, next to it. Its stylesheets and (if it has charts) plotly.js
    are loaded from `<static_root>/_static/` by relative paths (`static_root` None: the runs root of
    the notebook's run, `figures.static_root_for`)."""
    import jinja2
    import nbformat
    from nbconvert import HTMLExporter

    page = Path(notebook).with_suffix(".html")
    root = static_root_for(page) if static_root is None else Path(static_root)
    nb = nbformat.read(str(notebook), as_version=4)
    drawn = draw_figures(nb)
    offline = jinja2.DictLoader({"offline.html.j2": OFFLINE_TEMPLATE})
    exporter = HTMLExporter(template_name="lab", extra_loaders=[offline], template_file="offline.html.j2")
    body, _ = exporter.from_notebook_node(nb)
    body = link_head_styles(body, page, root)
    if drawn or "plotly-graph-div" in body or "Plotly.newPlot" in body:
        body = with_plotly_script(body, page, root)
    return storage.write_text(page, body)


def draw_figures(nb) -> int:
    """Give every plotly output without an HTML form one (a div drawing its JSON), in memory only;
    return how many. Outputs of older notebooks that carry their own HTML are left as they are."""
    drawn = 0
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            data = output.get("data") or {}
            if PLOTLY_MIME in data and "text/html" not in data:
                data["text/html"] = figure_div(data[PLOTLY_MIME])
                drawn += 1
    return drawn


_HEAD_STYLE = re.compile(r"<style\b[^>]*>(.*?)</style>", re.S | re.I)


def link_head_styles(html: str, page: Path, static_root: Path) -> str:
    """Every `<style>` block of the page's `<head>` (the lab template's ~260 KB of CSS, the same on every
    page) moved to a content-named file in `<static_root>/_static/` and linked by a relative path."""
    head, cut, rest = html.partition("</head>")
    if not cut:
        return html

    def link(match: re.Match) -> str:
        css = match.group(1).strip() + "\n"
        name = f"nbconvert-{hashlib.sha256(css.encode('utf-8')).hexdigest()[:16]}.css"
        target = shared_file(static_root, name, css.encode("utf-8"))
        return f'<link rel="stylesheet" type="text/css" href="{relative_src(page, target)}">'

    return _HEAD_STYLE.sub(link, head) + cut + rest
