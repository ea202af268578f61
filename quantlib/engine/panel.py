"""The workbook control panel (notebooks/00_workbook.ipynb): pick a profile, start a run, read its INDEX.md.

Pure helpers that tests reach directly -- `profile_table`, `run_table`, `command_for`, `start_run`,
`tail`, `index_html` -- plus `workbook_panel`, which wires them into one ipywidgets VBox for JupyterLab.

A run is started as a subprocess of the CLI (`python run_book.py ...`), never inside the kernel: the
panel stays responsive, a crashed run cannot take the kernel down, and what the panel runs is exactly
what a terminal would run. Its output goes to a log file under a temp dir; the panel shows the log's
tail (Refresh button, plus a short `threading.Timer` poll that stops when the process ends or after
`POLL_LIMIT` polls -- the kernel is never blocked).

`import quantlib.engine.panel` stays light: pandas, yaml and the profile/run modules only; ipywidgets and the
markdown renderer are imported inside the functions that use them.
"""
from __future__ import annotations

import html
import os
import re
import subprocess
import sys
import tempfile
from collections import deque
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import quote

import pandas as pd

from quantlib.core.errors import WorkbookError
from quantlib.core.profiles import BASE_PROFILE, default_profiles_dir, list_profiles, load_profile, load_yaml_chain
from quantlib.core.runs import INDEX, list_runs, nested_runs, ref_path
from quantlib.core.workspace import Workspace

SCRIPT = "run_book.py"
KINDS = ("demo", "data", "sleeve", "meta")
DEMO = ":demo"
"""The profile picker's first entry (and default): `python run_book.py demo`, the whole offline workflow."""
DEMO_DESCRIPTION = ("the whole workflow offline: data runs of demo and demo_equities, then the demo_meta "
                    "portfolio (three sleeves, validated walk-forward)")
SLEEVE_FLAGS = ("--skip-validation", "--skip-analysis")  # canonical order in a sleeve command
PROFILE_COLUMNS = ["profile", "kind", "description", "extends", "error"]
RUN_COLUMNS = ["run_id", "profile", "phase", "status", "stages", "created_at", "link", "depth"]
POLL_SECONDS = 2.0
POLL_LIMIT = 900  # polls per run (30 min at 2 s); the Refresh button works after that


# ----------------------------------------------------------------------------------------- profiles
def _kind_from_yaml(docs: list[dict], chain: list[str]) -> str:
    """Kind from the raw YAML chain (root first / child first): used when a profile does not load."""
    for doc in docs:
        meta = doc.get("meta")
        if isinstance(meta, dict) and meta.get("sleeves"):
            return "meta"
    own = [doc for doc, name in zip(docs, reversed(chain)) if name != BASE_PROFILE]
    return "sleeve" if any("sleeve" in doc for doc in own) else "data"


def profile_kind(name: str, profiles_dir: Path | None = None) -> str:
    """`meta` if the resolved `meta.sleeves` is non-empty, `sleeve` if a file of its chain other than
    base.yaml sets a `sleeve:` section, else `data`."""
    return _profile_row(name, profiles_dir or default_profiles_dir())["kind"]


def _profile_row(name: str, directory: Path) -> dict:
    docs, chain = load_yaml_chain(name, directory)
    row = {"profile": name, "extends": " <- ".join(chain), "error": ""}
    try:
        profile = load_profile(name, directory).profile  # no env: the table shows the files as written
    except WorkbookError as exc:  # listed anyway, with the reason (e.g. a key the schema does not know yet)
        merged_description = next((d["description"] for d in reversed(docs) if "description" in d), "")
        return {**row, "kind": _kind_from_yaml(docs, chain), "description": str(merged_description),
                "error": str(exc)}
    meta = getattr(profile, "meta", None)
    if meta is not None and getattr(meta, "sleeves", None):
        kind = "meta"
    else:
        own = [doc for doc, n in zip(docs, reversed(chain)) if n != BASE_PROFILE]
        kind = "sleeve" if any("sleeve" in doc for doc in own) else "data"
    return {**row, "kind": kind, "description": profile.description}


def profile_table(profiles_dir: Path | None = None) -> pd.DataFrame:
    """Every profile in `profiles_dir` (default profiles/): profile, kind (data / sleeve / meta),
    description, extends chain (child first, `a <- b <- base`) and a load error ("" when it loads).

    A profile that fails to validate is listed with its error instead of hiding the whole table.
    """
    directory = Path(profiles_dir) if profiles_dir else default_profiles_dir()
    rows = [_profile_row(name, directory) for name in list_profiles(directory)]
    return pd.DataFrame(rows, columns=PROFILE_COLUMNS)


# --------------------------------------------------------------------------------------------- runs
def default_runs_dir() -> Path:
    return Workspace.current().runs


def run_table(runs_dir: str | Path | None = None, link_base: str | Path | None = None) -> pd.DataFrame:
    """`quantlib.core.runs.list_runs` as a frame (newest first), each meta followed by its nested sleeve runs
    (`core.runs.nested_runs`: `run_id` `META/SLEEVE`, the name the CLI takes, `depth` 1, 2, ...), with a `link`
    column: the path of each run's INDEX.md (relative to `link_base` when given, else absolute; "" when the
    run has no INDEX.md yet)."""
    runs_dir = Path(runs_dir) if runs_dir else default_runs_dir()
    rows = []
    for row in list_runs(runs_dir) if runs_dir.exists() else []:
        rows.append({**row, "depth": 0})
        rows.extend({**child, "depth": depth} for depth, child in nested_runs(runs_dir / row["run_id"]))
    for row in rows:
        index = (ref_path(runs_dir, row["run_id"]) / INDEX).resolve()
        row["link"] = _link(index, link_base) if index.exists() else ""
    return pd.DataFrame(rows, columns=RUN_COLUMNS)


def _link(path: Path, base: str | Path | None) -> str:
    if base is None:
        return str(path)
    return Path(os.path.relpath(path, Path(base).resolve())).as_posix()


def jupyter_server(cwd: str | Path | None = None) -> dict | None:
    """The Jupyter server this kernel was started by (`jupyter_server.serverapp.list_running_servers`:
    the one whose pid is the kernel's parent, else -- in a kernel Jupyter started, `$JPY_SESSION_NAME`
    set -- the one whose root folder holds the working directory); None outside Jupyter."""
    try:
        from jupyter_server.serverapp import list_running_servers
    except ImportError:  # pragma: no cover - jupyter_server ships with jupyterlab
        return None
    try:
        servers = list(list_running_servers())
    except OSError:
        return None
    parent = next((info for info in servers if info.get("pid") == os.getppid()), None)
    if parent is not None or not os.environ.get("JPY_SESSION_NAME"):
        return parent
    here = Path(cwd or Path.cwd()).resolve()
    inside = [info for info in servers if here.is_relative_to(Path(info.get("root_dir", "/")).resolve())]
    return max(inside, key=lambda info: len(str(info["root_dir"]))) if inside else None


def jupyter_href(path: str | Path, server: dict) -> str | None:
    """The URL path under which `server` serves `path` (None if outside its root folder): an HTML page
    as the raw file, `<base_url>files/<path>` -- a browser tab that runs its scripts (the server
    confines them with `Content-Security-Policy: sandbox allow-scripts`), so the charts draw, where
    JupyterLab's HTML viewer shows them blank until "Trust HTML"; anything else (notebooks, INDEX.md,
    artifacts) `<base_url>lab/tree/<path>`, opened in JupyterLab."""
    root = Path(server.get("root_dir") or "/").resolve()
    target = Path(path).resolve()
    if not target.is_relative_to(root):
        return None
    base = "/" + str(server.get("base_url") or "/").strip("/") + "/"
    base = "/" if base == "//" else base
    kind = "files" if target.suffix.lower() in (".html", ".htm") else "lab/tree"
    return f"{base}{kind}/{quote(target.relative_to(root).as_posix())}"


REPORT_FOLDERS = ("notebooks", "reports", "plots")
"""The folders of a run whose HTML pages the panel lists under the rendered INDEX.md."""


def index_html(run_dir: str | Path, link_base: str | Path | None = None, server: dict | None = None) -> str:
    """A run's INDEX.md as HTML, plus a list of links to its HTML pages (notebook exports, reports, plots).

    Relative links point, with a Jupyter `server`, at its URLs (`jupyter_href`: HTML pages open in a new
    browser tab with their charts drawn); else they are rewritten against `link_base` (default: the run
    dir, i.e. left as written). Markdown is rendered with mistune (an nbconvert dependency); without it
    the text is shown as-is.
    """
    run_dir = Path(run_dir)
    index = run_dir / INDEX
    if not index.exists():
        return f"<p><i>{html.escape(str(index))} does not exist yet (the run has not finished a stage).</i></p>"
    text = index.read_text(encoding="utf-8")

    def href(path: Path, written: str) -> str:
        url = jupyter_href(path, server) if server else None
        if url:
            return url
        return _link(path.resolve(), link_base) if link_base is not None else written

    def rewrite(match: re.Match) -> str:
        label, target = match.group(1), match.group(2)
        if re.match(r"^[a-z]+:", target) or target.startswith(("#", "/")) or (link_base is None and not server):
            return match.group(0)
        return f"[{label}]({href(run_dir / target, target)})"

    text = re.sub(r"\[([^\]]*)\]\(([^)\s]+)\)", rewrite, text)
    try:
        import mistune

        body = mistune.html(text)
    except ImportError:  # pragma: no cover - mistune ships with nbconvert
        body = f"<pre>{html.escape(text)}</pre>"
    body = body.replace("<a href=", '<a target="_blank" href=')
    pages = [p for folder in REPORT_FOLDERS for p in sorted((run_dir / folder).glob("*.html"))]
    if pages:
        items = "".join(f'<li><a target="_blank" href="{html.escape(href(p, p.relative_to(run_dir).as_posix()))}">'
                        f"{html.escape(p.relative_to(run_dir).as_posix())}</a></li>" for p in pages)
        how = (" (each opens in a new browser tab, charts drawn)" if server else "")
        body += f"<h3>HTML reports{how}</h3><ul>{items}</ul>"
    return body


# ------------------------------------------------------------------------------------------ commands
def command_for(kind: str, profile: str, run_id: str | None = None, flags: Iterable[str] = ()) -> list[str]:
    """The `python run_book.py ...` argv that runs `profile` as `kind`.

    demo -> `demo [--executor local]` (the profile is ignored); data -> `data --profile P`; sleeve -> `sleeve P [--skip-validation] [--skip-analysis]`;
    meta -> `meta P [flags...]` (e.g. `--executor local`, `--ray-address ADDR`, passed through);
    `--run-id R` is appended to resume run R. Flags a kind does not take are a ValueError.
    """
    flags = list(flags)
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; expected one of {', '.join(KINDS)}")
    if kind == "demo":
        if run_id or any(f not in ("--executor", "local") for f in flags):
            raise ValueError(f"the demo takes only --executor local, got {flags}{' and a run id' if run_id else ''}")
        return ["python", SCRIPT, "demo", *flags]
    if not profile:
        raise ValueError("no profile given")
    if kind == "data":
        if flags:
            raise ValueError(f"the data phase takes no flags, got {flags}")
        argv = ["data", "--profile", profile]
    elif kind == "sleeve":
        unknown = [f for f in flags if f not in SLEEVE_FLAGS]
        if unknown:
            raise ValueError(f"unknown sleeve flag(s) {unknown}; expected {', '.join(SLEEVE_FLAGS)}")
        argv = ["sleeve", profile, *[f for f in SLEEVE_FLAGS if f in flags]]
    else:
        argv = ["meta", profile, *flags]
    if run_id:
        argv += ["--run-id", run_id]
    return ["python", SCRIPT, *argv]


def start_run(argv: Sequence[str], runs_dir: str | Path | None = None, cwd: str | Path | None = None,
              log_dir: str | Path | None = None) -> subprocess.Popen:
    """Start `argv` (from `command_for`) in a subprocess; stdout and stderr go to a log file.

    `python` is replaced by this interpreter (the kernel's venv), `--runs-dir` is inserted after the
    script when `runs_dir` is given, and the script runs from `cwd` (default: the workspace root).
    The returned Popen carries `log_path` (the log file) and `argv` (what was run).
    """
    argv = list(argv)
    if argv and argv[0] == "python":
        argv[0] = sys.executable
    if runs_dir:
        at = next((i + 1 for i, a in enumerate(argv) if a.endswith(SCRIPT)), 1)
        argv[at:at] = ["--runs-dir", str(Path(runs_dir).resolve())]
    log_dir = Path(log_dir) if log_dir else Path(tempfile.mkdtemp(prefix="fw_panel_"))
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / "run.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1",
           "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}
    with open(log_path, "wb") as log:  # the child keeps its own handle
        proc = subprocess.Popen(argv, cwd=str(cwd or Workspace.current().root), stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env)
    proc.log_path = log_path
    return proc


def tail(path: str | Path, n: int = 20) -> str:
    """The last `n` lines of a text file ("" if it does not exist yet)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return "".join(deque(fh, maxlen=max(n, 0)))
    except FileNotFoundError:
        return ""


# ----------------------------------------------------------------------------------------- the panel
def _walk(widget) -> Iterable:
    yield widget
    for child in getattr(widget, "children", ()):
        yield from _walk(child)


def workbook_panel(runs_dir: str | Path | None = None, profiles_dir: str | Path | None = None,
                   link_base: str | Path | None = None, server: dict | None = None):
    """The control panel: profile picker (the demo first, and picked), flags, Run/Refresh with the log
    tail, runs table, a run picker (nested sleeve runs too) rendering the picked run's INDEX.md.

    Everything is the current workspace's (`Workspace.current()`: the checkout JupyterLab opened):
    profiles, runs, and the `run_book.py` that Run starts. Links in the rendered INDEX.md go through the
    Jupyter `server` (default: `jupyter_server()`, the one running this kernel; HTML pages open in a new
    browser tab with their charts); without one they are relative to `link_base` (default: the kernel's
    working directory, the notebook's folder).
    """
    import ipywidgets as w

    workspace = Workspace.current()
    runs_path = Path(runs_dir) if runs_dir else workspace.runs
    link_base = Path(link_base) if link_base else Path.cwd()
    server = server if server is not None else jupyter_server()
    profiles = profile_table(Path(profiles_dir) if profiles_dir else workspace.profiles)
    info = {r.profile: r for r in profiles.itertuples(index=False)}
    info[DEMO] = SimpleNamespace(profile=DEMO, kind="demo", description=DEMO_DESCRIPTION, extends="", error="")

    profile_dd = w.Dropdown(description="Profile",
                            options=[("demo · the whole offline workflow (python run_book.py demo)", DEMO)]
                            + [(f"{r.profile} · {r.kind}", r.profile) for r in profiles.itertuples(index=False)],
                            value=DEMO, layout=w.Layout(width="480px"))
    profile_info = w.HTML()
    skip_validation = w.Checkbox(description="--skip-validation", value=False, indent=False)
    skip_analysis = w.Checkbox(description="--skip-analysis", value=False, indent=False)
    local = w.Checkbox(description="--executor local", value=False, indent=False)  # meta: sleeves without Ray
    resume = w.Text(description="Resume", placeholder="run id (optional)", layout=w.Layout(width="480px"))
    command = w.HTML()
    run_btn = w.Button(description="Run", button_style="primary", icon="play")
    refresh_btn = w.Button(description="Refresh", icon="refresh")
    status = w.HTML("<i>idle</i>")
    log = w.Output(layout=w.Layout(max_height="320px", overflow="auto", border="1px solid #ddd"))

    runs_out = w.Output()
    runs_refresh = w.Button(description="Refresh runs", icon="refresh")
    run_dd = w.Dropdown(description="Run", options=[], layout=w.Layout(width="640px"))
    index_view = w.HTML()
    state = {"proc": None, "polls": 0, "timer": None, "known": None, "new": None}

    def current_argv() -> list[str]:
        name = profile_dd.value
        flags = [cb.description for cb in (skip_validation, skip_analysis) if cb.value and not cb.disabled]
        if local.value and not local.disabled:
            flags += ["--executor", "local"]
        run_id = None if resume.disabled else resume.value.strip() or None
        return command_for(info[name].kind, name, run_id, flags)

    def on_profile(_=None) -> None:
        row = info.get(profile_dd.value)
        if row is None:
            return
        is_sleeve = row.kind == "sleeve"
        skip_validation.disabled = skip_analysis.disabled = not is_sleeve
        local.disabled = row.kind not in ("meta", "demo")
        resume.disabled = row.kind == "demo"
        error = f"<br><span style='color:#b00'>{html.escape(row.error)}</span>" if row.error else ""
        profile_info.value = (f"<b>{html.escape(row.kind)}</b> · {html.escape(row.description)}<br>"
                              + (f"<small>extends: {html.escape(row.extends)}</small>" if row.extends else "")
                              + error)
        on_options()

    def on_options(_=None) -> None:
        try:
            command.value = f"<code>{html.escape(' '.join(current_argv()))}</code>"
        except ValueError as exc:
            command.value = f"<span style='color:#b00'>{html.escape(str(exc))}</span>"

    def show_log(_=None) -> None:
        proc = state["proc"]
        if proc is None:
            return
        code = proc.poll()
        status.value = (f"running (pid {proc.pid}) · log {html.escape(str(proc.log_path))}" if code is None
                        else f"<b>{'PASS' if code == 0 else f'FAIL (exit {code})'}</b> · "
                             f"log {html.escape(str(proc.log_path))}")
        # set outputs directly: `with log:` does not capture output from the Timer's thread
        log.outputs = ({"output_type": "stream", "name": "stdout", "text": tail(proc.log_path, 40)},)
        if code is not None or state["new"] is None:
            refresh_runs()  # while it runs: until the new run appears; then once more when it ends

    def poll() -> None:
        show_log()
        proc = state["proc"]
        state["polls"] += 1
        if proc is not None and proc.poll() is None and state["polls"] < POLL_LIMIT:
            import threading

            state["timer"] = threading.Timer(POLL_SECONDS, poll)
            state["timer"].daemon = True
            state["timer"].start()

    def on_run(_=None) -> None:
        proc = state["proc"]
        if proc is not None and proc.poll() is None:
            status.value = f"<b>a run is still going (pid {proc.pid})</b>: wait for it or Refresh"
            return
        try:
            argv = current_argv()
        except ValueError as exc:
            status.value = f"<span style='color:#b00'>{html.escape(str(exc))}</span>"
            return
        state["known"] = set(run_table(runs_path)["run_id"])
        state["new"] = None
        state["proc"] = start_run(argv, runs_dir=runs_path, cwd=workspace.root)
        state["polls"] = 0
        poll()

    def refresh_runs(_=None) -> None:
        table = run_table(runs_path, link_base)
        shown = table[table["depth"] == 0].drop(columns=["link", "depth"]).head(30)
        runs_out.outputs = ({"output_type": "display_data", "metadata": {},
                             "data": {"text/html": shown.to_html(index=False) if len(table) else
                                      f"<i>no runs under {html.escape(str(runs_path))}</i>",
                                      "text/plain": shown.to_string() if len(table) else f"no runs under {runs_path}"}},)
        previous = run_dd.value
        run_dd.options = [(f"{'    ' * r.depth}{'└ ' if r.depth else ''}{r.run_id} · {r.profile} · {r.status}", r.run_id)
                          for r in table.itertuples(index=False)]
        ids = list(table["run_id"])
        fresh = [i for i in ids if state["known"] is not None and i not in state["known"] and "/" not in i]
        if fresh and state["new"] is None:  # the run Run started: picked once, as soon as it exists
            state["new"] = previous = fresh[0]
        if ids:  # keep the picked run; else the newest (ipywidgets leaves the value empty otherwise)
            run_dd.value = previous if previous in ids else ids[0]
        on_pick()

    def on_pick(_=None) -> None:
        index_view.value = (index_html(ref_path(runs_path, run_dd.value), link_base, server) if run_dd.value
                            else "<i>pick a run</i>")

    profile_dd.observe(on_profile, names="value")
    for widget in (skip_validation, skip_analysis, local, resume):
        widget.observe(on_options, names="value")
    run_dd.observe(on_pick, names="value")
    run_btn.on_click(on_run)
    refresh_btn.on_click(show_log)
    runs_refresh.on_click(refresh_runs)
    on_profile()
    refresh_runs()

    return w.VBox([
        w.HTML("<h3>Fractal Workbook</h3>"),
        profile_dd, profile_info,
        w.HBox([skip_validation, skip_analysis, local]), resume, command,
        w.HBox([run_btn, refresh_btn]), status, log,
        w.HTML("<h4>Runs</h4>"), runs_refresh, runs_out, run_dd, index_view,
    ])
