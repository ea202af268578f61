"""Market-data sources behind one interface: `sim` (offline, deterministic) and `ccxt`."""
from __future__ import annotations

from quantlib.core.profiles import SourceConfig
from quantlib.data.sources.base import MARKET_COLUMNS, OHLCV_COLUMNS, TICKER_COLUMNS, MarketDataSource, empty_ohlcv
from quantlib.data.sources.ccxt_source import CcxtSource
from quantlib.data.sources.simulated import SimExchange

__all__ = ["MARKET_COLUMNS", "OHLCV_COLUMNS", "TICKER_COLUMNS", "MarketDataSource", "empty_ohlcv", "make_source"]


def make_source(cfg: SourceConfig) -> MarketDataSource:
    """Build the source a profile's `source:` section names (the ccxt library is imported only when used)."""
    if cfg.kind == "sim":
        return SimExchange(venue=cfg.venue, seed=cfg.seed, as_of=cfg.as_of, n_bases=cfg.n_bases)
    return CcxtSource(cfg.exchange, retries=cfg.retries, backoff_s=cfg.backoff_s)
