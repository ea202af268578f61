"""Market-data sources behind one interface: `sim` (offline, deterministic) and `ccxt`."""
from .base import MARKET_COLUMNS, OHLCV_COLUMNS, TICKER_COLUMNS, MarketDataSource, empty_ohlcv

__all__ = ["MARKET_COLUMNS", "OHLCV_COLUMNS", "TICKER_COLUMNS", "MarketDataSource", "empty_ohlcv"]
