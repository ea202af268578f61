import os
import time

import numpy as np
import pandas as pd
import pytest

from quantlib.errors import GateError, SourceError
from quantlib.ingest import RateLimiter, ingest, quality_flags, toxic_returns

GOOD = ["BINANCE:BTCUSDT", "BINANCE:ETHUSDT", "BINANCE:SOLUSDT"]


class Clock:
    """Wrap a source, moving its clock (freshness is judged against source.now())."""

    def __init__(self, source, now):
        self.source, self._now = source, pd.Timestamp(now)
        self.rate_limit_per_s, self.name, self.calls = 0.0, "wrapped", []

    def now(self):
        return self._now

    def ohlcv(self, symbol, timeframe="1d", since=None, limit=None):
        self.calls.append(symbol)
        bars = self.source.ohlcv(symbol, timeframe, since, limit)
        return bars[bars["ts"] + pd.Timedelta(days=1) <= self._now]


def test_first_ingest_adds_then_second_is_fresh(sim, lake, data_cfg):
    first = ingest(sim, lake, GOOD, data_cfg, progress=False).set_index("symbol")
    assert (first["status"] == "added").all()
    assert (first["rows_added"] == data_cfg.lookback_days + 100).all()  # depth lookback + 100 bars
    second = ingest(sim, lake, GOOD, data_cfg, progress=False).set_index("symbol")
    assert (second["status"] == "fresh").all() and (second["rows_added"] == 0).all()


def test_freshness_comes_from_data_not_mtime(sim, lake, data_cfg):
    early = Clock(sim, "2026-11-20T06:00:00Z")
    ingest(early, lake, GOOD[:1], data_cfg, progress=False)
    path = lake.ohlcv_path(GOOD[0], "1d")
    os.utime(path, (time.time(), time.time()))  # a brand-new mtime must not make stale data fresh
    later = Clock(sim, "2026-11-25T06:00:00Z")
    report = ingest(later, lake, GOOD[:1], data_cfg, progress=False).set_index("symbol")
    assert report.at[GOOD[0], "status"] == "added" and report.at[GOOD[0], "rows_added"] == 5
    os.utime(path, (0, 0))  # an ancient mtime must not make fresh data stale
    again = ingest(later, lake, GOOD[:1], data_cfg, progress=False).set_index("symbol")
    assert again.at[GOOD[0], "status"] == "fresh"
    assert later.calls == [GOOD[0]]  # the fresh symbol was not fetched


def test_incremental_fetch_matches_full_fetch(sim, lake, data_cfg, tmp_path):
    ingest(Clock(sim, "2026-11-10T06:00:00Z"), lake, GOOD[:1], data_cfg, progress=False)
    ingest(sim, lake, GOOD[:1], data_cfg, progress=False)
    stored = lake.read_ohlcv(GOOD[0], "1d")
    direct = sim.ohlcv(GOOD[0], since=stored["ts"].iloc[0])
    pd.testing.assert_frame_equal(stored.reset_index(drop=True), direct.reset_index(drop=True), check_dtype=False)


def test_toxic_guard_blocks_merge_and_registers(sim, lake, data_cfg):
    report = ingest(sim, lake, ["BINANCE:SPIKEUSDT", *GOOD[:1]], data_cfg, progress=False).set_index("symbol")
    assert report.at["BINANCE:SPIKEUSDT", "status"] == "toxic"
    assert "+5" in report.at["BINANCE:SPIKEUSDT", "reason"] or "+6" in report.at["BINANCE:SPIKEUSDT", "reason"]
    assert not lake.ohlcv_path("BINANCE:SPIKEUSDT", "1d").exists()  # bars not merged
    registry = lake.read_registry()
    row = registry[registry["symbol"] == "BINANCE:SPIKEUSDT"].iloc[0]
    assert row["status"] == "TOXIC" and row["value"] > 5.0
    assert "BINANCE:SPIKEUSDT" in lake.excluded_symbols()
    again = ingest(sim, lake, ["BINANCE:SPIKEUSDT"] + GOOD[:1], data_cfg, progress=False).set_index("symbol")
    assert again.at["BINANCE:SPIKEUSDT", "status"] == "toxic"  # sticky: not refetched


def test_toxic_spike_in_new_bars_leaves_stored_bars_untouched(sim, lake, data_cfg):
    """History stored before the spike stays; the spike and everything after it are not merged."""
    before = Clock(sim, "2026-10-20T06:00:00Z")  # SPIKE's +600 % day is 2026-10-26
    ingest(before, lake, ["BINANCE:SPIKEUSDT"], data_cfg, progress=False)
    stored = lake.read_ohlcv("BINANCE:SPIKEUSDT", "1d")
    report = ingest(sim, lake, ["BINANCE:SPIKEUSDT"], data_cfg, progress=False).set_index("symbol")
    assert report.at["BINANCE:SPIKEUSDT", "status"] == "toxic"
    pd.testing.assert_frame_equal(lake.read_ohlcv("BINANCE:SPIKEUSDT", "1d"), stored)


def test_zero_volume_flag(sim, lake, data_cfg):
    report = ingest(sim, lake, ["BINANCE:ZEROVOLUSDT"], data_cfg, progress=False).set_index("symbol")
    assert report.at["BINANCE:ZEROVOLUSDT", "flags"] == "ZERO_VOLUME"
    assert "BINANCE:ZEROVOLUSDT" in lake.excluded_symbols()


def test_helpers_on_crafted_series():
    assert list(toxic_returns(np.array([1.0, 1.1, 7.0, 7.1]), 5.0)) == [2]  # +536 %
    assert list(toxic_returns(np.array([1.0, 6.0]), 5.0)) == [1]  # exactly +500 % counts
    assert list(toxic_returns(np.array([1.0, 5.9]), 5.0)) == []
    flat = pd.DataFrame({"close": [1.0] * 5, "volume": [0.0] * 5})
    assert quality_flags(flat, 5) == ["ZERO_VOLUME", "FLAT_PRICE"]
    assert quality_flags(flat.assign(volume=1.0, close=[1, 2, 3, 4, 5]), 5) == []
    assert quality_flags(flat.head(3), 5) == []  # too few bars to judge


class Flaky(Clock):
    def ohlcv(self, symbol, timeframe="1d", since=None, limit=None):
        if symbol == "BINANCE:ETHUSDT":
            raise SourceError("binance: fetch_ohlcv failed after 4 retries: timeout")
        if symbol == "BINANCE:SOLUSDT":
            raise RuntimeError("parser bug")
        return super().ohlcv(symbol, timeframe, since, limit)


def test_one_failure_never_stops_the_others(sim, lake, data_cfg):
    report = ingest(Flaky(sim, sim.now()), lake, GOOD, data_cfg, progress=False).set_index("symbol")
    assert report.at["BINANCE:BTCUSDT", "status"] == "added"
    assert report.at["BINANCE:ETHUSDT", "status"] == "failed" and "retries" in report.at["BINANCE:ETHUSDT", "reason"]
    assert "RuntimeError: parser bug" in report.at["BINANCE:SOLUSDT", "reason"]


def test_all_failed_or_missing_anchor_fails_the_stage(sim, lake, data_cfg):
    with pytest.raises(GateError, match="all 1 symbols failed"):
        ingest(Flaky(sim, sim.now()), lake, ["BINANCE:ETHUSDT"], data_cfg, progress=False)
    with pytest.raises(GateError, match="anchor.*BINANCE:ETHUSDT.*retries"):
        ingest(Flaky(sim, sim.now()), lake, GOOD, data_cfg, anchors=["BINANCE:ETHUSDT"], progress=False)


def test_corrupt_file_is_reported_and_kept(sim, lake, data_cfg):
    path = lake.ohlcv_path(GOOD[0], "1d")
    path.parent.mkdir(parents=True)
    path.write_bytes(b"garbage")
    report = ingest(sim, lake, GOOD[:2], data_cfg, progress=False).set_index("symbol")
    assert report.at[GOOD[0], "status"] == "failed" and str(path) in report.at[GOOD[0], "reason"]
    assert path.read_bytes() == b"garbage"  # never overwritten silently
    assert report.at[GOOD[1], "status"] == "added"


def test_invalid_symbol_is_reported(sim, lake, data_cfg):
    report = ingest(sim, lake, ["../../etc/passwd", GOOD[0]], data_cfg, progress=False).set_index("symbol")
    assert report.at["../../etc/passwd", "status"] == "failed"
    assert "invalid symbol" in report.at["../../etc/passwd", "reason"]


def test_rate_limiter_spaces_calls():
    limiter = RateLimiter(50.0)  # 20 ms apart
    start = time.monotonic()
    for _ in range(6):
        limiter.wait()
    assert time.monotonic() - start >= 0.09
