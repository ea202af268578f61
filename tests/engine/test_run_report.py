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
from quantlib.engine.report_data import exposure_by_decision, with_totals
from quantlib.engine.run_report import day, pct, render, when, write_report
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
