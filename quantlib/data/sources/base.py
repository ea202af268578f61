"""The `MarketDataSource` interface shared by the simulated exchange and the ccxt adapter.

Tables are pandas DataFrames with fixed columns so that ingestion code is identical for every source.
"""
from __future__ import annotations

from abc import ABC, abstractmethod

import pandas as pd

MARKET_COLUMNS = [
    "symbol", "exchange", "base", "quote", "type", "active", "tick_size", "lot_size",
    "min_notional", "price_precision", "amount_precision", "maker_fee", "taker_fee",
]
"""`markets()` columns. `symbol` is `EXCHANGE:TICKER`; `type` is `spot` or `perp`; sizes may be NaN."""

TICKER_COLUMNS = ["symbol", "last", "quote_volume", "change_pct"]
"""`tickers()` columns: last price, 24h quote volume, 24h change in percent."""

OHLCV_COLUMNS = ["ts", "open", "high", "low", "close", "volume"]
"""`ohlcv()` columns; `ts` is a tz-aware UTC timestamp of the bar open."""

TIMEFRAME_SECONDS = {"1h": 3600, "4h": 4 * 3600, "1d": 86400}


class MarketDataSource(ABC):
    """A venue that lists markets, 24h tickers and paged OHLCV bars."""

    name: str = "source"
    rate_limit_per_s: float = 0.0  # 0 = unlimited; ingestion respects it
    calendar: str = "24x7"  # or "weekday"

    @abstractmethod
    def markets(self) -> pd.DataFrame:
        """All markets of the venue, one row per symbol, columns MARKET_COLUMNS."""

    @abstractmethod
    def tickers(self) -> pd.DataFrame:
        """24h tickers, one row per symbol, columns TICKER_COLUMNS."""

    @abstractmethod
    def ohlcv(self, symbol: str, timeframe: str = "1d", since: pd.Timestamp | None = None,
              limit: int | None = None) -> pd.DataFrame:
        """Bars with ts >= since (all available if None), at most `limit` rows, oldest first.

        Raises SourceError for an unknown symbol or a venue failure after retries.
        """

    @abstractmethod
    def now(self) -> pd.Timestamp:
        """The source's current time (UTC); freshness is judged against it."""

    def snapshot(self) -> str | None:
        """What fixes every answer this source gives, or None for a live venue (whose answers change
        by themselves: a stage reading it is never restored from the stage cache)."""
        return None


def empty_ohlcv() -> pd.DataFrame:
    """An OHLCV frame with no rows and the right dtypes."""
    frame = pd.DataFrame({c: pd.Series(dtype="float64") for c in OHLCV_COLUMNS[1:]})
    frame.insert(0, "ts", pd.Series(dtype="datetime64[ns, UTC]"))
    return frame
