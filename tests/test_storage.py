import json
import os

import numpy as np
import pandas as pd
import pytest

from quantlib import storage
from quantlib.errors import DataError
from quantlib.lakehouse import Lakehouse


def _bars(start: str, n: int, base: float = 100.0) -> pd.DataFrame:
    ts = pd.date_range(start, periods=n, freq="D", tz="UTC")
    close = base + np.arange(n, dtype=float)
    return pd.DataFrame({"ts": ts, "open": close, "high": close + 1, "low": close - 1, "close": close,
                         "volume": np.full(n, 10.0)})


def test_atomic_write_replaces_and_leaves_no_temp(tmp_path):
    target = tmp_path / "a.json"
    storage.write_json(target, {"x": 1})
    storage.write_json(target, {"x": 2})
    assert json.loads(target.read_text()) == {"x": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


def test_interrupted_parquet_write_keeps_the_old_file(tmp_path, monkeypatch):
    lake = Lakehouse(tmp_path)
    lake.merge_ohlcv("BINANCE:BTCUSDT", "1d", _bars("2026-01-01", 5))
    path = lake.ohlcv_path("BINANCE:BTCUSDT", "1d")
    before = path.read_bytes()

    def crash(self, target, *args, **kwargs):  # write half a file, then die like a killed process
        with open(target, "wb") as handle:
            handle.write(b"PAR1 half written")
        raise KeyboardInterrupt("killed mid-write")

    monkeypatch.setattr(pd.DataFrame, "to_parquet", crash)
    with pytest.raises(KeyboardInterrupt):
        lake.merge_ohlcv("BINANCE:BTCUSDT", "1d", _bars("2026-01-06", 5))
    monkeypatch.undo()
    assert path.read_bytes() == before  # the old file is untouched
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left behind
    assert len(lake.read_ohlcv("BINANCE:BTCUSDT", "1d")) == 5


def test_corrupt_parquet_gives_one_line_error_naming_file(tmp_path):
    path = tmp_path / "x.parquet"
    path.write_bytes(b"not a parquet file")
    with pytest.raises(DataError) as err:
        storage.read_parquet(path)
    message = str(err.value)
    assert str(path) in message and "re-run" in message and "\n" not in message


def test_missing_and_corrupt_json(tmp_path):
    with pytest.raises(DataError, match="missing file"):
        storage.read_json(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text("{oops")
    with pytest.raises(DataError, match="corrupt JSON"):
        storage.read_json(tmp_path / "bad.json")


def test_merge_is_union_newest_wins_sorted(tmp_path):
    lake = Lakehouse(tmp_path)
    assert lake.merge_ohlcv("BINANCE:ETHUSDT", "1d", _bars("2026-01-03", 3, base=50.0)) == 3
    newer = _bars("2026-01-01", 4, base=10.0)  # 01..04 overlaps 03 and 04
    assert lake.merge_ohlcv("BINANCE:ETHUSDT", "1d", newer) == 2
    stored = lake.read_ohlcv("BINANCE:ETHUSDT", "1d")
    assert stored["ts"].is_monotonic_increasing and stored["ts"].is_unique
    assert list(stored["close"]) == [10.0, 11.0, 12.0, 13.0, 52.0]  # 03/04 replaced by the newer fetch


def test_malformed_ohlcv_file_is_reported(tmp_path):
    lake = Lakehouse(tmp_path)
    path = lake.ohlcv_path("BINANCE:BTCUSDT", "1d")
    path.parent.mkdir(parents=True)
    pd.DataFrame({"ts": [1, 2], "close": [1.0, 2.0]}).to_parquet(path)
    with pytest.raises(DataError, match="malformed OHLCV file"):
        lake.read_ohlcv("BINANCE:BTCUSDT", "1d")


def test_registry_upsert_keeps_toxic_sticky(tmp_path):
    lake = Lakehouse(tmp_path)
    now = pd.Timestamp("2026-01-01", tz="UTC")
    entries = pd.DataFrame([("A:X", "TOXIC", "spike", now, 6.0), ("A:Y", "ZERO_VOLUME", "zero", now, np.nan)],
                           columns=["symbol", "status", "reason", "detected_at", "value"])
    lake.update_registry(entries)
    assert lake.excluded_symbols() == {"A:X", "A:Y"}
    lake.update_registry(entries.iloc[:0], cleared={"A:X", "A:Y"})  # both re-checked clean
    assert lake.excluded_symbols() == {"A:X"}  # flags clear, TOXIC stays


def test_file_permissions_are_normal(tmp_path):
    path = storage.write_text(tmp_path / "f.txt", "x")
    assert os.stat(path).st_mode & 0o044  # readable by group/others (mkstemp would give 0600)
