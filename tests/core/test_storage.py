import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from quantlib.core import storage
from quantlib.core.errors import DataError
from quantlib.data.lakehouse import Lakehouse

ROOT = Path(__file__).resolve().parents[2]


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
    entries = pd.DataFrame([("A:X", "TOXIC", "spike", now, now, 6.0), ("A:Y", "ZERO_VOLUME", "zero", now, now, 5.0)],
                           columns=["symbol", "status", "reason", "detected_at", "bar_ts", "value"])
    lake.update_registry(entries)
    assert lake.excluded_symbols() == {"A:X", "A:Y"}
    lake.update_registry(entries.iloc[:0], cleared={"A:X", "A:Y"})  # both re-checked clean
    assert lake.excluded_symbols() == {"A:X"}  # flags clear, TOXIC stays


# ------------------------------------------------------------------ interrupted writes
def _killed_mid_write(target) -> None:
    """A child process starts an atomic write of `target` and is SIGKILLed before the rename."""
    code = ("import os, signal, sys\nfrom quantlib.core import storage\n"
            "with storage.atomic_path(sys.argv[1]) as tmp:\n"
            "    tmp.write_bytes(b'PAR1 half written')\n"
            "    os.kill(os.getpid(), signal.SIGKILL)\n")
    result = subprocess.run([sys.executable, "-c", code, str(target)], cwd=ROOT, capture_output=True)
    assert result.returncode == -signal.SIGKILL, result.stderr


def test_a_killed_write_leaves_a_temp_that_matches_the_cleanup_pattern(tmp_path):
    target = tmp_path / "BINANCE_BTCUSDT.parquet"
    _killed_mid_write(target)
    leftovers = [p for p in tmp_path.iterdir()]
    assert len(leftovers) == 1 and not target.exists()
    assert storage.TEMP_PATTERN.match(leftovers[0].name).group("target") == target.name
    assert storage.remove_interrupted_writes(tmp_path) == leftovers
    assert list(tmp_path.iterdir()) == []


def test_cleanup_removes_only_atomic_write_temps(tmp_path):
    temps = [".BINANCE_BTCUSDT.parquet.ab_cd123.tmp", ".registry.parquet.0a1b2c3d.tmp"]
    others = ["BINANCE_BTCUSDT.parquet", ".BINANCE_BTCUSDT.parquet.short.tmp", ".x.parquet.ABCDEFGH.tmp",
              "BINANCE_BTCUSDT.parquet.ab_cd123.tmp", ".x.parquet.ab_cd123.tmp.bak", "notes.tmp", ".hidden"]
    for name in temps + others:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / ".dir.parquet.abcdefgh.tmp").mkdir()  # a directory is never touched
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / temps[0]).write_bytes(b"x")  # not recursive
    removed = storage.remove_interrupted_writes(tmp_path, targets={"registry.parquet"})
    assert [p.name for p in removed] == [temps[1]]
    removed = storage.remove_interrupted_writes(tmp_path)
    assert [p.name for p in removed] == [temps[0]]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(others + [".dir.parquet.abcdefgh.tmp", "sub"])
    assert (tmp_path / "sub" / temps[0]).exists()
    assert storage.remove_interrupted_writes(tmp_path / "absent") == []


def test_file_permissions_are_normal(tmp_path):
    path = storage.write_text(tmp_path / "f.txt", "x")
    assert os.stat(path).st_mode & 0o044  # readable by group/others (mkstemp would give 0600)


def test_parquet_is_zstd_with_split_floats_and_reads_back_exactly(tmp_path):
    rng = np.random.default_rng(0)
    n = 5000
    frame = pd.DataFrame({"price": rng.lognormal(size=n), "rating": rng.choice([-1.0, 0.0, 0.5, 1.0], size=n),
                          "symbol": rng.choice(["BINANCE:A", "BINANCE:B"], size=n), "n": np.arange(n),
                          "gap": np.where(rng.random(n) < 0.1, np.nan, rng.normal(size=n))},
                         index=pd.date_range("2020-01-01", periods=n, freq="h", tz="UTC", name="ts"))
    path = storage.write_parquet(tmp_path / "x.parquet", frame)
    back = storage.read_parquet(path)
    pd.testing.assert_frame_equal(back, frame, check_freq=False)  # lossless, NaN and index included
    meta = pq.ParquetFile(path).metadata.row_group(0)
    columns = {meta.column(i).path_in_schema: meta.column(i) for i in range(meta.num_columns)}
    assert {c.compression for c in columns.values()} == {"ZSTD"}
    assert "BYTE_STREAM_SPLIT" in columns["price"].encodings and "BYTE_STREAM_SPLIT" in columns["gap"].encodings
    assert "BYTE_STREAM_SPLIT" not in columns["rating"].encodings  # few distinct values: dictionary
    assert "RLE_DICTIONARY" in columns["rating"].encodings and "RLE_DICTIONARY" in columns["symbol"].encodings
    prices = frame[["price"]].reset_index(drop=True)
    default = tmp_path / "default.parquet"
    prices.to_parquet(default, index=False)
    storage.write_parquet(tmp_path / "price.parquet", prices)
    assert (tmp_path / "price.parquet").stat().st_size < 0.9 * default.stat().st_size  # smaller than before


def test_check_writable_creates_the_folder_or_says_why_not(tmp_path):
    target = tmp_path / "a" / "b"
    assert storage.check_writable(target, "--runs-dir", "fix it") == target and target.is_dir()
    assert list(target.iterdir()) == []  # the probe file is gone
    afile = tmp_path / "f"
    afile.write_text("x")
    for bad in (afile, afile / "below"):
        with pytest.raises(DataError) as err:
            storage.check_writable(bad, "data.lakehouse", "set data.lakehouse to a writable directory")
        assert str(err.value).startswith(f"data.lakehouse {bad}: not writable (")
        assert str(err.value).endswith("; set data.lakehouse to a writable directory")
