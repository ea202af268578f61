"""The workbook control panel (quantlib.engine.panel) and notebooks/00_workbook.ipynb.

Fast: fake runs are manifest files in tmp_path; the only subprocesses are `run_book.py runs` (no
stage executes) and one papermill execution of the 00_workbook notebook.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from quantlib.engine import panel
from quantlib.core.profiles import default_profiles_dir

ROOT = Path(__file__).resolve().parents[2]
WORKBOOK = ROOT / "notebooks" / "00_workbook.ipynb"


def fake_run(runs_dir: Path, run_id: str, profile: str, phase: str, status: str, created_at: str,
             stages: dict, index: bool = True) -> Path:
    run_dir = runs_dir / run_id
    (run_dir / "notebooks").mkdir(parents=True)
    (run_dir / "manifest.json").write_text(json.dumps({
        "run_id": run_id, "profile": profile, "phase": phase, "status": status,
        "created_at": created_at, "stages": stages}), encoding="utf-8")
    if index:
        (run_dir / "INDEX.md").write_text(
            f"# Run `{run_id}`\n\n- **Status:** {status}\n\n| # | stage | notebook | report |\n|---|---|---|---|\n"
            f"| 1 | aggregate | [ipynb](notebooks/01_aggregate.ipynb) | [html](notebooks/01_aggregate.html) |\n",
            encoding="utf-8")
        (run_dir / "notebooks" / "01_aggregate.html").write_text("<html></html>", encoding="utf-8")
    return run_dir


@pytest.fixture
def runs_dir(tmp_path) -> Path:
    runs = tmp_path / "runs"
    # written oldest-last on purpose: the table must sort by created_at, not by name or write order
    fake_run(runs, "demo-20261120T080000-aaaa", "demo", "data", "PASS", "2026-11-20T08:00:00+00:00",
             {s: {"status": "completed"} for s in ("universe", "ingest", "metadata")})
    fake_run(runs, "demo_crypto_long-20261125T090000-bbbb", "demo_crypto_long", "sleeve", "FAIL",
             "2026-11-25T09:00:00+00:00",
             {"aggregate": {"status": "completed"}, "select": {"status": "failed"}}, index=False)
    fake_run(runs, "ademo-20261122T100000-cccc", "demo_crypto_short", "sleeve", "PASS",
             "2026-11-22T10:00:00+00:00",
             {"aggregate": {"status": "completed"}, "validate": {"status": "skipped"}})
    return runs


# ---------------------------------------------------------------------------------------- profiles
def test_profile_table_lists_shipped_profiles_with_kinds():
    table = panel.profile_table()
    shipped = sorted(p.stem for p in default_profiles_dir().glob("*.yaml"))
    assert sorted(table["profile"]) == shipped
    kinds = dict(zip(table["profile"], table["kind"]))
    assert kinds["demo"] == "data"
    assert kinds["demo_equities"] == "data"
    assert kinds["binance_spot"] == "data"
    assert kinds["base"] == "data"  # base.yaml's own sleeve section does not make a sleeve
    assert kinds["demo_crypto_long"] == "sleeve"  # its sleeve section comes from its parent's file
    assert kinds["demo_crypto_short"] == "sleeve"
    assert kinds["binance_spot_rating_ma_short"] == "sleeve"
    for meta in ("demo_meta", "meta_rating_all", "meta_rating_ma"):  # shipped with the meta phase
        if meta in kinds:
            assert kinds[meta] == "meta"
    row = table.set_index("profile").loc["demo_crypto_long"]
    assert row["extends"] == "demo_crypto_long <- binance_spot_rating_all_long <- base"
    assert row["description"].startswith("Offline demo LONG sleeve")
    assert (table.set_index("profile").loc[["demo", "demo_crypto_long"], "error"] == "").all()


def test_profile_table_meta_kind_and_broken_profile(tmp_path):
    shutil.copy(default_profiles_dir() / "base.yaml", tmp_path / "base.yaml")
    (tmp_path / "only_source.yaml").write_text("description: d\nsource:\n  venue: equities\n", encoding="utf-8")
    (tmp_path / "long.yaml").write_text("description: a sleeve\nsleeve:\n  scanners: [rating_all_long]\n",
                                        encoding="utf-8")
    (tmp_path / "combo.yaml").write_text(
        "description: two sleeves\nmeta:\n  sleeves:\n    - {id: a, profile: long}\n    - {id: b, profile: long}\n",
        encoding="utf-8")
    (tmp_path / "broken.yaml").write_text("description: typo\nsleeve:\n  scannerz: [x]\n", encoding="utf-8")
    table = panel.profile_table(tmp_path).set_index("profile")
    assert table.loc["only_source", "kind"] == "data"
    assert table.loc["long", "kind"] == "sleeve"
    assert table.loc["combo", "kind"] == "meta"
    assert table.loc["broken", "kind"] == "sleeve"  # listed with its error, not hidden
    assert "scannerz" in table.loc["broken", "error"]
    assert table.loc["long", "error"] == ""
    assert panel.profile_kind("combo", tmp_path) == "meta"


# ---------------------------------------------------------------------------------------- commands
def test_command_for_each_kind():
    assert panel.command_for("data", "demo") == ["python", "run_book.py", "data", "--profile", "demo"]
    assert panel.command_for("data", "demo", run_id="demo-1") == [
        "python", "run_book.py", "data", "--profile", "demo", "--run-id", "demo-1"]
    assert panel.command_for("sleeve", "demo_crypto_long") == ["python", "run_book.py", "sleeve", "demo_crypto_long"]
    # flags in canonical order whatever order they are given in, the run id last
    assert panel.command_for("sleeve", "demo_crypto_long", "r1", ["--skip-analysis", "--skip-validation"]) == [
        "python", "run_book.py", "sleeve", "demo_crypto_long", "--skip-validation", "--skip-analysis", "--run-id", "r1"]
    assert panel.command_for("sleeve", "x", flags=("--skip-analysis",)) == [
        "python", "run_book.py", "sleeve", "x", "--skip-analysis"]
    assert panel.command_for("meta", "m") == ["python", "run_book.py", "meta", "m"]
    assert panel.command_for("meta", "m", "m-1", ["--executor", "local"]) == [
        "python", "run_book.py", "meta", "m", "--executor", "local", "--run-id", "m-1"]


@pytest.mark.parametrize("kind, flags", [("data", ["--skip-validation"]), ("sleeve", ["--skip-everything"]),
                                         ("portfolio", [])])
def test_command_for_rejects_wrong_kind_or_flags(kind, flags):
    with pytest.raises(ValueError):
        panel.command_for(kind, "demo", flags=flags)


def test_start_run_uses_this_python_and_runs_dir(tmp_path):
    empty = tmp_path / "elsewhere"
    empty.mkdir()
    proc = panel.start_run(["python", "run_book.py", "runs"], runs_dir=empty, cwd=ROOT, log_dir=tmp_path / "log")
    assert proc.wait(timeout=120) == 0
    assert proc.args[0] == sys.executable
    assert proc.args[1:] == ["run_book.py", "--runs-dir", str(empty.resolve()), "runs"]
    assert proc.log_path == tmp_path / "log" / "run.log"
    assert f"no runs under {empty.resolve()}" in panel.tail(proc.log_path)


def test_tail(tmp_path):
    path = tmp_path / "x.log"
    path.write_text("".join(f"line {i}\n" for i in range(100)), encoding="utf-8")
    assert panel.tail(path, 3) == "line 97\nline 98\nline 99\n"
    assert panel.tail(path, 0) == ""
    assert panel.tail(tmp_path / "missing.log") == ""


# -------------------------------------------------------------------------------------------- runs
def test_run_table_newest_first_with_status_and_links(runs_dir, tmp_path):
    table = panel.run_table(runs_dir)
    assert list(table["run_id"]) == ["demo_crypto_long-20261125T090000-bbbb", "ademo-20261122T100000-cccc",
                                     "demo-20261120T080000-aaaa"]
    assert list(table["status"]) == ["FAIL", "PASS", "PASS"]
    assert list(table["phase"]) == ["sleeve", "sleeve", "data"]
    assert list(table["stages"]) == ["1/2", "2/2", "3/3"]
    assert table["link"].iloc[0] == ""  # no INDEX.md yet
    assert Path(table["link"].iloc[1]) == (runs_dir / "ademo-20261122T100000-cccc" / "INDEX.md").resolve()
    relative = panel.run_table(runs_dir, link_base=tmp_path)
    assert relative["link"].iloc[2] == "runs/demo-20261120T080000-aaaa/INDEX.md"
    empty = panel.run_table(tmp_path / "nothing")
    assert empty.empty and list(empty.columns) == panel.RUN_COLUMNS


def test_index_html_renders_links(runs_dir, tmp_path):
    run_dir = runs_dir / "demo-20261120T080000-aaaa"
    body = panel.index_html(run_dir, link_base=tmp_path)
    assert "<table>" in body and "demo-20261120T080000-aaaa" in body
    assert 'href="runs/demo-20261120T080000-aaaa/notebooks/01_aggregate.html"' in body
    assert "HTML reports" in body
    assert 'href="notebooks/01_aggregate.html"' in panel.index_html(run_dir)  # no base: links as written
    assert "does not exist yet" in panel.index_html(runs_dir / "demo_crypto_long-20261125T090000-bbbb")


# ------------------------------------------------------------------------------------------- panel
def test_import_is_light():
    code = "import sys, quantlib.engine.panel; print('ipywidgets' in sys.modules, 'mistune' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_workbook_panel_builds_with_expected_widgets(runs_dir, tmp_path):
    import ipywidgets as w

    box = panel.workbook_panel(runs_dir, link_base=tmp_path)
    assert isinstance(box, w.VBox)
    widgets = list(panel._walk(box))
    buttons = {x.description: x for x in widgets if isinstance(x, w.Button)}
    assert set(buttons) == {"Run", "Refresh", "Refresh runs"}
    checks = {x.description: x for x in widgets if isinstance(x, w.Checkbox)}
    assert set(checks) == {"--skip-validation", "--skip-analysis", "--executor local"}
    dropdowns = {x.description: x for x in widgets if isinstance(x, w.Dropdown)}
    profiles, runs = dropdowns["Profile"], dropdowns["Run"]
    values = [v for _, v in profiles.options]
    assert "demo" in values and "demo_crypto_long" in values
    assert dict((v, label) for label, v in profiles.options)["demo_crypto_long"] == "demo_crypto_long · sleeve"
    assert any(isinstance(x, w.Output) for x in widgets)
    # runs newest first; the newest is selected and its (missing) INDEX.md is reported as such
    assert [v for _, v in runs.options] == ["demo_crypto_long-20261125T090000-bbbb", "ademo-20261122T100000-cccc",
                                           "demo-20261120T080000-aaaa"]
    htmls = [x for x in widgets if isinstance(x, w.HTML)]
    assert any("does not exist yet" in x.value for x in htmls)
    runs.value = "demo-20261120T080000-aaaa"
    assert any('href="runs/demo-20261120T080000-aaaa/notebooks/01_aggregate.html"' in x.value for x in htmls)
    # the command preview follows the profile and the flags; data profiles cannot take sleeve flags
    profiles.value = "demo_crypto_long"
    checks["--skip-validation"].value = True
    assert any("python run_book.py sleeve demo_crypto_long --skip-validation</code>" in x.value for x in htmls)
    profiles.value = "demo"
    assert checks["--skip-validation"].disabled and checks["--skip-analysis"].disabled
    assert checks["--executor local"].disabled
    assert any("python run_book.py data --profile demo</code>" in x.value for x in htmls)
    if "demo_meta" in values:  # a meta profile takes the executor flag, not the sleeve flags
        profiles.value = "demo_meta"
        checks["--executor local"].value = True
        assert checks["--skip-validation"].disabled and not checks["--executor local"].disabled
        assert any("python run_book.py meta demo_meta --executor local</code>" in x.value for x in htmls)
    # a new run shows up after Refresh runs
    fake_run(runs_dir, "demo-20261126T000000-dddd", "demo", "data", "RUNNING", "2026-11-26T00:00:00+00:00", {})
    buttons["Refresh runs"].click()
    assert runs.options[0][1] == "demo-20261126T000000-dddd"


def test_workbook_notebook_executes_under_papermill(runs_dir, tmp_path):
    import nbformat
    import papermill as pm

    source = nbformat.read(str(WORKBOOK), as_version=4)
    assert all(not c.get("outputs") for c in source.cells if c.cell_type == "code"), "commit it without outputs"
    assert any("parameters" in c.metadata.get("tags", []) for c in source.cells)
    os.environ["PATH"] = str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"]
    out = tmp_path / "00_workbook.out.ipynb"
    pm.execute_notebook(str(WORKBOOK), str(out), parameters={"runs_dir": str(runs_dir)}, kernel_name="python3",
                        progress_bar=False, cwd=str(WORKBOOK.parent))
    executed = nbformat.read(str(out), as_version=4)
    text = json.dumps([c.get("outputs", []) for c in executed.cells])
    assert "application/vnd.jupyter.widget-view+json" in text  # the panel was displayed
    assert "ademo-20261122T100000-cccc" in text  # run_table read the tmp runs dir, not the repository's
    assert "demo_crypto_long" in text


def test_run_button_starts_the_cli_and_refresh_shows_the_log(runs_dir, monkeypatch):
    import time

    import ipywidgets as w

    # `run_book.py runs` instead of a real phase: fast, and it proves the panel passes its runs dir
    monkeypatch.setattr(panel, "command_for", lambda kind, profile, run_id=None, flags=(): ["python", "run_book.py", "runs"])
    box = panel.workbook_panel(runs_dir)
    widgets = list(panel._walk(box))
    buttons = {x.description: x for x in widgets if isinstance(x, w.Button)}
    log = next(x for x in widgets if isinstance(x, w.Output) and x.layout.border)
    status = next(x for x in widgets if isinstance(x, w.HTML) and x.value == "<i>idle</i>")
    buttons["Run"].click()
    deadline = time.monotonic() + 120
    while "PASS" not in status.value and time.monotonic() < deadline:
        time.sleep(0.5)
        buttons["Refresh"].click()
    assert "PASS" in status.value
    text = "".join(o.get("text", "") for o in log.outputs)
    assert "demo_crypto_long-20261125T090000-bbbb" in text  # listed from the tmp runs dir


# ------------------------------------------------------------------- demo first, nested runs, links
def test_command_for_the_demo():
    assert panel.command_for("demo", panel.DEMO) == ["python", "run_book.py", "demo"]
    assert panel.command_for("demo", panel.DEMO, flags=["--executor", "local"]) == [
        "python", "run_book.py", "demo", "--executor", "local"]
    with pytest.raises(ValueError):
        panel.command_for("demo", panel.DEMO, run_id="x")
    with pytest.raises(ValueError):
        panel.command_for("demo", panel.DEMO, flags=["--skip-validation"])


def nested_meta(runs_dir: Path) -> str:
    meta = "demo_meta-20261127T000000-eeee"
    fake_run(runs_dir, meta, "demo_meta", "meta", "PASS", "2026-11-27T00:00:00+00:00", {})
    fake_run(runs_dir / meta / "sleeves", "crypto_long", "demo_crypto_long", "sleeve", "PASS",
             "2026-11-27T00:01:00+00:00", {"aggregate": {"status": "completed"}})
    return meta


def test_run_table_lists_a_metas_sleeve_runs_under_it(runs_dir):
    meta = nested_meta(runs_dir)
    table = panel.run_table(runs_dir)
    assert list(table["run_id"][:2]) == [meta, f"{meta}/crypto_long"]
    assert list(table["depth"][:2]) == [0, 1] and table["profile"].iloc[1] == "demo_crypto_long"
    assert Path(table["link"].iloc[1]) == (runs_dir / meta / "sleeves" / "crypto_long" / "INDEX.md").resolve()


def test_jupyter_href_serves_html_as_files_and_the_rest_in_lab(tmp_path):
    server = {"root_dir": str(tmp_path), "base_url": "/user/me/"}
    page = tmp_path / "runs" / "a b" / "notebooks" / "01_x.html"
    assert panel.jupyter_href(page, server) == "/user/me/files/runs/a%20b/notebooks/01_x.html"
    assert panel.jupyter_href(tmp_path / "runs" / "INDEX.md", {**server, "base_url": "/"}) == "/lab/tree/runs/INDEX.md"
    assert panel.jupyter_href("/elsewhere/x.html", server) is None  # outside the server's root


def test_index_html_links_through_the_jupyter_server(runs_dir, tmp_path):
    run_dir = runs_dir / "demo-20261120T080000-aaaa"
    body = panel.index_html(run_dir, server={"root_dir": str(tmp_path), "base_url": "/"})
    assert 'href="/files/runs/demo-20261120T080000-aaaa/notebooks/01_aggregate.html"' in body
    assert 'href="/lab/tree/runs/demo-20261120T080000-aaaa/notebooks/01_aggregate.ipynb"' in body
    assert "new browser tab" in body


def test_panel_defaults_to_the_demo_lists_nested_runs_and_picks_the_run_it_started(runs_dir, tmp_path, monkeypatch):
    import ipywidgets as w

    meta = nested_meta(runs_dir)
    started = {}

    def fake_start(argv, runs_dir=None, cwd=None, log_dir=None):  # a "run" that creates its run dir at once
        started.update(argv=argv, cwd=cwd)
        fake_run(Path(runs_dir), "demo-20261130T000000-ffff", "demo", "data", "PASS", "2026-11-30T00:00:00+00:00", {})
        proc = subprocess.Popen([sys.executable, "-c", "print('done')"], stdout=subprocess.DEVNULL)
        proc.wait()
        proc.log_path = tmp_path / "none.log"
        return proc

    monkeypatch.setattr(panel, "start_run", fake_start)
    box = panel.workbook_panel(runs_dir, link_base=tmp_path, server={})
    widgets = list(panel._walk(box))
    dropdowns = {x.description: x for x in widgets if isinstance(x, w.Dropdown)}
    profiles, runs = dropdowns["Profile"], dropdowns["Run"]
    htmls = [x for x in widgets if isinstance(x, w.HTML)]
    assert profiles.value == panel.DEMO and profiles.options[0][1] == panel.DEMO
    assert any("python run_book.py demo</code>" in x.value for x in htmls)
    assert f"{meta}/crypto_long" in [v for _, v in runs.options]  # a nested sleeve run is pickable
    runs.value = f"{meta}/crypto_long"
    assert any("crypto_long" in x.value and "<table>" in x.value for x in htmls)
    next(x for x in widgets if isinstance(x, w.Button) and x.description == "Run").click()
    assert started["argv"] == ["python", "run_book.py", "demo"]
    assert runs.value == "demo-20261130T000000-ffff"  # the picker shows the run Run started


def test_panel_works_on_the_checkout_jupyterlab_opened(tmp_path, monkeypatch):
    import ipywidgets as w

    checkout = tmp_path / "checkout"
    shutil.copytree(default_profiles_dir(), checkout / "profiles")
    (checkout / "profiles" / "only_here.yaml").write_text("description: a profile of this checkout\n", encoding="utf-8")
    (checkout / "notebooks").mkdir()
    fake_run(checkout / "runs", "demo-20261101T000000-gggg", "demo", "data", "PASS", "2026-11-01T00:00:00+00:00", {})
    monkeypatch.delenv("FW_WORKSPACE", raising=False)
    monkeypatch.chdir(checkout / "notebooks")  # JupyterLab's kernel runs in the notebook's folder
    box = panel.workbook_panel(server={})
    dropdowns = {x.description: x for x in panel._walk(box) if isinstance(x, w.Dropdown)}
    assert "only_here" in [v for _, v in dropdowns["Profile"].options]
    assert [v for _, v in dropdowns["Run"].options] == ["demo-20261101T000000-gggg"]
