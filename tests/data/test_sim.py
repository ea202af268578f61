import numpy as np
import pandas as pd
import pytest

from quantlib.core.errors import SourceError
from quantlib.data.sources import MARKET_COLUMNS, OHLCV_COLUMNS, TICKER_COLUMNS
from quantlib.data.sources.simulated import SimExchange

AS_OF = "2026-11-25T06:00:00Z"


@pytest.fixture(scope="module")
def full():
    return SimExchange("crypto", seed=7, as_of=AS_OF)


@pytest.fixture(scope="module")
def equities():
    return SimExchange("equities", seed=7, as_of=AS_OF)


def test_universe_shape(full):
    markets = full.markets()
    assert list(markets.columns) == MARKET_COLUMNS
    spot = markets[markets["type"] == "spot"]
    assert len(spot) >= 120
    assert set(spot["quote"]) == {"USDT", "USDC", "FDUSD"}
    assert {"USDC", "FDUSD", "TUSD", "DAI", "PAXG", "XAUT"} <= set(markets["base"])
    assert (markets["type"] == "perp").any()
    assert markets["symbol"].is_unique
    assert list(full.tickers().columns) == TICKER_COLUMNS


def test_deterministic_and_prefix_stable(full):
    again = SimExchange("crypto", seed=7, as_of=AS_OF).ohlcv("BINANCE:SOLUSDT")
    pd.testing.assert_frame_equal(full.ohlcv("BINANCE:SOLUSDT"), again)
    earlier = SimExchange("crypto", seed=7, as_of="2026-06-01").ohlcv("BINANCE:SOLUSDT")
    pd.testing.assert_frame_equal(full.ohlcv("BINANCE:SOLUSDT").iloc[: len(earlier)], earlier)
    other_seed = SimExchange("crypto", seed=8, as_of=AS_OF).ohlcv("BINANCE:SOLUSDT")
    assert not np.allclose(other_seed["close"].tail(50), full.ohlcv("BINANCE:SOLUSDT")["close"].tail(50))


def test_bars_are_consistent_and_completed(full):
    bars = full.ohlcv("BINANCE:BTCUSDT")
    assert list(bars.columns) == OHLCV_COLUMNS
    assert (bars["high"] >= bars[["open", "close"]].max(axis=1)).all()
    assert (bars["low"] <= bars[["open", "close"]].min(axis=1)).all()
    assert bars["ts"].iloc[-1] == pd.Timestamp("2026-11-24", tz="UTC")  # last completed daily bar
    assert (bars["ts"].dt.day_of_week >= 5).any()  # 24x7: weekends trade
    assert bars["ts"].diff().dropna().eq(pd.Timedelta(days=1)).all()


def test_since_and_limit(full):
    bars = full.ohlcv("BINANCE:ETHUSDT", since=pd.Timestamp("2026-11-01", tz="UTC"), limit=5)
    assert len(bars) == 5 and bars["ts"].iloc[0] == pd.Timestamp("2026-11-01", tz="UTC")


def test_fat_tails_and_volatility_clustering(full):
    kurtosis, clustering = [], []
    for base in ("BTC", "ETH", "SOL", "XRP", "ADA", "LINK", "DOT", "LTC", "UNI", "ATOM"):
        r = np.log(full.ohlcv(f"BINANCE:{base}USDT")["close"]).diff().dropna().to_numpy()
        z = (r - r.mean()) / r.std()
        kurtosis.append((z ** 4).mean() - 3)
        a = np.abs(z)
        clustering.append(np.corrcoef(a[1:], a[:-1])[0, 1])
    assert np.median(kurtosis) > 1.0  # excess kurtosis: fat tails
    assert np.median(clustering) > 0.05  # |r| autocorrelated: volatility clustering


def test_injected_faults(full):
    spike = full.ohlcv("BINANCE:SPIKEUSDT")["close"]
    assert (spike / spike.shift(1) - 1).max() > 5.0
    gappy = full.ohlcv("BINANCE:GAPPYUSDT")["ts"]
    assert (gappy.diff().dropna() > pd.Timedelta(days=1)).sum() == 2  # one single and one double gap
    markets = full.markets().set_index("symbol")
    assert not markets.at["BINANCE:DELISTUSDT", "active"]
    assert full.ohlcv("BINANCE:DELISTUSDT")["ts"].iloc[-1] < pd.Timestamp("2026-10-20", tz="UTC")
    assert (full.ohlcv("BINANCE:ZEROVOLUSDT")["volume"].tail(5) == 0).all()
    assert np.isnan(markets.at["BINANCE:GAPPYUSDT", "lot_size"])


def test_regimes_trend_and_mean_reversion(full):
    """Both market regimes occur, and assets differ in persistence (trend vs mean reversion)."""
    btc = np.log(full.ohlcv("BINANCE:BTCUSDT")["close"].to_numpy())
    rolling = btc[120:] - btc[:-120]
    assert rolling.max() > 0.3 and rolling.min() < -0.3  # bull and bear stretches of 120 days
    kinds = {a.kind for a in full._assets.values()}
    assert {"trend", "meanrev", "normal", "stable", "gold"} <= kinds


def test_equities_weekday_calendar(equities):
    bars = equities.ohlcv("SIMEQ:SPY")
    assert equities.calendar == "weekday"
    assert (bars["ts"].dt.day_of_week < 5).all()
    assert not bars["ts"].dt.strftime("%m-%d").isin(["12-25", "01-01"]).any()
    assert (equities.markets()["exchange"] == "SIMEQ").all()


def test_errors(full):
    with pytest.raises(SourceError, match="unknown symbol"):
        full.ohlcv("BINANCE:NOPEUSDT")
    with pytest.raises(SourceError, match="timeframe"):
        full.ohlcv("BINANCE:BTCUSDT", "4h")
    with pytest.raises(SourceError, match="venue"):
        SimExchange("forex")
