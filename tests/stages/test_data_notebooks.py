"""End to end: `python run_book.py data --profile demo` executes the six data notebooks (SPEC §0, §1).

The data phase runs once per session (plus one incremental re-run against the same lakehouse and one
resume of the complete run), on the simulated venue with a fixed clock and a small universe. Runs and
the lakehouse live in a session temp dir; nothing is written to the repository's runs/ or lakehouse/.
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest

from quantlib.core import registry
from quantlib.engine import executor as book
from quantlib.core import storage
from quantlib.core.runs import Run

SCANNERS = ["binance_spot_base", "rating_all_long", "rating_all_short", "rating_ma_long", "rating_ma_short"]
STAGES = ["universe", "ingest", "metadata", "features", "scan", "backfill"]
EXCLUDED_BASES = {"USDC", "FDUSD", "TUSD", "DAI", "USDP", "PAXG", "XAUT"}
SPIKE = "BINANCE:SPIKEUSDT"
GAPPY = "BINANCE:GAPPYUSDT"
DELIST = "BINANCE:DELISTUSDT"
AS_OF = pd.Timestamp("2026-11-25T06:00:00Z")


def read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def exports(run: Run) -> dict[str, dict]:
    return {name: read_json(run.dir / "export" / f"{name}.json") for name in SCANNERS}


def lake_excluded(lake: Path) -> set[str]:
    registry = pd.read_parquet(lake / "registry.parquet")
    return set(registry.loc[registry["status"].isin(["TOXIC", "ZERO_VOLUME", "FLAT_PRICE"]), "symbol"])


# ---------------------------------------------------------------------------------------------- run
def test_data_run_passes_with_index(first):
    assert first.result.returncode == 0, f"{first.result.stdout}\n{first.result.stderr}"
    run = first.run
    assert run.dir.parent == first.lake.parent / "runs"  # isolated in the temp dir
    assert run.manifest["status"] == "PASS" and run.manifest["profile"] == "demo"
    assert run.manifest["phase"] == "data"
    text = (run.dir / "INDEX.md").read_text(encoding="utf-8")
    assert re.search(r"\*\*Status:\*\*\s*PASS\b", text)
    assert "`demo`" in text and f"`{run.id}`" in text
    assert "FAIL" not in text
    for stage in STAGES:
        assert re.search(rf"\|\s*\d+\s*\|\s*{stage}\s*\|\s*completed\s*\|", text), stage
    assert "PASS in" in first.result.stdout
    # the profile the run used is the isolated one
    profile = run.profile
    assert profile.data.lakehouse == str(first.lake)
    assert profile.source.n_bases == 25 and profile.data.lookback_days == 300


def test_every_declared_output_exists_and_matches_its_hash(first):
    run = first.run
    for stage in registry.stages("data"):
        rec = run.manifest["stages"][stage.name]
        assert rec["status"] == "completed", (stage.name, rec)
        declared = stage.expanded_outputs(run.profile)
        assert sorted(rec["outputs"]) == sorted(declared), stage.name
        for rel in declared:
            path = run.dir / rel
            assert path.exists(), rel
            assert storage.sha256_file(path) == rec["outputs"][rel], f"{rel} changed since the stage wrote it"
        for rel in stage.lakehouse_writes:
            assert rec["lakehouse_outputs"][rel] == first.lake_hashes[rel], f"lakehouse/{rel} of {stage.name}"
        assert book.stage_complete(run, stage)


def test_executed_notebooks_and_html_exist_for_all_stages(first):
    run = first.run
    for index, stage in enumerate(STAGES, start=1):
        rec = run.manifest["stages"][stage]
        nb_path = run.dir / "notebooks" / f"{index:02d}_{stage}.ipynb"
        assert rec["notebook"] == f"notebooks/{nb_path.name}"
        assert rec["html"] == f"notebooks/{nb_path.with_suffix('.html').name}"
        assert nb_path.exists() and nb_path.with_suffix(".html").stat().st_size > 0
        nb = read_json(nb_path)
        outputs = [o for c in nb["cells"] if c["cell_type"] == "code" for o in c.get("outputs", [])]
        assert outputs, f"{nb_path.name} has no outputs: not executed"
        assert not [o for o in outputs if o.get("output_type") == "error"], nb_path.name
        injected = [c for c in nb["cells"] if "injected-parameters" in c["metadata"].get("tags", [])]
        assert injected and str(run.dir) in "".join(injected[0]["source"])


# ---------------------------------------------------------------------------------------------- exports
def test_scanner_exports_follow_the_contract(first):
    run = first.run
    docs = exports(run)
    for name, doc in docs.items():
        for key in ("scanner", "run_id", "generated_at", "direction", "logic", "count", "funnel", "candidates"):
            assert key in doc, (name, key)
        assert doc["scanner"] == name and doc["run_id"] == run.id
        assert doc["count"] == len(doc["candidates"]) > 0, name
        remaining = [step["remaining"] for step in doc["funnel"]]
        assert remaining and all(a >= b for a, b in zip(remaining, remaining[1:])), (name, doc["funnel"])
        assert remaining[-1] == doc["count"], (name, doc["funnel"])
        assert all({"filter", "remaining"} <= set(step) for step in doc["funnel"])
        for cand in doc["candidates"]:
            for key in ("symbol", "base", "quote", "direction", "logic"):
                assert key in cand, (name, key, cand)
            assert cand["direction"] == doc["direction"] and cand["logic"] == doc["logic"]
            assert re.fullmatch(r"[A-Z0-9]+:[A-Z0-9._-]+", cand["symbol"])
            assert cand["quote"] in ("USDT", "USDC", "FDUSD")
            assert cand["base"] not in EXCLUDED_BASES, (name, cand["symbol"])
        bases = [c["base"] for c in doc["candidates"]]
        assert len(bases) == len(set(bases)), f"{name}: two candidates share a base"
    assert docs["binance_spot_base"]["logic"] == "base"
    assert {n: (docs[n]["direction"], docs[n]["logic"]) for n in SCANNERS[1:]} == {
        "rating_all_long": ("LONG", "rating_all"), "rating_all_short": ("SHORT", "rating_all"),
        "rating_ma_long": ("LONG", "rating_ma"), "rating_ma_short": ("SHORT", "rating_ma")}


@pytest.mark.parametrize("scanner, field, bound, order", [
    ("rating_all_long", "recommend_all", -0.3, "desc"),
    ("rating_all_short", "recommend_all", 0.0, "asc"),
    ("rating_ma_long", "recommend_ma", 0.0, "desc"),
    ("rating_ma_short", "recommend_ma", 0.0, "asc"),
])
def test_rating_scanners_filter_and_sort(first, scanner, field, bound, order):
    doc = exports(first.run)[scanner]
    values = [c[field] for c in doc["candidates"]]
    assert values and all(v is not None for v in values)
    if order == "desc":
        assert all(v > bound for v in values), values
        assert values == sorted(values, reverse=True)
    else:
        assert all(v < bound for v in values), values
        assert values == sorted(values)


def test_scanner_values_match_the_technicals_snapshot(first):
    """The ratings in the exports are the run's technicals, not something else."""
    techs = pd.read_parquet(first.run.dir / "artifacts" / "technicals.parquet").set_index("symbol")
    for cand in exports(first.run)["rating_all_long"]["candidates"]:
        assert cand["recommend_all"] == pytest.approx(techs.at[cand["symbol"], "recommend_all"])


def test_stable_and_gold_bases_reach_the_universe_but_no_export(first):
    """The exclusion checks above are meaningful only if the venue offers those bases."""
    markets = pd.read_parquet(first.run.dir / "artifacts" / "markets.parquet")
    assert EXCLUDED_BASES <= set(markets["base"])


def test_toxic_spike_is_registered_and_in_no_export(first):
    registry = pd.read_parquet(first.lake / "registry.parquet")
    spike = registry[registry["symbol"] == SPIKE]
    assert "TOXIC" in set(spike["status"]), registry
    toxic = spike[spike["status"] == "TOXIC"].iloc[0]
    assert toxic["value"] >= 5.0 and "500%" in toxic["reason"].replace(" ", "")
    assert list(registry.columns) == ["symbol", "status", "reason", "detected_at", "bar_ts", "value"]
    assert toxic["bar_ts"] == pd.Timestamp("2026-10-26", tz="UTC")  # the spike bar, not the detection time
    assert toxic["detected_at"] == AS_OF
    universe = read_json(first.run.dir / "artifacts" / "universe.json")
    assert SPIKE in universe["symbols"], "the spike passes the market-level filters; the guard must catch it"
    report = pd.read_parquet(first.run.dir / "artifacts" / "ingest_report.parquet").set_index("symbol")
    assert report.at[SPIKE, "status"] == "toxic"
    assert not (first.lake / "ohlcv" / "1d" / "BINANCE_SPIKEUSDT.parquet").exists(), "toxic bars merged"
    for name, doc in exports(first.run).items():
        assert SPIKE not in {c["symbol"] for c in doc["candidates"]}, name
    summary = read_json(first.run.dir / "artifacts" / "scan_summary.json")
    assert SPIKE in summary["excluded_symbols"]


# ---------------------------------------------------------------------------------------------- lakehouse
def test_features_matrix_has_one_row_per_stored_bar_of_each_usable_symbol(first):
    matrix = pd.read_parquet(first.lake / "features_matrix.parquet")
    assert list(matrix.columns)[:7] == ["ts", "symbol", "recommend_all", "recommend_ma", "recommend_other",
                                        "adx", "rsi"]
    assert isinstance(matrix["ts"].dtype, pd.DatetimeTZDtype)
    assert not matrix.duplicated(["ts", "symbol"]).any()
    excluded = lake_excluded(first.lake)
    stored = sorted(p.stem.replace("_", ":", 1) for p in (first.lake / "ohlcv" / "1d").glob("*.parquet"))
    usable = [s for s in stored if s not in excluded]
    assert len(usable) >= 20
    assert set(matrix["symbol"]) == set(usable)
    assert not set(matrix["symbol"]) & excluded
    by_symbol = dict(tuple(matrix.groupby("symbol")))
    for symbol in usable:
        bars = pd.read_parquet(first.lake / "ohlcv" / "1d" / f"{symbol.replace(':', '_', 1)}.parquet")
        rows = by_symbol[symbol]
        assert len(rows) == len(bars), symbol
        assert list(rows["ts"].sort_values()) == list(bars["ts"].sort_values()), symbol
    # ratings are defined after warm-up, bounded, and recommend_all is the mean of the two groups
    latest = matrix.sort_values("ts").groupby("symbol").tail(1)
    assert latest["recommend_all"].notna().all()
    assert latest["recommend_all"].between(-1, 1).all()
    assert ((latest["recommend_ma"] + latest["recommend_other"]) / 2 - latest["recommend_all"]).abs().max() < 1e-9
    report = read_json(first.run.dir / "artifacts" / "backfill_report.json")
    assert report["rows"] == len(matrix) and report["symbols"] == len(usable)


def test_symbols_table_has_sizes_and_reports_missing_lot_size(first):
    symbols = pd.read_parquet(first.lake / "symbols.parquet")
    for col in ("symbol", "tick_size", "lot_size", "min_notional", "maker_fee", "taker_fee", "updated_at"):
        assert col in symbols.columns, col
    assert symbols["symbol"].is_unique
    row = symbols.set_index("symbol").loc[GAPPY]
    assert pd.isna(row["lot_size"]) and pd.notna(row["tick_size"])
    assert symbols.set_index("symbol").loc["BINANCE:BTCUSDT", ["tick_size", "lot_size"]].notna().all()
    report = read_json(first.run.dir / "artifacts" / "metadata_report.json")
    assert GAPPY in report["missing_tick_or_lot"]
    assert GAPPY in report["missing_fields"]["lot_size"]
    assert "BINANCE:BTCUSDT" not in report["missing_tick_or_lot"]


def test_symbols_table_keeps_the_delisted_market_with_its_history(first, second):
    symbols = pd.read_parquet(first.lake / "symbols.parquet").set_index("symbol")
    assert list(symbols.columns)[-3:] == ["updated_at", "first_seen", "inactive_since"]
    assert (symbols["first_seen"] == AS_OF).all()  # the source's clock (sim as_of)
    assert not symbols.at[DELIST, "active"] and symbols.at[DELIST, "inactive_since"] == AS_OF
    assert symbols.loc[symbols["active"], "inactive_since"].isna().all()
    markets = pd.read_parquet(first.run.dir / "artifacts" / "markets.parquet")
    assert set(symbols.index) == set(markets["symbol"])


# ---------------------------------------------------------------------------------------------- re-runs
def test_second_run_finds_every_ingested_symbol_fresh(first, second):
    assert second.result.returncode == 0, f"{second.result.stdout}\n{second.result.stderr}"
    assert second.run.id != first.run.id and second.run.manifest["status"] == "PASS"
    before = pd.read_parquet(first.run.dir / "artifacts" / "ingest_report.parquet").set_index("symbol")
    after = pd.read_parquet(second.run.dir / "artifacts" / "ingest_report.parquet").set_index("symbol")
    ingested = before.index[(before["status"] == "added") & (before["bars_behind"] == 0)]
    assert len(ingested) >= 20
    assert (after.loc[ingested, "status"] == "fresh").all(), after.loc[ingested, ["status", "reason"]]
    assert (after.loc[ingested, "rows_added"] == 0).all() and (after.loc[ingested, "bars_behind"] == 0).all()
    assert "added" not in set(after["status"]) and after["rows_added"].sum() == 0
    stopped = before.index[(before["status"] == "added") & (before["bars_behind"] > 0)]  # feeds that stopped
    assert (after.loc[stopped, "status"] == "unchanged").all(), after.loc[stopped, ["status", "reason"]]
    assert set(after["status"]) <= {"fresh", "unchanged", "toxic"}, after["status"].value_counts()
    assert after.at[SPIKE, "status"] == "toxic"
    assert (after.loc[ingested, "bars"] == before.loc[ingested, "bars"]).all()


def test_resume_of_a_complete_run_skips_every_stage(workspace, first):
    notebooks = {p.name: p.stat().st_mtime_ns for p in (first.run.dir / "notebooks").glob("*.ipynb")}
    result = workspace.book("data", "--profile", "demo", "--run-id", first.run.id)
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    assert f"resuming run {first.run.id}" in result.stdout
    for index, stage in enumerate(STAGES, start=1):
        assert f"[{index}/6] {stage}: complete, skipped (resume)" in result.stdout, result.stdout
    assert "running" not in result.stdout
    assert {p.name: p.stat().st_mtime_ns for p in (first.run.dir / "notebooks").glob("*.ipynb")} == notebooks
    assert Run.open(workspace.runs_dir, first.run.id).manifest["status"] == "PASS"


# ---------------------------------------------------------------------------------------------- damage
@pytest.fixture(scope="module")
def afternoon(workspace, first, tmp_path_factory):
    """An afternoon re-run on a copy of the first run's lakehouse in which one candidate's OHLCV file
    is truncated and an interrupted write left a temp file (the session lakehouse is not touched)."""
    base = tmp_path_factory.mktemp("afternoon")
    lake = base / "lakehouse"
    shutil.copytree(first.lake, lake)
    victim = next(c["symbol"] for c in exports(first.run)["binance_spot_base"]["candidates"]
                  if c["symbol"] != "BINANCE:BTCUSDT")
    path = lake / "ohlcv" / "1d" / f"{victim.replace(':', '_', 1)}.parquet"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    leftover = lake / "ohlcv" / "1d" / ".BINANCE_BTCUSDT.parquet.k1ll3d00.tmp"
    leftover.write_bytes(b"PAR1 half written")
    env = {"FW_DATA__LAKEHOUSE": str(lake), "FW_SOURCE__AS_OF": "2026-11-25T18:00:00Z"}
    result = workspace.book("data", "--profile", "demo", env=env, runs_dir=base / "runs")
    return result, workspace.run_of(result, base / "runs"), victim, leftover


def test_afternoon_rerun_skips_fresh_symbols_and_survives_a_corrupt_file(first, afternoon):
    result, run, victim, leftover = afternoon
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    assert run.manifest["status"] == "PASS"
    assert not leftover.exists()
    before = pd.read_parquet(first.run.dir / "artifacts" / "ingest_report.parquet").set_index("symbol")
    report = pd.read_parquet(run.dir / "artifacts" / "ingest_report.parquet").set_index("symbol")
    assert report.at[victim, "status"] == "failed" and "delete it" in report.at[victim, "reason"]
    ingested = before.index[(before["status"] == "added") & (before["bars_behind"] == 0) & (before.index != victim)]
    assert len(ingested) >= 20
    assert (report.loc[ingested, "status"] == "fresh").all(), report.loc[ingested, ["status", "reason"]]
    for name, doc in exports(run).items():
        assert victim not in {c["symbol"] for c in doc["candidates"]}, name
    assert victim in read_json(run.dir / "artifacts" / "scan_summary.json")["unreadable_files"]
    backfill = read_json(run.dir / "artifacts" / "backfill_report.json")
    assert victim in backfill["unreadable_files"] and backfill["symbols"] >= 20
