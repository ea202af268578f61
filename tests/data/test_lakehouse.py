"""The lakehouse tables' contracts (registry.parquet, symbols.parquet): columns and types, older files,
listing history; both table readers (`read_registry`, `read_symbols`, one `_read_table`) on a missing
file (empty, typed), a corrupt one and one without a required column (the error names the file and the
fix); OHLCV files; and the data stages that read stored bars (features, scan, backfill) facing corrupt
files, run in process on a small sim venue."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from quantlib.stages import data as dataflow
from quantlib.core import storage
from quantlib.core.registry import find_stage
from quantlib.core.errors import DataError
from quantlib.data.lakehouse import REGISTRY_COLUMNS, REGISTRY_TIMES, SYMBOLS_COLUMNS, SYMBOLS_TIMES, Lakehouse
from quantlib.core.profiles import load_profile
from quantlib.core.runs import Run
from quantlib.data.sources.base import MARKET_COLUMNS
from quantlib.engine.context import StageContext

from conftest import AS_OF

ROOT = Path(__file__).resolve().parents[2]
UTC = "UTC"


def ts(text: str) -> pd.Timestamp:
    return pd.Timestamp(text, tz=UTC)


# ------------------------------------------------------------------ registry.parquet
def test_registry_columns_and_types(tmp_path):
    lake = Lakehouse(tmp_path)
    empty = lake.read_registry()
    assert list(empty.columns) == REGISTRY_COLUMNS == ["symbol", "status", "reason", "detected_at", "bar_ts", "value"]
    assert isinstance(empty["bar_ts"].dtype, pd.DatetimeTZDtype) and isinstance(empty["detected_at"].dtype,
                                                                                 pd.DatetimeTZDtype)
    assert empty.query("status == 'TOXIC'").empty and lake.excluded_symbols() == set()


def test_an_older_registry_without_bar_ts_still_reads(tmp_path):
    lake = Lakehouse(tmp_path)
    seen = ts("2026-06-01T06:00")
    pd.DataFrame([("A:X", "TOXIC", "spike", seen, 6.0), ("A:Y", "ZERO_VOLUME", "zero", seen, np.nan)],
                 columns=["symbol", "status", "reason", "detected_at", "value"]).to_parquet(lake.registry_path)
    registry = lake.read_registry()
    assert list(registry.columns) == REGISTRY_COLUMNS
    assert (registry["bar_ts"] == seen).all()  # effective from when it was detected
    assert lake.excluded_symbols() == {"A:X", "A:Y"}
    later = ts("2026-06-02T06:00")
    lake.update_registry(pd.DataFrame([("A:Z", "FLAT_PRICE", "flat", later, ts("2026-06-01"), 5.0)],
                                      columns=REGISTRY_COLUMNS), cleared={"A:Y"})
    stored = pd.read_parquet(lake.registry_path)
    assert list(stored.columns) == REGISTRY_COLUMNS and set(stored["symbol"]) == {"A:X", "A:Z"}


def test_a_persisting_flag_keeps_its_first_detection_time(tmp_path):
    lake = Lakehouse(tmp_path)
    row = ("A:X", "ZERO_VOLUME", "zero", ts("2026-06-01T06:00"), ts("2026-05-30"), 5.0)
    lake.update_registry(pd.DataFrame([row], columns=REGISTRY_COLUMNS))
    again = ("A:X", "ZERO_VOLUME", "zero", ts("2026-06-03T06:00"), ts("2026-05-30"), 7.0)
    out = lake.update_registry(pd.DataFrame([again], columns=REGISTRY_COLUMNS), cleared={"A:X"}).iloc[0]
    assert out["detected_at"] == ts("2026-06-01T06:00") and out["value"] == 7.0
    moved = ("A:X", "ZERO_VOLUME", "zero", ts("2026-06-20T06:00"), ts("2026-06-18"), 5.0)  # a new run of bars
    out = lake.update_registry(pd.DataFrame([moved], columns=REGISTRY_COLUMNS), cleared={"A:X"}).iloc[0]
    assert out["detected_at"] == ts("2026-06-20T06:00") and out["bar_ts"] == ts("2026-06-18")


# ------------------------------------------------------------------ symbols.parquet keeps history
def markets(*rows: tuple[str, bool]) -> pd.DataFrame:
    """A market snapshot: (symbol, active) rows, other fields filled."""
    frame = pd.DataFrame([{"symbol": s, "exchange": s.split(":")[0], "base": s.split(":")[1][:3],
                           "quote": "USDT", "type": "spot", "active": active, "tick_size": 0.01, "lot_size": 0.001,
                           "min_notional": 5.0, "price_precision": 2, "amount_precision": 3, "maker_fee": 0.001,
                           "taker_fee": 0.001} for s, active in rows])
    return frame[MARKET_COLUMNS]


def test_symbols_table_never_deletes_and_tracks_listing_history(tmp_path):
    lake = Lakehouse(tmp_path)
    t1, t2, t3, t4 = ts("2026-01-01"), ts("2026-02-01"), ts("2026-03-01"), ts("2026-04-01")
    other = markets(("SIMEQ:SPY", True))  # another venue's market in the same lakehouse
    lake.upsert_symbols(other, t1)
    changes = lake.upsert_symbols(markets(("BINANCE:AAAUSDT", True), ("BINANCE:BBBUSDT", True),
                                          ("BINANCE:CCCUSDT", False)), t1)
    assert changes == {"new": ["BINANCE:AAAUSDT", "BINANCE:BBBUSDT", "BINANCE:CCCUSDT"],
                       "newly_inactive": ["BINANCE:CCCUSDT"], "reactivated": []}
    # t2: BBB disappears from the exchange's list, DDD is listed, AAA's tick size changes
    snap = markets(("BINANCE:AAAUSDT", True), ("BINANCE:CCCUSDT", False), ("BINANCE:DDDUSDT", True))
    snap.loc[0, "tick_size"] = 0.1
    changes = lake.upsert_symbols(snap, t2)
    assert changes == {"new": ["BINANCE:DDDUSDT"], "newly_inactive": ["BINANCE:BBBUSDT"], "reactivated": []}
    table = lake.read_symbols().set_index("symbol")
    assert list(lake.read_symbols().columns) == SYMBOLS_COLUMNS
    assert len(table) == 5  # nothing deleted
    assert table.at["BINANCE:AAAUSDT", "tick_size"] == 0.1  # last value wins
    assert table.at["BINANCE:AAAUSDT", "first_seen"] == t1 and table.at["BINANCE:AAAUSDT", "updated_at"] == t2
    assert pd.isna(table.at["BINANCE:AAAUSDT", "inactive_since"])
    assert not table.at["BINANCE:BBBUSDT", "active"] and table.at["BINANCE:BBBUSDT", "inactive_since"] == t2
    assert table.at["BINANCE:BBBUSDT", "updated_at"] == t1  # last seen in the source
    assert table.at["BINANCE:CCCUSDT", "inactive_since"] == t1
    assert table.at["BINANCE:DDDUSDT", "first_seen"] == t2
    assert table.at["SIMEQ:SPY", "active"] and pd.isna(table.at["SIMEQ:SPY", "inactive_since"])  # left alone
    # t3: still missing / inactive -> inactive_since is not overwritten
    lake.upsert_symbols(snap, t3)
    table = lake.read_symbols().set_index("symbol")
    assert table.at["BINANCE:BBBUSDT", "inactive_since"] == t2 and table.at["BINANCE:CCCUSDT", "inactive_since"] == t1
    # t4: BBB comes back active -> cleared, first_seen kept
    changes = lake.upsert_symbols(markets(("BINANCE:BBBUSDT", True)), t4)
    assert changes["reactivated"] == ["BINANCE:BBBUSDT"]
    assert changes["newly_inactive"] == ["BINANCE:AAAUSDT", "BINANCE:DDDUSDT"]  # missing now; CCC already was
    table = lake.read_symbols().set_index("symbol")
    assert table.at["BINANCE:BBBUSDT", "active"] and pd.isna(table.at["BINANCE:BBBUSDT", "inactive_since"])
    assert table.at["BINANCE:BBBUSDT", "first_seen"] == t1
    assert table.at["BINANCE:AAAUSDT", "inactive_since"] == t4 and not table.at["BINANCE:AAAUSDT", "active"]
    stored = pd.read_parquet(lake.symbols_path)
    for col in ("updated_at", "first_seen", "inactive_since"):
        assert isinstance(stored[col].dtype, pd.DatetimeTZDtype), col
    assert stored["symbol"].is_unique and stored["active"].dtype == bool


def test_an_older_symbols_table_is_read_with_history_filled(tmp_path):
    lake = Lakehouse(tmp_path)
    seen = ts("2026-01-01")
    markets(("BINANCE:AAAUSDT", True), ("BINANCE:BBBUSDT", False)).assign(updated_at=seen).to_parquet(lake.symbols_path)
    table = lake.read_symbols().set_index("symbol")
    assert (table["first_seen"] == seen).all()
    assert table.at["BINANCE:BBBUSDT", "inactive_since"] == seen and pd.isna(table.at["BINANCE:AAAUSDT", "inactive_since"])
    lake.upsert_symbols(markets(("BINANCE:AAAUSDT", True)), ts("2026-02-01"))
    assert lake.read_symbols().set_index("symbol").at["BINANCE:BBBUSDT", "inactive_since"] == seen


# ------------------------------------------------------------------ both table readers: missing, corrupt, malformed
def _registry_rows() -> pd.DataFrame:
    return pd.DataFrame([("A:X", "TOXIC", "spike", ts("2026-06-01T06:00"), ts("2026-05-31"), 6.0)],
                        columns=REGISTRY_COLUMNS)


#: reader -> (its file, the columns it returns, its UTC time columns, a valid table, a required column,
#: how the message names the table, its fix)
READERS = {
    "read_registry": ("registry_path", REGISTRY_COLUMNS, REGISTRY_TIMES, _registry_rows, "reason",
                      "malformed registry", "restore it or delete it and re-run ingestion"),
    "read_symbols": ("symbols_path", SYMBOLS_COLUMNS, SYMBOLS_TIMES,
                     lambda: markets(("BINANCE:AAAUSDT", True)).assign(updated_at=ts("2026-01-01")), "tick_size",
                     "malformed symbols table", "restore it or delete it and re-run the metadata stage"),
}


@pytest.mark.parametrize("reader", sorted(READERS))
def test_a_missing_table_reads_as_empty_with_typed_columns(tmp_path, reader):
    attr, columns, times, *_ = READERS[reader]
    lake = Lakehouse(tmp_path)
    table = getattr(lake, reader)()  # no file is not an error: nothing was recorded yet
    assert table.empty and list(table.columns) == columns
    assert [c for c in columns if isinstance(table[c].dtype, pd.DatetimeTZDtype)] == list(times)
    assert not getattr(lake, attr).exists()  # reading never creates the file


@pytest.mark.parametrize("reader", sorted(READERS))
@pytest.mark.parametrize("content", [b"garbage, not parquet", "truncated"])
def test_a_corrupt_table_names_the_file_and_the_fix(tmp_path, reader, content):
    attr, _, _, valid, *_ = READERS[reader]
    lake = Lakehouse(tmp_path)
    path = getattr(lake, attr)
    valid().to_parquet(path)
    path.write_bytes(path.read_bytes()[:40] if content == "truncated" else content)
    before = path.read_bytes()
    with pytest.raises(DataError) as err:
        getattr(lake, reader)()
    message = str(err.value)
    assert message.startswith(f"corrupt parquet file {path} (")
    assert message.endswith("delete it and re-run the stage that writes it") and "\n" not in message
    assert path.read_bytes() == before  # reported, never overwritten


@pytest.mark.parametrize("reader", sorted(READERS))
def test_a_table_without_a_required_column_names_the_file_the_columns_and_the_fix(tmp_path, reader):
    attr, _, _, valid, required, what, fix = READERS[reader]
    lake = Lakehouse(tmp_path)
    path = getattr(lake, attr)
    valid().drop(columns=[required, "symbol"]).to_parquet(path)
    with pytest.raises(DataError) as err:
        getattr(lake, reader)()
    missing = ["symbol", required]  # in the order of the contract's columns
    assert str(err.value) == f"{what} {path}: missing columns {missing}; {fix}"


@pytest.mark.parametrize("reader", sorted(READERS))
def test_a_valid_table_round_trips_with_the_reader_columns(tmp_path, reader):
    attr, columns, _, valid, *_ = READERS[reader]
    lake = Lakehouse(tmp_path)
    frame = valid()
    frame.assign(extra="ignored").to_parquet(getattr(lake, attr))
    table = getattr(lake, reader)()
    assert list(table.columns) == columns and len(table) == 1
    assert table.iloc[0]["symbol"] == frame.iloc[0]["symbol"]


# ------------------------------------------------------------------ OHLCV files
def _bars(n: int) -> pd.DataFrame:
    t = pd.date_range("2026-01-01", periods=n, freq="D", tz=UTC)
    close = 100.0 + np.arange(n, dtype=float)
    return pd.DataFrame({"ts": t, "open": close, "high": close + 1, "low": close - 1, "close": close,
                         "volume": np.full(n, 10.0)})


def test_unreadable_files_are_listed_with_their_reason(tmp_path):
    lake = Lakehouse(tmp_path)
    good, cut, junk, cols = "BINANCE:AAAUSDT", "BINANCE:BBBUSDT", "BINANCE:CCCUSDT", "BINANCE:DDDUSDT"
    for symbol in (good, cut):
        lake.merge_ohlcv(symbol, "1d", _bars(30))
    lake.ohlcv_path(cut, "1d").write_bytes(lake.ohlcv_path(cut, "1d").read_bytes()[:200])  # truncated
    lake.ohlcv_path(junk, "1d").write_bytes(b"garbage")
    _bars(3).drop(columns="volume").to_parquet(lake.ohlcv_path(cols, "1d"))
    found = lake.unreadable_ohlcv([good, cut, junk, cols, "BINANCE:NONEUSDT"], "1d")
    assert sorted(found) == sorted([cut, junk, cols])
    assert all(str(lake.ohlcv_path(s, "1d")) in reason and "re-run ingestion" in reason for s, reason in found.items())


def test_an_identical_merge_does_not_rewrite_the_file(tmp_path):
    lake = Lakehouse(tmp_path)
    lake.merge_ohlcv("BINANCE:AAAUSDT", "1d", _bars(10))
    path = lake.ohlcv_path("BINANCE:AAAUSDT", "1d")
    before = path.stat().st_mtime_ns
    assert lake.merge_ohlcv("BINANCE:AAAUSDT", "1d", _bars(10).tail(2)) == 0
    assert path.stat().st_mtime_ns == before
    revised = _bars(10).tail(1).assign(close=500.0)
    assert lake.merge_ohlcv("BINANCE:AAAUSDT", "1d", revised) == 0
    assert lake.read_ohlcv("BINANCE:AAAUSDT", "1d")["close"].iloc[-1] == 500.0  # newest record still wins


# ------------------------------------------------------------------ the data stages in process
@pytest.fixture(scope="module")
def data_run(tmp_path_factory):
    """A data run's stages up to scan on the small sim venue (module-scoped)."""
    base = tmp_path_factory.mktemp("stages")
    env = {"FW_SOURCE__AS_OF": AS_OF, "FW_SOURCE__N_BASES": "25", "FW_DATA__LOOKBACK_DAYS": "200",
           "FW_DATA__LAKEHOUSE": str(base / "lakehouse")}
    run = Run.create(base / "runs", load_profile("demo", env=env), "data", ROOT)
    dataflow.discover_universe(stage(run, "universe"))
    dataflow.ingest_universe(stage(run, "ingest"), progress=False)
    dataflow.refresh_metadata(stage(run, "metadata"))
    dataflow.technicals(stage(run, "features"))
    dataflow.full_scan(stage(run, "scan"))
    return run


def stage(run: Run, name: str) -> StageContext:
    return StageContext(run=run, phase="data", stage=find_stage("data", name)[1])


def test_refresh_metadata_marks_the_delisted_market_with_the_source_clock(data_run):
    report = json.loads((data_run.dir / "artifacts" / "metadata_report.json").read_text())
    table = Lakehouse(data_run.profile.data.lakehouse).read_symbols().set_index("symbol")
    assert (table["first_seen"] == ts(AS_OF)).all()  # the source's clock, comparable with bar timestamps
    delisted = table.loc["BINANCE:DELISTUSDT"]
    assert not delisted["active"] and delisted["inactive_since"] == ts(AS_OF)
    assert "BINANCE:DELISTUSDT" in report["newly_inactive"] and report["symbols_in_lakehouse"] == len(table)
    assert table["inactive_since"].isna().sum() == report["active_in_lakehouse"]


def _corrupt(run: Run, symbol: str) -> Path:
    lake = Lakehouse(run.profile.data.lakehouse)
    path = lake.ohlcv_path(symbol, "1d")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # truncated parquet
    return path


@pytest.fixture
def corrupt_one(data_run):
    """A non-anchor candidate of the healthy run, its OHLCV file truncated (restored afterwards)."""
    doc = json.loads((data_run.dir / "export" / "binance_spot_base.json").read_text())
    lake = Lakehouse(data_run.profile.data.lakehouse)
    victim = next(c["symbol"] for c in doc["candidates"] if c["symbol"] not in data_run.profile.data.anchors)
    path = lake.ohlcv_path(victim, "1d")
    saved = path.read_bytes()
    _corrupt(data_run, victim)
    yield victim
    storage.write_bytes(path, saved)


def test_a_corrupt_non_anchor_file_is_reported_and_excluded_by_every_stage(data_run, corrupt_one):
    techs = dataflow.technicals(stage(data_run, "features"))
    assert corrupt_one in techs.unreadable and corrupt_one not in set(techs.snapshot["symbol"])
    assert len(techs.snapshot) >= 10
    scan = dataflow.full_scan(stage(data_run, "scan"))
    assert corrupt_one in scan.unreadable
    for name, doc in scan.documents.items():
        assert corrupt_one not in {c["symbol"] for c in doc["candidates"]}, name
    summary = json.loads((data_run.dir / "artifacts" / "scan_summary.json").read_text())
    assert corrupt_one in summary["unreadable_files"]
    report = dataflow.backfill_matrix(stage(data_run, "backfill"))
    assert corrupt_one in report["unreadable_files"] and report["symbols"] >= 10
    matrix = pd.read_parquet(Lakehouse(data_run.profile.data.lakehouse).features_path)
    assert corrupt_one not in set(matrix["symbol"])
    ingest_report = dataflow.ingest_universe(stage(data_run, "ingest"), progress=False).set_index("symbol")
    assert ingest_report.at[corrupt_one, "status"] == "failed" and "delete it" in ingest_report.at[corrupt_one, "reason"]


@pytest.mark.parametrize("name", ["features", "scan", "backfill"])
def test_a_corrupt_anchor_fails_the_stage_clearly(data_run, name):
    anchor = data_run.profile.data.anchors[0]
    path = Lakehouse(data_run.profile.data.lakehouse).ohlcv_path(anchor, "1d")
    saved = path.read_bytes()
    _corrupt(data_run, anchor)
    call = {"features": dataflow.technicals, "scan": dataflow.full_scan, "backfill": dataflow.backfill_matrix}[name]
    try:
        with pytest.raises(DataError) as err:
            call(stage(data_run, name))
    finally:
        storage.write_bytes(path, saved)
    message = str(err.value)
    assert message.startswith(f"{name}: required anchor {anchor}") and str(path) in message and "\n" not in message


def test_backfill_removes_an_interrupted_features_matrix_temp(data_run):
    lake = Lakehouse(data_run.profile.data.lakehouse)
    leftover = lake.root / ".features_matrix.parquet.k1ll3d00.tmp"
    leftover.write_bytes(b"PAR1 half of a big matrix")
    report = dataflow.backfill_matrix(stage(data_run, "backfill"))
    assert not leftover.exists() and report["removed_temp_files"] == [leftover.name]
