"""The book orchestrator on tiny test notebooks: pass, failing cell, timeout, missing output, resume, HTML.

`quantlib.engine.executor.REGISTRY` is replaced by a throw-away phase whose stages point at the notebooks in
`tests/engine/notebooks/` (via `quantlib.engine.executor.NOTEBOOKS_DIR`), and every run lives in `tmp_path` with its
lakehouse redirected there too, so nothing touches the repository's `runs/` or `lakehouse/`.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import ClassVar

import nbformat
import pytest

from quantlib.engine import executor as book, html
from quantlib.engine import kernel as stage_kernel
from quantlib.engine.html import export_notebook_html
from quantlib.core import storage
from quantlib.core import registry
from quantlib.core.registry import Artifact, Stage
from quantlib.core.figures import PLOTLY_MIME, STATIC_DIR, figure_json, plotly_js, plotly_js_bytes, plotly_js_name
from quantlib.core.profiles import load_profile
from quantlib.core.errors import RunInterrupted
from quantlib.core.runs import Run, process_alive

TEST_NOTEBOOKS = Path(__file__).resolve().parent / "notebooks"
PHASE = "testphase"
AS_OF = "2026-11-25T06:00:00Z"  # YAML parses this env value into a datetime

OK = "ok_writes_output.ipynb"
BROKEN = "broken.ipynb"
SLEEPS = "sleeps.ipynb"
NO_OUTPUT = "no_output.ipynb"
PLOTLY = "shows_plotly.ipynb"


def stage(name: str, notebook: str, *outputs: str) -> Stage:
    """A test stage whose notebook writes `outputs` itself (the test notebooks take no context)."""
    return Stage(name, notebook, "tests:notebook", tuple(Artifact(Path(o).stem, o) for o in outputs))


def ok_stage(name: str) -> Stage:
    # ok_writes_output.ipynb writes artifacts/<running stage>.txt
    return stage(name, OK, f"artifacts/{name}.txt")


@pytest.fixture
def make_run(tmp_path, monkeypatch):
    """Install a test phase and return a factory of fresh demo-profile runs in tmp_path."""
    monkeypatch.setattr(book, "NOTEBOOKS_DIR", TEST_NOTEBOOKS)
    lake = tmp_path / "lakehouse"

    def factory(stages: tuple[Stage, ...], env: dict[str, str] | None = None) -> Run:
        monkeypatch.setitem(registry.PHASES, PHASE, tuple(stages))
        resolved = load_profile("demo", env={"FW_DATA__LAKEHOUSE": str(lake), "FW_SOURCE__AS_OF": AS_OF,
                                             **(env or {})})
        return Run.create(tmp_path / "runs", resolved, PHASE, workspace=tmp_path)

    return factory


def run_collect(run: Run) -> tuple[bool, list[str]]:
    messages: list[str] = []
    ok = book.run_phase(run, PHASE, say=messages.append)
    return ok, messages


def reopen(run: Run) -> Run:
    """The run as stored on disk (what a later process would see)."""
    return Run.open(run.dir.parent, run.id)


def index_status(run: Run) -> str:
    text = (run.dir / "INDEX.md").read_text(encoding="utf-8")
    match = re.search(r"\*\*Status:\*\*\s*(\S+)", text)
    assert match, text
    return match.group(1)


def script_srcs(html: str) -> list[str]:
    return re.findall(r"<script[^>]*\bsrc\s*=\s*[\"']([^\"']+)", html, flags=re.I)


def stage_rows(run: Run) -> dict[str, str]:
    """stage name -> status column of INDEX.md's stage table."""
    rows = {}
    for line in (run.dir / "INDEX.md").read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and cells[0].isdigit():
            rows[cells[1]] = cells[2]
    return rows


# ----------------------------------------------------------------------------------- (a) pass
def test_passing_stage_records_hashes_notebook_html_and_index(make_run):
    run = make_run((ok_stage("alpha"),))
    ok, messages = run_collect(run)
    assert ok, messages

    stored = reopen(run)
    assert stored.manifest["status"] == "PASS"
    rec = stored.manifest["stages"]["alpha"]
    assert rec["status"] == "completed"
    out = run.dir / "artifacts" / "alpha.txt"
    assert out.read_text() == "written by stage alpha\n"
    assert rec["outputs"] == {"artifacts/alpha.txt": storage.sha256_file(out)}
    assert re.fullmatch(r"[0-9a-f]{64}", rec["outputs"]["artifacts/alpha.txt"])
    assert rec["started_at"] and rec["ended_at"] and rec["seconds"] >= 0

    executed = run.dir / rec["notebook"]
    assert executed == run.dir / "notebooks" / "01_alpha.ipynb"
    nb = nbformat.read(str(executed), as_version=4)
    # papermill injected the run_dir parameter, and the cell ran
    injected = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert injected and str(run.dir.resolve()) in injected[0].source
    assert 'profile = "demo"' in injected[0].source  # the parameters cell shows the profile that ran
    assert any("wrote" in o.get("text", "") for c in nb.cells for o in c.get("outputs", []))
    html = run.dir / rec["html"]
    assert html == executed.with_suffix(".html") and html.stat().st_size > 0
    # both are hashed as written (`run_book.py verify` re-hashes them)
    assert (rec["notebook_sha256"], rec["html_sha256"]) == (storage.sha256_file(executed), storage.sha256_file(html))

    text = (run.dir / "INDEX.md").read_text(encoding="utf-8")
    assert index_status(run) == "PASS"
    assert "`demo`" in text and f"`{run.id}`" in text
    assert stage_rows(run) == {"alpha": "completed"}
    assert "[artifacts/alpha.txt](artifacts/alpha.txt)" in text
    assert storage.sha256_file(out)[:12] in text
    assert "FAIL" not in text
    # the env overrides are recorded in INDEX.md (a datetime value must not crash write_index)
    assert "Environment overrides" in text and "2026-11-25" in text and str(run.dir.parent.parent) in text
    assert any("alpha: ok" in m for m in messages)


def test_executed_notebooks_are_signed_so_jupyterlab_opens_them_trusted(make_run, monkeypatch, tmp_path):
    from nbformat.sign import NotebookNotary

    monkeypatch.setenv("JUPYTER_DATA_DIR", str(tmp_path / "jupyter"))  # a notary of this test only
    book.notary.cache_clear()
    try:
        run = make_run((stage("chart", PLOTLY),))
        ok, messages = run_collect(run)
        assert ok, messages
        executed = run.dir / "notebooks" / "01_chart.ipynb"
        before = storage.sha256_file(executed)
        nb = nbformat.read(str(executed), as_version=4)
        assert NotebookNotary().check_signature(nb)  # what JupyterLab asks when it opens the notebook
        assert (tmp_path / "jupyter" / "notebook_secret").is_file()
        assert reopen(run).manifest["stages"]["chart"]["notebook_sha256"] == before  # the file is unchanged
        nb.cells[-1].source += "\n# edited"
        assert not NotebookNotary().check_signature(nb)  # a changed notebook is not trusted
    finally:
        book.notary.cache_clear()


# ----------------------------------------------------------------------------------- (b) failing cell
def test_failing_cell_fails_run_names_notebook_cell_and_error(make_run):
    run = make_run((ok_stage("alpha"), stage("beta", BROKEN, "artifacts/beta.txt"), ok_stage("gamma")))
    ok, messages = run_collect(run)
    assert ok is False

    stored = reopen(run)
    assert stored.manifest["status"] == "FAIL"
    error = stored.manifest["error"]
    executed = run.dir / "notebooks" / "02_beta.ipynb"
    assert str(executed) in error
    assert "ValueError: planted failure" in error
    # the cell named in the message is the one that raised in the executed notebook
    nb = nbformat.read(str(executed), as_version=4)
    failing = [c for c in nb.cells if any(o.get("output_type") == "error" for o in c.get("outputs", []))]
    assert len(failing) == 1 and "planted failure" in failing[0].source
    assert f"cell {failing[0].execution_count}" in error
    assert messages[-1].startswith("FAIL:") and "planted failure" in messages[-1]

    stages = stored.manifest["stages"]
    assert stages["alpha"]["status"] == "completed"
    assert stages["beta"]["status"] == "failed" and stages["beta"]["error"] == error
    assert stages.get("gamma", {"status": "pending"})["status"] == "pending"
    assert not (run.dir / "notebooks" / "03_gamma.ipynb").exists()
    assert not (run.dir / "artifacts" / "gamma.txt").exists()

    text = (run.dir / "INDEX.md").read_text(encoding="utf-8")
    assert index_status(run) == "FAIL"
    assert "planted failure" in text
    assert stage_rows(run) == {"alpha": "completed", "beta": "failed", "gamma": "pending"}


# ----------------------------------------------------------------------------------- (c) timeout
def test_cell_timeout_fails_with_timed_out_and_notebook_path(make_run):
    run = make_run((stage("slow", SLEEPS, "artifacts/slow.txt"),), env={"FW_BOOK__CELL_TIMEOUT_S": "2"})
    assert run.profile.book.cell_timeout_s == 2
    ok, messages = run_collect(run)
    assert ok is False

    stored = reopen(run)
    error = stored.manifest["error"]
    assert stored.manifest["status"] == "FAIL"
    assert "timed out" in error
    assert str(run.dir / "notebooks" / "01_slow.ipynb") in error
    assert "cell_timeout_s=2" in error
    assert re.search(r"01_slow\.ipynb cell \d+ \(", error), error  # the cell that ran out of time, not "?"
    assert stored.manifest["stages"]["slow"]["status"] == "failed"
    assert stored.manifest["stages"]["slow"]["seconds"] < 25  # interrupted, not slept through
    assert index_status(run) == "FAIL"


# ----------------------------------------------------------------------------------- (d) missing output
def test_missing_declared_output_fails_naming_the_file(make_run):
    run = make_run((stage("quiet", NO_OUTPUT, "artifacts/never_written.parquet"), ok_stage("after")))
    ok, _ = run_collect(run)
    assert ok is False

    stored = reopen(run)
    error = stored.manifest["error"]
    assert "artifacts/never_written.parquet" in error
    assert "did not write" in error
    assert stored.manifest["stages"]["quiet"]["status"] == "failed"
    assert stored.manifest["stages"].get("after", {"status": "pending"})["status"] == "pending"
    assert index_status(run) == "FAIL"
    assert stage_rows(run)["after"] == "pending"


# ----------------------------------------------------------------------------------- (e) resume
def test_resume_skips_completed_and_reruns_modified_output(make_run, monkeypatch):
    plan = (ok_stage("alpha"), stage("beta", BROKEN, "artifacts/beta.txt"), ok_stage("gamma"))
    run = make_run(plan)
    ok, _ = run_collect(run)
    assert ok is False
    alpha_nb = run.dir / "notebooks" / "01_alpha.ipynb"
    alpha_mtime = alpha_nb.stat().st_mtime_ns

    # fix the failure: beta now runs the ok notebook; resume the same run (as a later process would)
    monkeypatch.setitem(registry.PHASES, PHASE, (plan[0], ok_stage("beta"), plan[2]))
    resumed = reopen(run)
    ok, messages = run_collect(resumed)
    assert ok, messages
    assert any("alpha: complete, skipped (resume)" in m for m in messages), messages
    assert not any("alpha: running" in m for m in messages)
    assert any("beta: running" in m for m in messages) and any("gamma: running" in m for m in messages)
    assert alpha_nb.stat().st_mtime_ns == alpha_mtime  # not re-executed

    stored = reopen(run)
    assert stored.manifest["status"] == "PASS"
    assert all(stored.manifest["stages"][s]["status"] == "completed" for s in ("alpha", "beta", "gamma"))
    assert all(book.stage_complete(stored, s) for s in registry.stages(PHASE))
    assert index_status(run) == "PASS"
    text = (run.dir / "INDEX.md").read_text(encoding="utf-8")
    assert "FAIL" not in text, "a resumed run that passed must not show the old failure in INDEX.md"

    # everything complete: a resume runs nothing
    ok, messages = run_collect(reopen(run))
    assert ok and all("skipped (resume)" in m for m in messages) and len(messages) == 3

    # tamper with beta's output: its hash no longer matches, so beta (and what follows) re-runs
    (run.dir / "artifacts" / "beta.txt").write_text("edited by hand\n")
    assert not book.stage_complete(reopen(run), plan[1])
    ok, messages = run_collect(reopen(run))
    assert ok, messages
    assert any("alpha: complete, skipped (resume)" in m for m in messages)
    assert any("beta: running" in m for m in messages)
    assert not any("beta: complete" in m for m in messages)
    assert (run.dir / "artifacts" / "beta.txt").read_text() == "written by stage beta\n"
    stored = reopen(run)
    assert stored.manifest["stages"]["beta"]["outputs"]["artifacts/beta.txt"] == \
        storage.sha256_file(run.dir / "artifacts" / "beta.txt")


def test_resume_reruns_stage_whose_output_was_deleted(make_run):
    run = make_run((ok_stage("alpha"), ok_stage("beta")))
    assert run_collect(run)[0]
    (run.dir / "artifacts" / "alpha.txt").unlink()
    ok, messages = run_collect(reopen(run))
    assert ok
    assert any("alpha: running" in m for m in messages)
    assert (run.dir / "artifacts" / "alpha.txt").exists()


# ----------------------------------------------------------------------------------- (f) offline HTML
def test_html_export_loads_the_shared_plotly_js_by_a_relative_path(make_run):
    run = make_run((stage("chart", PLOTLY),))
    ok, messages = run_collect(run)
    assert ok, messages
    html_path = run.dir / reopen(run).manifest["stages"]["chart"]["html"]
    page = html_path.read_text(encoding="utf-8")
    bundle = plotly_js()
    probe = bundle[len(bundle) // 2: len(bundle) // 2 + 200]  # a slice of the real library text

    assert "planted-series" in page and "Plotly.newPlot" in page  # the figure itself is in the page
    assert probe not in page and len(page) < 200_000, "plotly.js must not be embedded"
    srcs = [s for s in script_srcs(page) if "plotly" in s.lower()]
    assert len(srcs) == 1 and not re.match(r"^([a-z]+:|/)", srcs[0]), srcs  # relative, no scheme, no CDN
    target = (html_path.parent / srcs[0]).resolve()
    assert target == (run.dir.parent / STATIC_DIR / plotly_js_name()).resolve()  # the runs root's copy
    assert target.read_bytes() == plotly_js_bytes()  # the real plotly.js
    assert page.index(srcs[0]) < page.index("Plotly.newPlot"), "plotly.js must load before the figure script"
    assert "cdn.plot.ly" not in page

    notebook = (run.dir / "notebooks" / "01_chart.ipynb").read_text(encoding="utf-8")
    assert probe not in notebook and len(notebook) < 50_000  # the executed notebook does not carry it either
    assert "planted-series" in notebook
    index = (run.dir / "INDEX.md").read_text(encoding="utf-8")
    assert f"`../{STATIC_DIR}/`" in index  # INDEX.md says where the shared files are

    # and directly: export_notebook_html on the executed notebook rewrites the same file, one shared copy
    again = export_notebook_html(run.dir / "notebooks" / "01_chart.ipynb")
    assert again == html_path and script_srcs(again.read_text(encoding="utf-8")).count(srcs[0]) == 1
    assert [p.name for p in (run.dir.parent / STATIC_DIR).glob("plotly-*")] == [plotly_js_name()]


def test_html_export_without_plotly_does_not_embed_the_library(make_run):
    run = make_run((ok_stage("alpha"),))
    assert run_collect(run)[0]
    html = (run.dir / "notebooks" / "01_alpha.html").read_text(encoding="utf-8")
    bundle = plotly_js()
    assert bundle[len(bundle) // 2: len(bundle) // 2 + 200] not in html
    assert not [s for s in script_srcs(html) if "plotly" in s.lower()]  # and does not load it either


def plotly_notebook(path: Path) -> Path:
    """An executed-looking notebook whose one output is what `quantlib.core.figures.show` displays."""
    import plotly.graph_objects as go

    fig = go.Figure(go.Bar(x=["a", "b"], y=[1, 2], name="planted-bars"))
    cell = nbformat.v4.new_code_cell("report.show(fig)", execution_count=1)
    cell.outputs = [nbformat.v4.new_output("display_data", data={PLOTLY_MIME: figure_json(fig),
                                                                 "text/plain": "<plotly figure>"})]
    nbformat.write(nbformat.v4.new_notebook(cells=[cell]), str(path))
    return path


def test_html_export_loads_no_script_from_a_cdn(tmp_path):
    html = export_notebook_html(plotly_notebook(tmp_path / "chart.ipynb")).read_text(encoding="utf-8")
    assert "planted-bars" in html and "Plotly.newPlot" in html  # drawn from the notebook's plotly JSON
    assert not [s for s in script_srcs(html) if s.startswith(("http://", "https://"))], script_srcs(html)


def test_unexpected_error_fails_the_run_instead_of_leaving_it_running(make_run, monkeypatch):
    run = make_run((ok_stage("first"), ok_stage("second")))
    real = book.execute_stage

    def explode(run_, index, stage, *args):
        if stage.name == "second":
            run_.stage("second")["status"] = "running"
            raise RuntimeError("disk vanished")
        return real(run_, index, stage, *args)

    monkeypatch.setattr(book, "execute_stage", explode)
    ok, messages = run_collect(run)
    stored = reopen(run).manifest
    assert not ok and stored["status"] == "FAIL"
    assert stored["stages"]["second"]["status"] == "failed"
    assert "internal error: RuntimeError: disk vanished" in stored["error"]
    assert index_status(run) == "FAIL"


def test_failed_html_export_is_recorded_without_failing_the_stage(make_run, monkeypatch):
    run = make_run((ok_stage("only"),))
    monkeypatch.setattr(html, "export_notebook_html", lambda *_: (_ for _ in ()).throw(OSError("no space")))
    ok, _ = run_collect(run)
    record = reopen(run).manifest["stages"]["only"]
    assert ok and record["status"] == "completed"
    assert record["html"] is None and "OSError: no space" in record["html_error"]


# ----------------------------------------------------------------------------------- (g) interruption
class RecordingKernel(stage_kernel.SharedKernel):
    """The shared kernel, remembering its process id (to check it was stopped)."""

    pids: ClassVar[list[int]] = []

    def manager(self):
        km = super().manager()
        if km.provisioner.pid not in RecordingKernel.pids:
            RecordingKernel.pids.append(km.provisioner.pid)
        return km


def signal_when_running(run: Run, stage_name: str, signum: int) -> threading.Thread:
    """Send `signum` to this process once `stage_name` has been running for a second (its cell is executing)."""
    def watch() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if json.loads((run.dir / "manifest.json").read_text())["stages"].get(stage_name, {}).get("status") == "running":
                    time.sleep(1.0)
                    os.kill(os.getpid(), signum)
                    return
            except (OSError, ValueError):
                pass
            time.sleep(0.1)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_records_the_run_interrupted_stops_the_kernel_and_resume_continues_there(make_run, monkeypatch, signum):
    monkeypatch.setattr(stage_kernel, "SharedKernel", RecordingKernel)
    RecordingKernel.pids = []
    plan = (ok_stage("alpha"), stage("slow", SLEEPS, "artifacts/slow.txt"), ok_stage("gamma"))
    run = make_run(plan)
    handlers = (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT))
    signal_when_running(run, "slow", signum)
    start = time.monotonic()
    with pytest.raises(KeyboardInterrupt) as info:
        run_collect(run)
    assert isinstance(info.value, RunInterrupted) and info.value.signum == signum
    assert time.monotonic() - start < 28, "the sleeping cell was interrupted, not slept through"
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == handlers  # handlers restored

    stored = reopen(run).manifest
    assert stored["status"] == "INTERRUPTED" and "error" not in stored
    assert stored["interrupted"]["by"] == signum.name and stored["interrupted"]["stage"] == "slow"
    assert [stored["stages"][s]["status"] for s in ("alpha", "slow")] == ["completed", "interrupted"]
    assert "gamma" not in stored["stages"]
    assert stored["process"]["pid"] == os.getpid() and stored["process"]["host"]
    assert index_status(run) == "INTERRUPTED"
    assert f"by {signum.name} in stage slow" in (run.dir / "INDEX.md").read_text()
    assert stage_rows(run) == {"alpha": "completed", "slow": "interrupted", "gamma": "pending"}
    [pid] = RecordingKernel.pids
    deadline = time.monotonic() + 10
    while process_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not process_alive(pid), "the interrupted run's kernel must be stopped"

    if signum == signal.SIGINT:
        return
    # resume: continues at the interrupted stage (alpha stays complete)
    monkeypatch.setitem(registry.PHASES, PHASE, (plan[0], ok_stage("slow"), plan[2]))
    ok, messages = run_collect(reopen(run))
    assert ok, messages
    assert messages[0].endswith("alpha: complete, skipped (resume)") and "slow: running" in messages[1]
    stored = reopen(run).manifest
    assert stored["status"] == "PASS" and "interrupted" not in stored
    assert stored["resumes"][-1]["status"] == "INTERRUPTED" and stored["resumes"][-1]["interrupted"]["stage"] == "slow"


def test_a_meta_records_its_nested_runs_left_running_by_a_gone_process_as_interrupted(make_run, tmp_path):
    meta = make_run((ok_stage("alpha"),))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    children = {}
    for sid, pid in (("gone", dead.pid), ("alive", os.getpid())):
        child = Run.create(meta.dir / "sleeves", load_profile("demo"), PHASE, workspace=tmp_path, run_id=sid)
        child.manifest["process"]["pid"] = pid
        child.manifest["stages"] = {"alpha": {"status": "running"}}
        child.save()
        children[sid] = child
    assert children["gone"].status == "STALE" and children["alive"].status == "RUNNING"
    live = book.settle_nested(meta, 0)
    assert [r.id for r in live] == ["alive"]
    gone = reopen(children["gone"]).manifest
    assert gone["status"] == "INTERRUPTED" and gone["stages"]["alpha"]["status"] == "interrupted"
    assert gone["interrupted"] == {**gone["interrupted"], "by": f"interrupted meta run {meta.id}", "stage": "alpha"}
    assert index_status(children["gone"]) == "INTERRUPTED"
    assert reopen(children["alive"]).manifest["status"] == "RUNNING"


def test_stage_kernels_import_the_drivers_quantlib_first(monkeypatch):
    """A kernel started from another checkout's venv still runs this checkout's code (what the cache hashes)."""
    import quantlib
    from quantlib.engine.kernel import kernel_env

    root = str(Path(quantlib.__file__).resolve().parents[1])
    env = kernel_env({"PYTHONPATH": os.pathsep.join(["/elsewhere", root]), "X": "1"})
    assert env["PYTHONPATH"].split(os.pathsep) == [root, "/elsewhere"] and env["X"] == "1"
    assert kernel_env({})["PYTHONPATH"] == root
