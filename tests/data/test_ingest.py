import os
import time

import numpy as np
import pandas as pd
import pytest

from quantlib.data import bounds
from quantlib.core.errors import GateError, ProfileError, SourceError
from quantlib.data.ingest import (MAX_ANCHOR_BARS_BEHIND, RateLimiter, bars_behind, ingest, newest_closed_bar,
                             quality_flags, toxic_returns)
from quantlib.core.profiles import load_profile

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
    assert list(toxic_returns(np.array([1.0, 0.001]), 5.0)) == [1]  # -99.9 %: toxic downward too
    assert list(toxic_returns(np.array([1.0, 0.16]), 5.0)) == [1]  # -84 % is beyond x1/6
    assert list(toxic_returns(np.array([1.0, 0.17]), 5.0)) == []  # -83 % is not
    assert bounds.downside_threshold(5.0) == pytest.approx(-5.0 / 6.0)
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


# ------------------------------------------------------------------ crafted sources
T0 = pd.Timestamp("2026-10-01", tz="UTC")


def crafted(n: int, start: pd.Timestamp = T0, close: np.ndarray | None = None) -> pd.DataFrame:
    """`n` valid daily bars from `start` (a gentle random walk unless `close` is given)."""
    ts = pd.date_range(start, periods=n, freq="D", tz="UTC")
    if close is None:
        close = 100.0 * np.exp(np.cumsum(np.random.default_rng(n).normal(0, 0.02, n)))
    close = np.asarray(close, dtype=float)
    return pd.DataFrame({"ts": ts, "open": close, "high": close * 1.01, "low": close * 0.99, "close": close,
                         "volume": np.full(n, 1e6)})


class Frames:
    """A source serving crafted bars per symbol at a movable clock (bars not closed yet are included,
    like a live venue's still-open bar)."""

    rate_limit_per_s, name = 0.0, "frames"

    def __init__(self, bars: dict[str, pd.DataFrame], now: str, calendar: str = "24x7"):
        self.bars, self._now, self.calendar, self.calls = bars, pd.Timestamp(now), calendar, []

    def now(self):
        return self._now

    def at(self, now: str) -> "Frames":
        self._now = pd.Timestamp(now)
        return self

    def ohlcv(self, symbol, timeframe="1d", since=None, limit=None):
        self.calls.append(symbol)
        bars = self.bars[symbol]
        bars = bars[bars["ts"].isna() | (bars["ts"] <= self._now.floor("D"))]  # up to today's open bar
        return (bars if since is None else bars[bars["ts"].isna() | (bars["ts"] >= since)]).reset_index(drop=True)


A, B, C = "BINANCE:AAAUSDT", "BINANCE:BBBUSDT", "BINANCE:CCCUSDT"


def statuses(report: pd.DataFrame) -> dict[str, str]:
    return report.set_index("symbol")["status"].to_dict()


# ------------------------------------------------------------------ toxic guard (both directions)
def test_a_crash_bar_is_toxic_downward_and_registered_at_its_bar(lake, data_cfg):
    close = crafted(60)["close"].to_numpy().copy()
    close[40:] *= 0.001  # -99.9 % on bar 40; in a SHORT sleeve this would read as a +99.9 % gain
    source = Frames({A: crafted(60, close=close), B: crafted(60)}, "2026-11-30T06:00:00Z")
    report = ingest(source, lake, [A, B], data_cfg, progress=False).set_index("symbol")
    assert report.at[A, "status"] == "toxic" and report.at[B, "status"] == "added"
    assert "-99.9%" in report.at[A, "reason"] and "-83.3%" in report.at[A, "reason"]
    assert not lake.ohlcv_path(A, "1d").exists()  # nothing merged
    row = lake.read_registry().set_index("symbol").loc[A]
    assert row["status"] == "TOXIC" and row["value"] == pytest.approx(-0.999, abs=2e-4)
    assert row["bar_ts"] == T0 + pd.Timedelta(days=40)  # the first toxic bar, not the detection time
    assert row["detected_at"] == source.now()


def test_toxic_bar_ts_is_the_first_toxic_bar(sim, lake, data_cfg):
    ingest(sim, lake, ["BINANCE:SPIKEUSDT"], data_cfg, progress=False)
    row = lake.read_registry().set_index("symbol").loc["BINANCE:SPIKEUSDT"]
    assert row["bar_ts"] == pd.Timestamp("2026-10-26", tz="UTC") and row["value"] > 5.0


def test_flag_bar_ts_is_where_the_run_first_held_and_stays_put(lake, data_cfg):
    bars = crafted(40)
    bars.loc[30:, "volume"] = 0.0  # zero volume from bar 30 on
    source = Frames({A: bars}, "2026-11-01T06:00:00Z")  # bars 0..30 closed (T0 + 30 = 10-31)
    ingest(source, lake, [A], data_cfg, progress=False)
    assert A not in lake.excluded_symbols()  # one zero bar is no run yet
    source.at("2026-11-05T06:00:00Z")  # bars 30..34 zero: the 5-bar run first holds at bar 34
    ingest(source, lake, [A], data_cfg, progress=False)
    first = lake.read_registry().set_index("symbol").loc[A]
    assert first["status"] == "ZERO_VOLUME" and first["bar_ts"] == T0 + pd.Timedelta(days=34)
    assert first["value"] == 5
    source.at("2026-11-08T06:00:00Z")  # the run goes on: later data must not move the flagged bar
    ingest(source, lake, [A], data_cfg, progress=False)
    later = lake.read_registry().set_index("symbol").loc[A]
    assert later["bar_ts"] == first["bar_ts"] and later["detected_at"] == first["detected_at"]
    assert later["value"] == 8


def test_flat_price_flag_and_its_clearing(lake, data_cfg):
    close = crafted(40)["close"].to_numpy().copy()
    close[32:] = close[32]  # unchanged close from bar 32 (bars 32..39)
    bars = crafted(40, close=close)
    source = Frames({A: bars}, "2026-11-10T06:00:00Z")
    report = ingest(source, lake, [A], data_cfg, progress=False).set_index("symbol")
    assert report.at[A, "flags"] == "FLAT_PRICE"
    row = lake.read_registry().set_index("symbol").loc[A]
    assert row["bar_ts"] == T0 + pd.Timedelta(days=36) and row["value"] == 8
    source.bars[A] = pd.concat([bars, crafted(1, T0 + pd.Timedelta(days=40), close=[close[-1] * 1.05])],
                               ignore_index=True)
    ingest(source.at("2026-11-11T06:00:00Z"), lake, [A], data_cfg, progress=False)
    assert A not in lake.excluded_symbols()  # the price moved: the flag is re-checked and cleared


# ------------------------------------------------------------------ bars validated before the merge
def _tampered(kind: str) -> pd.DataFrame:
    bars = crafted(60)
    if kind == "duplicates":  # 20 duplicated rows with close x1.5 (a +50 % benchmark day if merged)
        bars = pd.concat([bars, bars.tail(20).assign(close=lambda f: f["close"] * 1.5)], ignore_index=True)
    elif kind == "inf":
        bars.loc[30, "volume"] = np.inf
    elif kind == "nan":
        bars.loc[31, "close"] = np.nan
    elif kind == "zero_price":
        bars.loc[32, ["low", "close"]] = 0.0
    elif kind == "negative_price":
        bars.loc[33, "open"] = -1.0
    elif kind == "high_below_low":
        bars.loc[34, ["high", "low"]] = [90.0, 110.0]
    elif kind == "no_timestamp":
        bars.loc[35, "ts"] = pd.NaT
    return bars


@pytest.mark.parametrize("kind, words", [
    ("duplicates", "20 rows with a repeated timestamp"), ("inf", "non-finite"), ("nan", "non-finite"),
    ("zero_price", "prices <= 0"), ("negative_price", "prices <= 0"), ("high_below_low", "high < low"),
    ("no_timestamp", "without a timestamp"),
])
def test_invalid_bars_reject_that_symbol_only(lake, data_cfg, kind, words):
    source = Frames({A: _tampered(kind), B: crafted(60)}, "2026-11-30T06:00:00Z")
    report = ingest(source, lake, [A, B], data_cfg, progress=False).set_index("symbol")
    assert report.at[A, "status"] == "failed", report.loc[A]
    assert words in report.at[A, "reason"] and A in report.at[A, "reason"] and "nothing merged" in report.at[A, "reason"]
    assert "\n" not in report.at[A, "reason"]
    assert not lake.ohlcv_path(A, "1d").exists()
    assert report.at[B, "status"] == "added" and report.at[B, "rows_added"] == 60


def test_a_rejected_refetch_leaves_the_stored_bars_untouched(lake, data_cfg):
    bars = crafted(60)
    source = Frames({A: bars, B: crafted(60)}, "2026-11-20T06:00:00Z")
    ingest(source, lake, [A, B], data_cfg, progress=False)
    before = lake.ohlcv_path(A, "1d").read_bytes()
    source.bars[A] = pd.concat([bars, bars.tail(20).assign(close=lambda f: f["close"] * 1.5)], ignore_index=True)
    report = ingest(source.at("2026-11-30T06:00:00Z"), lake, [A, B], data_cfg, progress=False)
    assert statuses(report) == {A: "failed", B: "added"}
    assert lake.ohlcv_path(A, "1d").read_bytes() == before


def test_the_still_open_bar_is_dropped_silently(lake, data_cfg):
    source = Frames({A: crafted(60)}, "2026-11-15T06:00:00Z")  # serves today's open bar (11-15)
    assert source.ohlcv(A)["ts"].iloc[-1] == pd.Timestamp("2026-11-15", tz="UTC")
    report = ingest(source, lake, [A], data_cfg, progress=False).set_index("symbol")
    assert report.at[A, "status"] == "added" and report.at[A, "reason"] == ""
    assert report.at[A, "last_bar"] == pd.Timestamp("2026-11-14", tz="UTC")


# ------------------------------------------------------------------ freshness follows the bar period
def test_newest_closed_bar_and_bars_behind():
    day = pd.Timedelta(days=1)
    now = pd.Timestamp("2026-11-25T18:00:00Z")
    assert newest_closed_bar(now, day) == pd.Timestamp("2026-11-24", tz="UTC")
    assert newest_closed_bar(pd.Timestamp("2026-11-25T00:00:00Z"), day) == pd.Timestamp("2026-11-24", tz="UTC")
    assert newest_closed_bar(pd.Timestamp("2026-11-24T23:59:59Z"), day) == pd.Timestamp("2026-11-23", tz="UTC")
    assert bars_behind(pd.Timestamp("2026-11-24", tz="UTC"), now, day) == 0
    assert bars_behind(pd.Timestamp("2026-11-18", tz="UTC"), now, day) == 6
    sunday = pd.Timestamp("2026-11-29T12:00:00Z")  # weekday calendar: Friday's bar is the newest
    assert newest_closed_bar(sunday, day, "weekday") == pd.Timestamp("2026-11-27", tz="UTC")
    assert bars_behind(pd.Timestamp("2026-11-26", tz="UTC"), pd.Timestamp("2026-12-01T06:00:00Z"), day,
                       "weekday") == 2  # Fri 27 and Mon 30 (the weekend has no bars)


def test_a_daily_bar_stored_for_yesterday_is_fresh_all_day(lake, data_cfg):
    source = Frames({A: crafted(80), B: crafted(80)}, "2026-11-25T06:00:00Z")
    ingest(source, lake, [A, B], data_cfg, progress=False)
    for now in ("2026-11-25T12:00:00Z", "2026-11-25T18:00:00Z", "2026-11-25T23:59:59Z"):
        source.calls.clear()
        report = ingest(source.at(now), lake, [A, B], data_cfg, progress=False)
        assert set(report["status"]) == {"fresh"} and source.calls == [], now
        assert (report["bars_behind"] == 0).all()
    report = ingest(source.at("2026-11-26T00:00:01Z"), lake, [A, B], data_cfg, progress=False)
    assert set(report["status"]) == {"added"} and (report["rows_added"] == 1).all()  # 11-25 has closed


def test_weekday_calendar_freshness(lake, data_cfg):
    days = pd.bdate_range("2026-09-01", "2026-12-31", tz="UTC")
    bars = crafted(len(days)).assign(ts=days)
    source = Frames({A: bars}, "2026-11-28T06:00:00Z", calendar="weekday")  # Saturday
    ingest(source, lake, [A], data_cfg, progress=False)
    assert lake.read_ohlcv(A, "1d")["ts"].iloc[-1] == pd.Timestamp("2026-11-27", tz="UTC")  # Friday
    for now in ("2026-11-29T20:00:00Z", "2026-11-30T20:00:00Z"):  # Sunday; Monday before its bar closes
        source.calls.clear()
        assert statuses(ingest(source.at(now), lake, [A], data_cfg, progress=False)) == {A: "fresh"}
        assert source.calls == []
    assert statuses(ingest(source.at("2026-12-01T06:00:00Z"), lake, [A], data_cfg, progress=False)) == {A: "added"}


def test_freshness_hours_is_gone():
    with pytest.raises(ProfileError, match="freshness_hours"):
        load_profile("demo", env={"FW_DATA__FRESHNESS_HOURS": "12"})


# ------------------------------------------------------------------ unchanged and the report
def test_a_fetch_with_nothing_new_is_unchanged_and_rewrites_nothing(lake, data_cfg):
    stopped = crafted(50)  # last bar 11-19: its feed stopped
    source = Frames({A: stopped, B: crafted(80)}, "2026-11-25T06:00:00Z")
    first = ingest(source, lake, [A, B], data_cfg, progress=False).set_index("symbol")
    assert first.at[A, "status"] == "added" and first.at[A, "bars_behind"] == 5
    path = lake.ohlcv_path(A, "1d")
    os.utime(path, (1, 1))
    report = ingest(source.at("2026-11-25T18:00:00Z"), lake, [A, B], data_cfg, progress=False).set_index("symbol")
    assert report.at[A, "status"] == "unchanged" and report.at[A, "rows_added"] == 0
    assert report.at[A, "bars"] == 50 and report.at[A, "bars_behind"] == 5
    assert report.at[B, "status"] == "fresh"
    assert path.stat().st_mtime == 1  # an identical re-fetch does not rewrite the file
    assert source.calls.count(A) == 2 and source.calls.count(B) == 1


def test_report_statuses_cover_every_outcome(lake, data_cfg):
    spiked = crafted(60)["close"].to_numpy().copy()
    spiked[50:] *= 8.0
    source = Frames({A: crafted(60), B: crafted(50), C: crafted(60, close=spiked)}, "2026-11-30T06:00:00Z")
    ingest(source, lake, [A, B], data_cfg, progress=False)
    source.bars["BINANCE:DDDUSDT"] = _tampered("inf")
    report = ingest(source.at("2026-11-30T12:00:00Z"), lake, [A, B, C, "BINANCE:DDDUSDT"], data_cfg,
                    progress=False)
    assert list(report.columns) == ["symbol", "status", "rows_added", "bars", "last_bar", "bars_behind",
                                    "reason", "flags"]
    assert statuses(report) == {A: "fresh", B: "unchanged", C: "toxic", "BINANCE:DDDUSDT": "failed"}
    source.bars[B] = crafted(60)
    assert statuses(ingest(source, lake, [B], data_cfg, progress=False)) == {B: "added"}


# ------------------------------------------------------------------ a stale anchor fails the stage
@pytest.mark.parametrize("behind", [MAX_ANCHOR_BARS_BEHIND, MAX_ANCHOR_BARS_BEHIND + 1, 6])
def test_a_stale_anchor_fails_the_stage(lake, data_cfg, behind):
    now = pd.Timestamp("2026-11-25T06:00:00Z")
    n = (newest_closed_bar(now, pd.Timedelta(days=1)) - T0).days + 1 - behind
    source = Frames({A: crafted(n), B: crafted(30)}, str(now))  # B: a stale non-anchor never fails the stage
    if behind <= MAX_ANCHOR_BARS_BEHIND:
        report = ingest(source, lake, [A, B], data_cfg, anchors=[A], progress=False).set_index("symbol")
        assert report.at[A, "bars_behind"] == behind
        return
    with pytest.raises(GateError) as err:
        ingest(source, lake, [A, B], data_cfg, anchors=[A], progress=False)
    message = str(err.value)
    last = T0 + pd.Timedelta(days=n - 1)
    assert A in message and f"{last:%Y-%m-%d}" in message and f"{behind} closed 1d bars behind" in message
    assert "data.anchors" in message and "\n" not in message
    assert lake.read_ohlcv(A, "1d")["ts"].iloc[-1] == last  # what it had was still stored


def test_a_fresh_but_stale_stored_anchor_is_checked_on_the_next_run_too(lake, data_cfg):
    source = Frames({A: crafted(50)}, "2026-11-20T06:00:00Z")  # last bar 11-19: current
    ingest(source, lake, [A], data_cfg, anchors=[A], progress=False)
    with pytest.raises(GateError, match="stale required anchor"):
        ingest(source.at("2026-11-26T06:00:00Z"), lake, [A], data_cfg, anchors=[A], progress=False)


# ------------------------------------------------------------------ corrupt files
def test_a_corrupt_anchor_file_fails_the_stage_naming_it(sim, lake, data_cfg):
    path = lake.ohlcv_path(GOOD[0], "1d")
    ingest(sim, lake, GOOD[:2], data_cfg, progress=False)
    path.write_bytes(path.read_bytes()[:100])  # truncated
    with pytest.raises(GateError) as err:
        ingest(sim, lake, GOOD[:2], data_cfg, anchors=[GOOD[0]], progress=False)
    assert GOOD[0] in str(err.value) and str(path) in str(err.value) and "\n" not in str(err.value)


# ------------------------------------------------------------------ interrupted writes
def test_ingest_removes_leftover_temps_of_interrupted_writes_only(sim, lake, data_cfg, capsys):
    ohlcv = lake.ohlcv_dir("1d")
    ohlcv.mkdir(parents=True)
    leftovers = [ohlcv / ".BINANCE_BTCUSDT.parquet.k1ll3d_x.tmp", ohlcv / ".BINANCE_XRPUSDT.parquet.abcdefgh.tmp",
                 lake.root / ".registry.parquet.q9w8e7r6.tmp"]
    kept = [ohlcv / "notes.tmp", ohlcv / ".keep", lake.root / ".features_matrix.parquet.abcdefgh.tmp",
            lake.root / "README.tmp"]
    for path in leftovers + kept:
        path.write_bytes(b"PAR1 half written")
    ingest(sim, lake, GOOD[:1], data_cfg, progress=False)
    assert not any(p.exists() for p in leftovers)
    assert all(p.exists() for p in kept)  # not ingest's temps, or not temps at all
    assert "removed 3 temp file(s)" in capsys.readouterr().err
