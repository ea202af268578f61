"""report.html (engine.run_report): formatting, a run without its artifacts (each section says what is missing,
the page is still written), and the page the executor writes at the end of a real sleeve run (first link of
INDEX.md, sha256 in the manifest, the CLI's last line, no absolute path, dates without 00:00:00)."""
from __future__ import annotations

import re
import shutil

import pandas as pd
import pytest

from quantlib.core import registry, storage
from quantlib.core.figures import STATIC_DIR
from quantlib.core.profiles import load_profile
from quantlib.core.runs import REPORT, Run
from quantlib.engine import report_charts
from quantlib.engine.report_data import Missing, Source, Streams, exposure_by_decision, meta_exposure, meta_streams, with_totals
from quantlib.engine.run_report import _HEAD, day, kpi_block, pct, render, scrub, when, write_report
from quantlib.engine.verify import verify_run


def figure_divs(page: str) -> int:
    return len(re.findall(r'class="plotly-graph-div"', page))


def notes(page: str) -> list[str]:
    return re.findall(r'<p class="missing"><b>([^<]+)</b>: not available — ([^<]+)</p>', page)


def test_percentages_carry_their_unit_and_dates_have_no_clock():
    assert pct(0.1234) == "12.3 %" and pct(-0.5, 2) == "-50.00 %" and pct(float("nan")) == "—"
    assert pct(19.97) == "1,997.0 %"
    assert day(pd.Timestamp("2026-03-28", tz="UTC")) == "2026-03-28" and day(None) == "—" and day(pd.NaT) == "—"
    assert when("2026-12-01T22:10:36+00:00") == "2026-12-01 22:10 UTC"


def test_exposure_signs_shorts_and_groups_by_asset_class_venue_and_side():
    holdings = pd.DataFrame({"profile": ["hrp", "hrp", "hrp", "mv"], "symbol": ["BINANCE:A", "BINANCE:B", "SIM:C", "BINANCE:A"],
                             "weight": [0.5, 0.3, 0.2, 1.0], "direction": ["LONG", "SHORT", "LONG", "LONG"],
                             "decision": pd.to_datetime(["2026-01-05"] * 4, utc=True)})
    frame = with_totals(exposure_by_decision(holdings, "hrp", "crypto"))
    row = frame.iloc[0]
    assert row["crypto · BINANCE · long"] == 0.5 and row["crypto · BINANCE · short"] == -0.3
    assert row["crypto · SIM · long"] == 0.2
    assert row["net"] == pytest.approx(0.4) and row["gross"] == pytest.approx(1.0)
    assert frame.index[0] == pd.Timestamp("2026-01-05")  # a plain date, no time zone or clock


def test_a_run_without_artifacts_gets_a_page_that_says_what_is_missing(tmp_path):
    run = Run.create(tmp_path / "runs", load_profile("demo_crypto_long"), "sleeve", tmp_path, run_id="empty")
    page = write_report(run)
    text = page.read_text(encoding="utf-8")
    assert page == run.dir / REPORT
    missing = notes(text)
    assert missing and all("was not written by this run" in why for _, why in missing)
    assert registry.path("sleeve", "wf_returns") in text  # the note names the run-relative file
    assert "<h2>Gates</h2>" in text and "not run" in text and "<h2>Provenance</h2>" in text
    assert str(tmp_path) not in text
    assert f'src="../{STATIC_DIR}/plotly-' in text


def test_render_refuses_a_data_run(tmp_path):
    run = Run.create(tmp_path / "runs", load_profile("demo"), "data", tmp_path, run_id="data1")
    with pytest.raises(ValueError, match="sleeve and meta runs"):
        render(run, run.dir / REPORT)


def test_the_sleeve_run_writes_its_report_links_it_first_and_prints_it_last(long_sleeve):
    result, run = long_sleeve
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    page = run.dir / REPORT
    assert result.stdout.strip().splitlines()[-1] == f"open: {page}"
    record = Run.at(run.dir).manifest["report"]
    assert record == {"path": REPORT, "sha256": storage.sha256_file(page)}
    index = (run.dir / "INDEX.md").read_text()
    links = re.findall(r"\]\(([^)]+)\)", index)
    assert links[0] == REPORT
    text = page.read_text(encoding="utf-8")
    assert not notes(text), notes(text)
    assert figure_divs(text) >= 9
    assert str(run.dir) not in text and str(run.workspace) not in text and "00:00:00" not in text
    for heading in ("Key figures (out of sample)", "Equity and drawdowns", "Calendar returns", "The five worst drawdowns",
                    "Exposure over time", "Turnover and cost drag per rebalance", "Gates", "Provenance"):
        assert re.search(rf">{re.escape(heading)}</h[23]>", text), heading
    assert "market: " in text and "equal-weight universe" in text
    assert len(page.read_bytes()) < 400_000  # plotly.js is shared, not inlined


def test_a_section_whose_artifact_is_gone_says_so_and_the_rest_draws(long_sleeve, tmp_path):
    _, run = long_sleeve
    copy = tmp_path / "runs" / run.id
    shutil.copytree(run.dir, copy, ignore=shutil.ignore_patterns("notebooks", "plots"))
    (copy / registry.path("sleeve", "wf_holdings")).unlink()
    text = render(Run.at(copy), copy / REPORT)
    assert notes(text) == [("Exposure over time", f"{registry.path('sleeve', 'wf_holdings')} was not written by this run")]
    assert figure_divs(text) >= 8


def test_verify_checks_the_report_against_its_recorded_sha256(long_sleeve, tmp_path):
    _, run = long_sleeve
    assert [i.status for i in verify_run(run).items if i.item == REPORT] == ["OK"]
    copy = tmp_path / "runs" / run.id
    shutil.copytree(run.dir, copy)
    (copy / REPORT).write_text((copy / REPORT).read_text(encoding="utf-8") + "<!-- edited -->", encoding="utf-8")
    assert [i.status for i in verify_run(Run.at(copy)).items if i.item == REPORT] == ["CHANGED"]


# ------------------------------------------------------------------------------------ runs with parts missing
def meta_run(tmp_path, run_dirs=(None, None)) -> Run:
    """A meta run with its streams and weights but no flattened book (sleeves without runs unless given)."""
    run = Run.create(tmp_path / "runs", load_profile("demo_meta"), "meta", tmp_path, run_id="m1")
    dates = pd.bdate_range("2026-01-05", periods=40, name="date")
    rng = pd.Series(range(40), dates, dtype=float)
    sleeves = pd.DataFrame({"a": 0.001 * (rng % 5 - 2), "b": 0.002 * (rng % 3 - 1)})
    write = {"sleeve_returns": sleeves, "meta_returns": pd.DataFrame({"meta": sleeves.mean(axis=1)}),
             "meta_weights_history": pd.DataFrame({"a": [0.5, 0.4], "b": [0.5, 0.6]},
                                                  dates[[0, 20]].rename("rebalance_date")),
             "meta_weights": pd.DataFrame({"weight": [0.4, 0.6]}, pd.Index(["a", "b"], name="sleeve"))}
    for name, frame in write.items():
        storage.write_parquet(run.dir / registry.path("meta", name), frame)
    storage.write_json(run.dir / registry.path("meta", "aggregation"), {"annualization": 252})
    storage.write_json(run.dir / registry.path("meta", "sleeves"), {"sleeves": [
        {"id": sid, "kind": "sleeve", "run_dir": None if d is None else str(d)} for sid, d in zip("ab", run_dirs)]})
    return run


def test_a_meta_without_its_flattened_book_says_so_in_that_section(tmp_path):
    run = meta_run(tmp_path)
    text = render(run, run.dir / REPORT)
    gone = f"{registry.path('meta', 'meta_flattened')} was not written by this run"
    assert ("Flattened book", gone) in notes(text) and ("Weights treemap (physical names)", gone) in notes(text)
    assert "TypeError" not in text and "Key figures (out of sample)</h2>" in text


def test_sleeves_without_a_run_are_skipped_not_read_from_the_working_directory(tmp_path, monkeypatch):
    run = meta_run(tmp_path)
    cwd = tmp_path / "cwd"  # a folder that looks like a sleeve run: Path("") would read it
    dates = pd.bdate_range("2026-01-05", periods=40, name="date")
    storage.write_parquet(cwd / registry.path("sleeve", "wf_benchmarks"),
                          pd.DataFrame({"market_benchmark": 0.001, "universe_equal_weight": 0.0}, dates))
    storage.write_parquet(cwd / registry.path("sleeve", "wf_holdings"), pd.DataFrame(
        {"profile": ["hrp"], "symbol": ["BINANCE:A"], "weight": [1.0], "direction": ["LONG"], "decision": dates[:1]}))
    monkeypatch.chdir(cwd)
    src = Source(run, "meta")
    streams = meta_streams(src)
    assert streams.market is None and list(streams.returns.columns) == ["meta", "equal-weight sleeves"]
    with pytest.raises(Missing, match="no sleeve of this meta recorded"):
        meta_exposure(src, pd.DatetimeIndex(streams.returns.index))


def test_a_sleeve_without_its_flattened_book_still_gets_a_page(tmp_path):
    run = Run.create(tmp_path / "runs", load_profile("demo_crypto_long"), "sleeve", tmp_path, run_id="s1")
    dates = pd.date_range("2026-01-01", periods=30, tz="UTC", name="date")
    book = [value for value in run.profile.optimizer.profiles][0]
    profile = str(getattr(book, "value", book))
    storage.write_parquet(run.dir / registry.path("sleeve", "wf_returns"),
                          pd.DataFrame({profile: [0.01, -0.005, 0.002] * 10}, dates))
    storage.write_parquet(run.dir / registry.path("sleeve", "wf_benchmarks"),
                          pd.DataFrame({"market_benchmark": [0.004, -0.002, 0.0] * 10,
                                        "universe_equal_weight": [0.001, 0.0, -0.001] * 10}, dates))
    text = render(run, run.dir / REPORT)
    gone = f"{registry.path('sleeve', 'flattened')} was not written by this run"
    assert ("Weights treemap (physical names)", gone) in notes(text) and ("Physical book", gone) in notes(text)
    assert "Equity and drawdowns</h2>" in text and figure_divs(text) >= 5


def test_key_figures_of_a_stream_without_a_day_is_a_missing_note():
    empty = pd.DataFrame({"meta": pd.Series(dtype=float, index=pd.DatetimeIndex([]))})
    streams = Streams(empty, "meta", None, None, 252, pd.DataFrame(columns=["turnover_annual", "cost_drag"]))
    with pytest.raises(Missing, match="no out-of-sample day"):
        kpi_block(streams, "")


def test_scrub_replaces_whole_path_components_and_leaves_no_absolute_path(tmp_path):
    workspace = tmp_path / "ws"
    run = Run.create(workspace / "runs", load_profile("demo_crypto_long"), "sleeve", workspace, run_id="R1")
    pinned = tmp_path / "elsewhere" / "runs" / "pinned-1"
    storage.write_json(pinned / "manifest.json", {"run_id": "pinned-1"})
    text = (f"<td>{run.dir}/backtest/x.parquet</td><td>{run.dir}</td> <td>{workspace}/runs/R10/x</td> "
            f"<td>{workspace}/profiles/a.yaml</td><td>sleeve b at {pinned}/sleeves/b/backtest/returns.parquet: gone</td>"
            f"<td>(/nowhere/at/all.txt)</td><td>&#x27;/srv/x/y&#x27;</td>")
    out = scrub(text, run)
    assert "<td>backtest/x.parquet</td><td>.</td>" in out
    assert "<td>&lt;runs&gt;/R10/x</td>" in out  # R1 is not a prefix of R10
    assert "<td>&lt;workspace&gt;/profiles/a.yaml</td>" in out
    assert "sleeve b at …/pinned-1/sleeves/b/backtest/returns.parquet: gone" in out
    assert "(…/all.txt)" in out and "&#x27;…/y&#x27;" in out
    assert str(tmp_path) not in out and "/nowhere" not in out and "/srv" not in out
    kept = '<a href="sleeves/b/report.html">b</a> <script src="../_static/plotly.js"></script> 1/N, a / b https://x.org/p'
    assert scrub(kept, run) == kept


def test_every_class_the_page_uses_has_a_style(tmp_path):
    run = Run.create(tmp_path / "runs", load_profile("demo_crypto_long"), "sleeve", tmp_path, run_id="g1")
    gate = next(g for st in registry.stages("sleeve") for g in st.gates)
    storage.write_json(run.dir / gate.path, {"passed": False, "checks": [{"code": "x", "detail": "bad", "passed": False}]})
    text = render(run, run.dir / REPORT)
    assert 'class="failrow"' in text
    style = _HEAD.split("<style>")[1].split("</style>")[0]
    used = {c for attr in re.findall(r'class="([^"]+)"', text) for c in attr.split()} - {"sortable"}  # a script hook
    assert {c for c in used if not re.search(rf"\.{re.escape(c)}\b", style)} == set()


def test_legends_sit_under_the_plot_area():
    palette = {f"s{i}": "#000" for i in range(6)}
    returns = pd.DataFrame({name: [0.01, -0.01, 0.02] for name in palette}, pd.date_range("2026-01-01", periods=3))
    fig = report_charts.equity_figure(returns, palette, "s0")
    legend = fig.layout.legend
    assert legend.orientation == "h" and legend.yanchor == "top" and legend.y < 0
    plot_height = fig.layout.height - fig.layout.margin.t - fig.layout.margin.b
    assert -legend.y * plot_height == pytest.approx(report_charts.LEGEND_GAP)
    tree = report_charts.treemap_figure(pd.DataFrame({"symbol": ["A"], "net_weight": [0.5], "gross_weight": [0.5]}), "t")
    assert tree.layout.margin.b == 10  # a figure's own margins still win
