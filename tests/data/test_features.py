import numpy as np
import pandas as pd
import pytest

from quantlib.data import features
from quantlib.data.lakehouse import Lakehouse
from quantlib.core.storage import read_parquet

SYMBOLS = ["BINANCE:BTCUSDT", "BINANCE:ETHUSDT", "BINANCE:SOLUSDT", "BINANCE:GAPPYUSDT"]


def _fill(lake: Lakehouse, sim, symbols=SYMBOLS, until=None):
    for s in symbols:
        bars = sim.ohlcv(s, since=pd.Timestamp("2025-06-01", tz="UTC"))
        if until is not None:
            bars = bars[bars["ts"] <= until]
        lake.merge_ohlcv(s, "1d", bars)


def test_panel_alignment_keeps_missing_bars_missing(sim, lake):
    _fill(lake, sim)
    panel = features.load_panel(lake, SYMBOLS, "1d")
    gappy = lake.read_ohlcv("BINANCE:GAPPYUSDT", "1d")
    column = panel["close"]["BINANCE:GAPPYUSDT"]
    assert column.notna().sum() == len(gappy)  # no filling of the 3 missing days
    assert column.isna().sum() == 3
    np.testing.assert_array_equal(column.dropna().to_numpy(), gappy["close"].to_numpy())


def test_backfill_is_point_in_time(sim, tmp_path):
    """Changing or adding bars after t never changes the features at or before t."""
    t = pd.Timestamp("2026-09-30", tz="UTC")
    past_only, full = Lakehouse(tmp_path / "a"), Lakehouse(tmp_path / "b")
    _fill(past_only, sim, until=t)
    _fill(full, sim)
    # perturb the future in `full`: scramble every bar after t
    for s in SYMBOLS:
        bars = full.read_ohlcv(s, "1d")
        after = bars["ts"] > t
        bars.loc[after, ["open", "high", "low", "close"]] *= np.linspace(0.5, 3.0, after.sum())[:, None]
        full.merge_ohlcv(s, "1d", bars)
    a = features.backfill(past_only, SYMBOLS, "1d", chunk=3)
    b = features.backfill(full, SYMBOLS, "1d", chunk=2)
    assert a["chunks"] == 2 and b["chunks"] == 2
    fa = read_parquet(past_only.features_path)
    fb = read_parquet(full.features_path)
    fb_past = fb[fb["ts"] <= t].reset_index(drop=True)
    pd.testing.assert_frame_equal(fa.sort_values(["symbol", "ts"], ignore_index=True),
                                  fb_past.sort_values(["symbol", "ts"], ignore_index=True))
    assert fb["recommend_all"].notna().sum() > 0


def test_backfill_schema_and_one_row_per_bar(sim, lake):
    _fill(lake, sim)
    report = features.backfill(lake, SYMBOLS, "1d", chunk=250)
    matrix = read_parquet(lake.features_path)
    assert list(matrix.columns) == features.MATRIX_COLUMNS
    assert isinstance(matrix["ts"].dtype, pd.DatetimeTZDtype)
    expected = sum(len(lake.read_ohlcv(s, "1d")) for s in SYMBOLS)
    assert report["rows"] == len(matrix) == expected
    assert not matrix.duplicated(["ts", "symbol"]).any()
    late = matrix[matrix["ts"] > pd.Timestamp("2026-06-01", tz="UTC")]
    assert late[["recommend_all", "recommend_ma", "recommend_other", "adx", "rsi"]].notna().all().all()
    assert matrix["recommend_all"].between(-1, 1).all() or matrix["recommend_all"].isna().any()


def test_snapshot_values_by_hand(sim, lake):
    _fill(lake, sim, SYMBOLS[:2])
    panel = features.load_panel(lake, SYMBOLS[:2], "1d")
    ratings = features.compute_panel_ratings(panel)
    snap = features.snapshot(panel, ratings).set_index("symbol")
    bars = lake.read_ohlcv("BINANCE:BTCUSDT", "1d").set_index("ts")
    last = bars.index[-1]
    row = snap.loc["BINANCE:BTCUSDT"]
    assert row["ts"] == last
    assert row["perf_1w"] == pytest.approx((bars["close"].iloc[-1] / bars["close"].iloc[-8] - 1) * 100)
    assert row["perf_1m"] == pytest.approx((bars["close"].iloc[-1] / bars["close"].iloc[-31] - 1) * 100)
    assert row["volatility_d"] == pytest.approx((bars["high"].iloc[-1] / bars["low"].iloc[-1] - 1) * 100)
    assert row["recommend_all"] == pytest.approx((row["recommend_ma"] + row["recommend_other"]) / 2)
    assert row["recommend_all"] == ratings["recommend_all"].at[last, "BINANCE:BTCUSDT"]


def test_interrupted_backfill_keeps_previous_matrix(sim, lake, monkeypatch):
    _fill(lake, sim, SYMBOLS[:2])
    features.backfill(lake, SYMBOLS[:2], "1d", chunk=1)
    before = lake.features_path.read_bytes()

    calls = {"n": 0}
    real = features.compute_panel_ratings

    def dies_on_second_chunk(panel):
        calls["n"] += 1
        if calls["n"] == 2:
            raise MemoryError("killed")
        return real(panel)

    monkeypatch.setattr(features, "compute_panel_ratings", dies_on_second_chunk)
    with pytest.raises(MemoryError):
        features.backfill(lake, SYMBOLS[:2], "1d", chunk=1)
    assert lake.features_path.read_bytes() == before
    assert [p.name for p in lake.root.iterdir() if p.name.startswith(".")] == []
