"""The real market-data source: any ccxt exchange behind the `MarketDataSource` interface.

Symbols are `EXCHANGE:TICKER` where EXCHANGE is the ccxt exchange id upper-cased and TICKER the
exchange's own market id (`BINANCE:BTCUSDT` <-> ccxt `BTC/USDT`). ccxt is imported lazily (in the
constructor) so that `import quantlib.data.sources` never needs it.

Failure behaviour (SPEC §1.1):
- network errors (`ccxt.NetworkError`: timeouts, DDoS protection / rate limit, exchange not available)
  are retried `retries` times with exponential backoff `backoff_s * 2**k` (k = 0, 1, ...), then
  raised as `SourceError`;
- authentication / permission errors, bad or unknown symbols and any other exchange error become a
  `SourceError` whose message names the exchange, the call and what to do. No ccxt exception
  escapes (the original is chained as `__cause__`).

Decisions (see the report / docs):
- `ohlcv()` returns closed bars only by default (a bar whose open + timeframe is after `now()` is
  still forming and its close would change); pass `include_partial=True` to keep it.
- `ohlcv(since=None, limit=N)` returns the latest N closed bars; `ohlcv(since=None, limit=None)`
  pages forward from the epoch (the whole history the exchange serves).
- ccxt calls are serialised by a lock, so the (sync, per-instance) ccxt rate limiter stays correct
  when ingestion calls the source from several threads.
"""
from __future__ import annotations

import math
import re
import threading
import time
from decimal import Decimal, InvalidOperation
from typing import Any, Callable

import pandas as pd

from quantlib.core.errors import SourceError
from quantlib.core.ids import check_symbol
from quantlib.data.sources.base import MARKET_COLUMNS, OHLCV_COLUMNS, TICKER_COLUMNS, MarketDataSource, empty_ohlcv

_TICKER_BAD_CHARS = re.compile(r"[^A-Z0-9._-]")

# ccxt precision modes (ccxt.base.decimal_to_precision); repeated here so no ccxt import is needed.
_DECIMAL_PLACES = 2
_TICK_SIZE = 4


def _num(value: Any) -> float:
    """A float, or NaN for None / unparsable values."""
    if value is None:
        return float("nan")
    try:
        out = float(value)
    except (TypeError, ValueError):
        return float("nan")
    return out if math.isfinite(out) else float("nan")


def _decimals_of(step: float) -> float:
    """Number of decimals of a step size: 0.01 -> 2, 0.5 -> 1, 10 -> 0; NaN if unknown."""
    if not math.isfinite(step) or step <= 0:
        return float("nan")
    try:
        exponent = Decimal(repr(step)).normalize().as_tuple().exponent
    except InvalidOperation:
        return float("nan")
    return float(max(0, -int(exponent)))


class CcxtSource(MarketDataSource):
    """A ccxt exchange (default Binance spot) as a `MarketDataSource`."""

    name = "ccxt"
    calendar = "24x7"

    PAGE_LIMITS = {"binance": 1000, "binanceus": 1000, "binanceusdm": 1500, "binancecoinm": 1500}
    """Bars per `fetch_ohlcv` request for exchanges whose maximum is known."""
    DEFAULT_PAGE_LIMIT = 500
    MAX_PAGES = 10_000
    """Safety stop for a venue that keeps returning new rows forever."""

    def __init__(self, exchange_id: str = "binance", *, exchange=None, market_type: str = "spot",
                 retries: int = 4, backoff_s: float = 0.5, sleep: Callable[[float], Any] = time.sleep,
                 now_fn: Callable[[], Any] | None = None, api_key: str | None = None,
                 secret: str | None = None, include_partial: bool = False):
        if market_type == "perp":
            market_type = "swap"
        if market_type not in {"spot", "swap"}:
            raise SourceError(
                f"ccxt source: market_type {market_type!r} is not supported; use 'spot' or 'swap' (perp)"
            )
        if retries < 0:
            raise SourceError(f"ccxt source: retries must be >= 0, got {retries}")
        try:
            import ccxt  # noqa: PLC0415 - lazy on purpose
        except ImportError as exc:  # pragma: no cover - ccxt is a dependency
            raise SourceError("ccxt source: the `ccxt` package is not installed; pip install ccxt") from exc
        self._ccxt = ccxt
        self.market_type = market_type
        self.retries = int(retries)
        self.backoff_s = float(backoff_s)
        self._sleep = sleep
        self._now_fn = now_fn
        self.include_partial = include_partial
        self._lock = threading.RLock()

        if exchange is None:
            exchange_id = str(exchange_id).lower()
            if exchange_id not in ccxt.exchanges or not hasattr(ccxt, exchange_id):
                raise SourceError(
                    f"ccxt source: unknown exchange id {exchange_id!r}; use one of ccxt.exchanges "
                    f"(e.g. 'binance', 'kraken', 'okx')"
                )
            config: dict[str, Any] = {"enableRateLimit": True, "options": self._options_for(exchange_id)}
            if api_key:
                config["apiKey"] = api_key
            if secret:
                config["secret"] = secret
            exchange = getattr(ccxt, exchange_id)(config)
        else:
            exchange_id = str(getattr(exchange, "id", exchange_id))
        self.exchange = exchange
        self.exchange_id = exchange_id
        self.exchange_code = _TICKER_BAD_CHARS.sub("", exchange_id.upper())
        rate_limit_ms = _num(getattr(exchange, "rateLimit", None))
        self.rate_limit_per_s = 1000.0 / rate_limit_ms if rate_limit_ms and rate_limit_ms > 0 else 0.0
        self.page_limit = self.PAGE_LIMITS.get(exchange_id, self.DEFAULT_PAGE_LIMIT)

        self._ticker_to_ccxt: dict[str, str] = {}
        self._ccxt_to_ticker: dict[str, str] = {}
        self._markets_loaded = False

    # ------------------------------------------------------------------ construction helpers
    def _options_for(self, exchange_id: str) -> dict[str, Any]:
        """ccxt options restricting market loading to our market type, without private calls."""
        options: dict[str, Any] = {"defaultType": self.market_type}
        if exchange_id.startswith("binance"):
            # binance.load_markets -> fetch_currencies (sapi, needs keys: disabled) and
            # fetch_markets over options.fetchMarkets.types (default spot+linear+inverse);
            # fetchMargins would add two sapi calls when keys are set.
            options.update({
                "fetchMarkets": {"types": ["spot"] if self.market_type == "spot" else ["linear"]},
                "fetchCurrencies": False,
                "fetchMargins": False,
            })
        return options

    # ------------------------------------------------------------------ error handling
    def _call(self, method: str, fn: Callable[..., Any], *args, symbol: str | None = None) -> Any:
        """Run one ccxt call with retries on network errors; map every ccxt error to SourceError."""
        ccxt = self._ccxt
        ex_name = self.exchange_id
        what = f" for {symbol}" if symbol else ""
        attempt = 0
        while True:
            try:
                with self._lock:
                    return fn(*args)
            except ccxt.NetworkError as exc:  # RequestTimeout, DDoSProtection, ExchangeNotAvailable, ...
                if attempt >= self.retries:
                    raise SourceError(
                        f"{ex_name}: {method}{what} failed after {self.retries} retries: "
                        f"{type(exc).__name__}: {exc}; check connectivity (or the exchange status / "
                        f"rate limit) and retry later"
                    ) from exc
                self._sleep(self.backoff_s * 2 ** attempt)
                attempt += 1
            except ccxt.AuthenticationError as exc:  # includes PermissionDenied, AccountSuspended
                raise SourceError(
                    f"{ex_name}: {method}{what} was refused ({type(exc).__name__}: {exc}); check the API "
                    f"key/secret and their permissions (public market data needs no key)"
                ) from exc
            except ccxt.BadSymbol as exc:
                raise SourceError(
                    f"{ex_name}: {method}: symbol {symbol or '?'} is not known to exchange {ex_name} "
                    f"({exc}); check the symbol against markets()"
                ) from exc
            except ccxt.BaseError as exc:  # ExchangeError, NotSupported, BadRequest, ...
                raise SourceError(
                    f"{ex_name}: {method}{what} failed: {type(exc).__name__}: {exc}"
                ) from exc

    # ------------------------------------------------------------------ symbols
    def _ticker_of(self, market: dict) -> str:
        return _TICKER_BAD_CHARS.sub("_", str(market.get("id", "")).upper())

    def _wanted(self, market: dict) -> bool:
        if self.market_type == "spot":
            return bool(market.get("spot")) or market.get("type") == "spot"
        return bool(market.get("swap")) or market.get("type") == "swap"

    def _load_markets(self) -> dict:
        """`load_markets()` once (with retries) and build the symbol maps both ways."""
        with self._lock:
            if self._markets_loaded:
                return self.exchange.markets
        markets = self._call("load_markets", self.exchange.load_markets)
        with self._lock:
            to_ccxt: dict[str, str] = {}
            to_ticker: dict[str, str] = {}
            for ccxt_symbol, market in (markets or {}).items():
                if not self._wanted(market):
                    continue
                ticker = self._ticker_of(market)
                if not ticker or ticker in to_ccxt:  # empty id or a collision: keep the first
                    continue
                to_ccxt[ticker] = ccxt_symbol
                to_ticker[ccxt_symbol] = ticker
            self._ticker_to_ccxt, self._ccxt_to_ticker = to_ccxt, to_ticker
            self._markets_loaded = True
            return markets

    def to_ccxt_symbol(self, symbol: str) -> str:
        """`BINANCE:BTCUSDT` -> `BTC/USDT`; SourceError if the exchange has no such market."""
        check_symbol(symbol)
        exchange, ticker = symbol.split(":", 1)
        if exchange != self.exchange_code:
            raise SourceError(
                f"{self.exchange_id}: symbol {symbol} belongs to exchange {exchange}, not "
                f"{self.exchange_code}; use a source for {exchange.lower()}"
            )
        self._load_markets()
        ccxt_symbol = self._ticker_to_ccxt.get(ticker)
        if ccxt_symbol is None:
            raise SourceError(
                f"{self.exchange_id}: unknown symbol {symbol}: no {self.market_type} market with id "
                f"{ticker} on exchange {self.exchange_id}; check the symbol against markets()"
            )
        return ccxt_symbol

    def from_ccxt_symbol(self, ccxt_symbol: str) -> str:
        """`BTC/USDT` -> `BINANCE:BTCUSDT`; SourceError if unknown."""
        self._load_markets()
        ticker = self._ccxt_to_ticker.get(ccxt_symbol)
        if ticker is None:
            raise SourceError(
                f"{self.exchange_id}: unknown ccxt symbol {ccxt_symbol!r} on exchange {self.exchange_id}"
            )
        return f"{self.exchange_code}:{ticker}"

    # ------------------------------------------------------------------ MarketDataSource
    def now(self) -> pd.Timestamp:
        if self._now_fn is not None:
            ts = pd.Timestamp(self._now_fn())
            return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
        return pd.Timestamp.now(tz="UTC")

    def markets(self) -> pd.DataFrame:
        markets = self._load_markets()
        mode = getattr(self.exchange, "precisionMode", None)
        rows = []
        for ccxt_symbol, ticker in self._ccxt_to_ticker.items():
            m = markets[ccxt_symbol]
            precision = m.get("precision") or {}
            limits = m.get("limits") or {}
            p_price, p_amount = _num(precision.get("price")), _num(precision.get("amount"))
            if mode == _TICK_SIZE:
                tick, step = p_price, p_amount
                price_dec, amount_dec = _decimals_of(tick), _decimals_of(step)
            elif mode == _DECIMAL_PLACES:
                price_dec, amount_dec = p_price, p_amount
                tick = 10.0 ** -p_price if math.isfinite(p_price) else float("nan")
                step = 10.0 ** -p_amount if math.isfinite(p_amount) else float("nan")
            else:  # SIGNIFICANT_DIGITS or unknown: no fixed tick / step
                tick = step = price_dec = amount_dec = float("nan")
            lot = step if math.isfinite(step) else _num((limits.get("amount") or {}).get("min"))
            active = m.get("active")
            rows.append({
                "symbol": f"{self.exchange_code}:{ticker}",
                "exchange": self.exchange_code,
                "base": m.get("base"),
                "quote": m.get("quote"),
                "type": "spot" if m.get("spot") or m.get("type") == "spot" else "perp",
                # ccxt leaves `active` None when the venue does not say; treat that as listed
                "active": True if active is None else bool(active),
                "tick_size": tick,
                "lot_size": lot,
                "min_notional": _num((limits.get("cost") or {}).get("min")),
                "price_precision": price_dec,
                "amount_precision": amount_dec,
                "maker_fee": _num(m.get("maker")),
                "taker_fee": _num(m.get("taker")),
            })
        frame = pd.DataFrame(rows, columns=MARKET_COLUMNS)
        frame["active"] = frame["active"].astype(bool)
        for col in MARKET_COLUMNS[6:]:
            frame[col] = frame[col].astype("float64")
        return frame.sort_values("symbol", ignore_index=True)

    def tickers(self) -> pd.DataFrame:
        self._load_markets()
        raw = self._call("fetch_tickers", self.exchange.fetch_tickers) or {}
        rows = []
        for ccxt_symbol, t in raw.items():
            ticker = self._ccxt_to_ticker.get(t.get("symbol") or ccxt_symbol)
            if ticker is None:  # a market we do not list (other type, unknown id)
                continue
            rows.append({
                "symbol": f"{self.exchange_code}:{ticker}",
                "last": _num(t.get("last")),
                "quote_volume": _num(t.get("quoteVolume")),
                "change_pct": _num(t.get("percentage")),
            })
        frame = pd.DataFrame(rows, columns=TICKER_COLUMNS)
        for col in TICKER_COLUMNS[1:]:
            frame[col] = frame[col].astype("float64")
        return frame.sort_values("symbol", ignore_index=True)

    def ohlcv(self, symbol: str, timeframe: str = "1d", since: pd.Timestamp | None = None,
              limit: int | None = None) -> pd.DataFrame:
        ccxt_symbol = self.to_ccxt_symbol(symbol)
        timeframes = getattr(self.exchange, "timeframes", None) or {}
        if timeframes and timeframe not in timeframes:
            raise SourceError(
                f"{self.exchange_id}: timeframe {timeframe!r} is not offered for {symbol}; "
                f"use one of {sorted(timeframes)}"
            )
        if limit is not None and limit <= 0:
            return empty_ohlcv()
        tf_ms = int(self._ccxt.Exchange.parse_timeframe(timeframe) * 1000)
        now_ms = int(self.now().value // 1_000_000)
        # the last bar we want opens at or before `horizon` (closed bars only unless asked otherwise)
        horizon = now_ms if self.include_partial else now_ms - tf_ms

        if since is not None:
            since_ts = pd.Timestamp(since)
            since_ts = since_ts.tz_localize("UTC") if since_ts.tzinfo is None else since_ts.tz_convert("UTC")
            start_ms = int(since_ts.value // 1_000_000)
            take_last = False
        elif limit is not None:  # the latest `limit` bars
            start_ms = max(0, (horizon // tf_ms - limit + 1) * tf_ms)
            take_last = True
        else:
            start_ms = 0
            take_last = False

        rows: list[list] = []
        seen: set[int] = set()
        cursor = start_ms
        for _ in range(self.MAX_PAGES):
            want = self.page_limit if limit is None or take_last else min(self.page_limit, limit - len(seen))
            page = self._call("fetch_ohlcv", self.exchange.fetch_ohlcv, ccxt_symbol, timeframe, cursor, want,
                              symbol=symbol) or []
            new = [r for r in page if r and r[0] is not None and int(r[0]) >= start_ms and int(r[0]) not in seen]
            if not new:
                break
            for r in new:
                seen.add(int(r[0]))
            rows.extend(new)
            last_ts = max(int(r[0]) for r in page if r and r[0] is not None)
            if limit is not None and not take_last and len(seen) >= limit:
                break
            if last_ts + tf_ms > horizon:  # the next bar would open after the horizon
                break
            cursor = last_ts + 1

        if not rows:
            return empty_ohlcv()
        frame = pd.DataFrame([list(r[:6]) for r in rows], columns=["ms", *OHLCV_COLUMNS[1:]])
        frame = frame[frame["ms"] <= horizon]
        frame = frame.drop_duplicates("ms", keep="last").sort_values("ms")
        if limit is not None:
            frame = frame.tail(limit) if take_last else frame.head(limit)
        ts = pd.to_datetime(frame["ms"].to_numpy(dtype="int64"), unit="ms", utc=True).as_unit("ns")
        out = pd.DataFrame({"ts": ts})
        for col in OHLCV_COLUMNS[1:]:
            out[col] = frame[col].to_numpy(dtype="float64")
        return out[OHLCV_COLUMNS]


__all__ = ["CcxtSource"]
