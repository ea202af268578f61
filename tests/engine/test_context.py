"""A stage's context (quantlib.engine.context.StageContext) on a run created in tmp_path.

Covered: write/read round trips in each declared format (parquet frame, JSON document, text) at the
registry's path, placeholders (`{profile}`, `{scanner}`) and their validation, `path()` creating the
artifact's directories, `exists()`, a missing input (DataError naming the writer and the resume
command), and the contract: reading or writing an artifact the stage does not declare, writing
another stage's artifact (even one it reads) and escaping a placeholder all raise
`UndeclaredArtifactError` / an identifier error naming the stage and artifact, and write nothing.
"""
from __future__ import annotations

import json

import pandas as pd
import pytest

from quantlib.core import registry
from quantlib.core.errors import DataError, IdentifierError, WorkbookError
from quantlib.core.profiles import load_profile
from quantlib.core.runs import Run
from quantlib.engine.context import StageContext, UndeclaredArtifactError


@pytest.fixture
def run(tmp_path) -> Run:
    return Run.create(tmp_path / "runs", load_profile("demo_crypto_long"), "sleeve", tmp_path, run_id="sleeve-1")


def ctx(run: Run, stage: str, phase: str = "sleeve") -> StageContext:
    return StageContext(run=run, phase=phase, stage=registry.find_stage(phase, stage)[1])


def frame() -> pd.DataFrame:
    index = pd.date_range("2026-01-01", periods=3, freq="D", tz="UTC", name="date")
    return pd.DataFrame({"X:AAA": [0.01, -0.02, 0.03], "X:BBB": [0.0, 0.5, -0.25]}, index=index)


def files(run: Run) -> set[str]:
    return {str(p.relative_to(run.dir)) for p in run.dir.rglob("*") if p.is_file()}


# ------------------------------------------------------------------ round trips
def test_a_parquet_artifact_round_trips_between_its_writer_and_a_reader(run):
    target = ctx(run, "aggregate").write("returns", frame())
    assert target == run.path("artifacts/returns.parquet") and target.exists()
    assert pd.read_parquet(target).equals(frame())  # a plain parquet file at the registry's path
    back = ctx(run, "select").read("returns")  # select declares `returns` among its reads
    pd.testing.assert_frame_equal(back, frame(), check_freq=False)  # parquet keeps no index freq


def test_a_json_artifact_round_trips(run):
    doc = {"n_selected": 2, "funnel": [{"step": "candidates", "remaining": 5}], "stage_reached": None}
    target = ctx(run, "select").write("selection_audit", doc)
    assert target == run.path("artifacts/selection_audit.json")
    assert json.loads(target.read_text()) == doc
    assert ctx(run, "report").read("selection_audit") == doc


def test_a_text_artifact_round_trips_and_a_stage_may_read_its_own_output(run):
    report = ctx(run, "report")
    text = "# Sleeve tearsheet\n\nünïcode · ok\n"
    target = report.write("tearsheet", text)
    assert target == run.path("reports/tearsheet.md") and target.read_text(encoding="utf-8") == text
    assert report.read("tearsheet") == text
    csv = frame().to_csv()
    report.write("weights_csv", csv)
    assert run.path("artifacts/weights.csv").read_text(encoding="utf-8") == csv


def test_a_placeholder_path_is_filled_from_its_field(run):
    report = ctx(run, "report")
    target = report.write("tearsheet_html", "<html></html>", profile="hrp")
    assert target == run.path("reports/tearsheet_hrp.html")
    assert report.read("tearsheet_html", profile="hrp") == "<html></html>"
    assert report.exists("tearsheet_html", profile="hrp") and not report.exists("tearsheet_html", profile="mv")
    with pytest.raises(WorkbookError, match=r"artifact 'tearsheet_html' \(reports/tearsheet_\{profile\}.html\) "
                                            r"needs profile=\.\.\."):
        report.write("tearsheet_html", "<html></html>")


# ------------------------------------------------------------------ path() and exists()
def test_path_creates_the_artifact_directory_but_not_the_file(run):
    assert not (run.dir / "backtest").exists() and not (run.dir / "plots").exists()
    target = ctx(run, "validate").path("wf_returns")
    assert target == run.path("backtest/returns.parquet")
    assert target.parent.is_dir() and not target.exists()
    plot = ctx(run, "post_analysis").path("drift_plot", profile="hrp")
    assert plot == run.path("plots/drift_hrp.html") and plot.parent.is_dir() and not plot.exists()


def test_exists_reports_a_declared_input_before_and_after_it_is_written(run):
    analysis = ctx(run, "post_analysis")
    assert analysis.exists("wf_holdings") is False  # the optional validation did not run
    ctx(run, "validate").write("wf_holdings", frame().reset_index())
    assert analysis.exists("wf_holdings") is True
    assert analysis.read("wf_holdings").equals(frame().reset_index())


def test_reading_a_missing_input_names_the_file_its_writer_and_the_resume_command(run):
    with pytest.raises(DataError) as err:
        ctx(run, "report").read("weights")
    assert str(err.value) == (f"stage report: missing input {run.path('artifacts/weights.parquet')} (written by stage "
                              f"optimize); run the earlier stages of run sleeve-1 first "
                              f"(python run_book.py sleeve demo_crypto_long --run-id sleeve-1)")


def test_the_data_phase_resume_command_names_the_profile_option(tmp_path):
    data = Run.create(tmp_path / "runs", load_profile("demo"), "data", tmp_path, run_id="data-1")
    with pytest.raises(DataError, match=r"\(python run_book\.py data --profile demo --run-id data-1\)$"):
        ctx(data, "scan", phase="data").read("technicals")


# ------------------------------------------------------------------ the contract
def test_reading_an_undeclared_artifact_is_refused_naming_stage_and_artifact(run):
    ctx(run, "optimize").write("weights", frame().reset_index())  # it exists, but select may not read it
    with pytest.raises(UndeclaredArtifactError) as err:
        ctx(run, "select").read("weights")
    assert str(err.value) == ("stage sleeve/select reads artifact 'weights', which its registry entry does not declare; "
                              "add it to the stage's reads in quantlib/core/registry.py")
    with pytest.raises(UndeclaredArtifactError, match="stage sleeve/select reads artifact 'weights'"):
        ctx(run, "select").exists("weights")
    assert isinstance(err.value, WorkbookError)


@pytest.mark.parametrize("name", ["returns", "weights", "no_such_artifact"],
                         ids=["one-it-reads", "another-stages", "unknown"])
def test_writing_an_artifact_the_stage_does_not_write_is_refused_and_writes_nothing(run, name):
    select = ctx(run, "select")
    before = files(run)
    with pytest.raises(UndeclaredArtifactError) as err:
        select.write(name, frame())
    assert str(err.value) == (f"stage sleeve/select writes artifact {name!r}, which its registry entry does not "
                              f"declare; add it to the stage's writes in quantlib/core/registry.py")
    with pytest.raises(UndeclaredArtifactError, match=f"stage sleeve/select writes artifact {name!r}"):
        select.path(name)
    assert files(run) == before


def test_a_stage_of_another_phase_cannot_write_a_same_named_artifact(tmp_path):
    data = Run.create(tmp_path / "runs", load_profile("demo"), "data", tmp_path, run_id="data-1")
    universe = ctx(data, "universe", phase="data")
    universe.write("universe", {"symbols": []})  # the data phase's own `universe`
    with pytest.raises(UndeclaredArtifactError, match="stage data/universe writes artifact 'returns'"):
        universe.write("returns", frame())


@pytest.mark.parametrize("value", ["../artifacts/universe", "a/b", "..", ""])
def test_a_placeholder_value_cannot_reach_another_artifact(tmp_path, value):
    data = Run.create(tmp_path / "runs", load_profile("demo"), "data", tmp_path, run_id="data-1")
    universe = ctx(data, "universe", phase="data")
    universe.write("universe", {"symbols": ["KEEP"]})
    scan = ctx(data, "scan", phase="data")
    with pytest.raises(IdentifierError, match="invalid scanner"):
        scan.write("export", {"candidates": []}, scanner=value)
    assert json.loads(data.path("artifacts/universe.json").read_text()) == {"symbols": ["KEEP"]}
    assert scan.write("export", {"candidates": []}, scanner="binance_spot_base") == data.path(
        "export/binance_spot_base.json")
