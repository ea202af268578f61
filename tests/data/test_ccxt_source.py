"""Offline tests of the ccxt source: recorded Binance payloads go through ccxt's own parsing.

The transport is replaced on the exchange instance: ccxt's `Exchange.fetch(url, method, headers,
body)` is the one method that performs HTTP and returns the decoded JSON, so every request built by
ccxt (signing, query strings, rate-limit costs) and every response parser runs for real. Error
responses are produced the way the real `fetch` produces them: connection failures raise
`ccxt.NetworkError` subclasses, HTTP errors are passed through Binance's own `handle_errors`.
Any URL the fake does not know fails the test, and `requests` is disabled altogether.
"""
from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import numpy as np
import pandas as pd
import pytest

ccxt = pytest.importorskip("ccxt")

from quantlib.core.errors import SourceError  # noqa: E402
from quantlib.data.sources.base import MARKET_COLUMNS, OHLCV_COLUMNS, TICKER_COLUMNS  # noqa: E402
from quantlib.data.sources.ccxt_source import CcxtSource  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures" / "binance"
DAY_MS = 86_400_000
FIRST_OPEN_MS = 1514764800000  # 2018-01-01T00:00:00Z
N_CLOSED = 2500  # closed daily bars served; one more bar is still forming at NOW
NOW = pd.Timestamp(FIRST_OPEN_MS + N_CLOSED * DAY_MS + 2 * 3_600_000, unit="ms", tz="UTC")


def make_klines(n: int, seed: int = 7) -> list[list]:
    """`n` Binance kline rows (12 fields, prices as strings) of a seeded random walk."""
    rng = np.random.default_rng(seed)
    close = 13_000.0 * np.exp(np.cumsum(rng.normal(0.0, 0.03, n)))
    open_ = np.concatenate([[13_000.0], close[:-1]])
    spread = np.abs(rng.normal(0.0, 0.01, n))
    high = np.maximum(open_, close) * (1 + spread)
    low = np.minimum(open_, close) * (1 - spread)
    volume = rng.uniform(10_000, 60_000, n)
    rows = []
    for i in range(n):
        t = FIRST_OPEN_MS + i * DAY_MS
        rows.append([
            t, f"{open_[i]:.2f}", f"{high[i]:.2f}", f"{low[i]:.2f}", f"{close[i]:.2f}", f"{volume[i]:.5f}",
            t + DAY_MS - 1, f"{volume[i] * close[i]:.8f}", int(volume[i] * 37), f"{volume[i] / 2:.5f}",
            f"{volume[i] * close[i] / 2:.8f}", "0",
        ])
    return rows


KLINES = make_klines(N_CLOSED + 1)  # the last row is the bar forming at NOW
BAR_TS = pd.to_datetime([r[0] for r in KLINES], unit="ms", utc=True)


def binance_http_error(exchange, status: int, reason: str, url: str, payload: dict):
    """Raise what ccxt's real `fetch` raises for an HTTP error response (Binance's own mapping)."""
    body = json.dumps(payload)
    exchange.handle_errors(status, reason, url, "GET", {}, body, payload, {}, None)
    exchange.handle_http_status_code(status, reason, url, "GET", body)
    raise ccxt.ExchangeError(f"{exchange.id} GET {url}")


class FakeBinance:
    """Replacement for `exchange.fetch`: routes Binance REST paths to recorded payloads."""

    def __init__(self, exchange, klines=KLINES, server_now: pd.Timestamp = NOW):
        self.exchange = exchange
        self.klines = klines
        self.server_now_ms = int(server_now.value // 1_000_000)
        self.exchange_info = json.loads((FIXTURES / "exchange_info.json").read_text())
        self.tickers = json.loads((FIXTURES / "ticker_24hr.json").read_text())
        self.requests: list[tuple[str, dict]] = []
        self.forever = False
        self.failures: dict[str, list] = {}  # path -> queue of callables raising an error

    def fail(self, path: str, *errors, forever: bool = False):
        """Make the next requests to `path` fail with `errors` in turn (the last one forever)."""
        self.failures.setdefault(path, []).extend(errors)
        self.forever = forever

    def __call__(self, url, method="GET", headers=None, body=None):
        parts = urlsplit(url)
        query = dict(parse_qsl(parts.query))
        self.requests.append((parts.path, query))
        if parts.netloc != "api.binance.com" or method != "GET":
            raise AssertionError(f"unexpected request {method} {url}: tests must not touch the network")
        queue = self.failures.get(parts.path)
        if queue:
            error = queue[0] if (self.forever and len(queue) == 1) else queue.pop(0)
            error(self.exchange, url)
        if parts.path == "/api/v3/exchangeInfo":
            return copy.deepcopy(self.exchange_info)
        if parts.path == "/api/v3/ticker/24hr":
            return copy.deepcopy(self.tickers)
        if parts.path == "/api/v3/klines":
            return self._klines(query)
        raise AssertionError(f"unexpected request {method} {url}: tests must not touch the network")

    def _klines(self, q: dict) -> list[list]:
        assert q["interval"] == "1d"
        if q["symbol"] not in {s["symbol"] for s in self.exchange_info["symbols"]}:
            binance_http_error(self.exchange, 400, "Bad Request", "/api/v3/klines",
                               {"code": -1121, "msg": "Invalid symbol."})
        limit = min(int(q.get("limit", 500)), 1000)
        rows = [r for r in self.klines if r[0] <= self.server_now_ms]
        if "startTime" in q:
            rows = [r for r in rows if r[0] >= int(q["startTime"])][:limit]
        else:
            rows = rows[-limit:]
        return copy.deepcopy(rows)

    def paths(self) -> list[str]:
        return [p for p, _ in self.requests]

    def kline_requests(self) -> list[dict]:
        return [q for p, q in self.requests if p == "/api/v3/klines"]


def network_error(cls=ccxt.RequestTimeout):
    def raise_(exchange, url):
        raise cls(f"{exchange.id} GET {url}")
    return raise_


def http_error(status, reason, payload):
    def raise_(exchange, url):
        binance_http_error(exchange, status, reason, url, payload)
    return raise_


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Belt and braces: any real HTTP attempt fails the test."""
    import requests

    def refuse(*args, **kwargs):
        raise AssertionError("real HTTP request attempted in an offline test")

    monkeypatch.setattr(requests.Session, "request", refuse)


@pytest.fixture
def make():
    """Build a CcxtSource through its real constructor, with the fake transport installed."""

    def build(**kwargs):
        sleeps: list[float] = []
        kwargs.setdefault("sleep", sleeps.append)
        kwargs.setdefault("now_fn", lambda: NOW)
        src = CcxtSource("binance", **kwargs)
        # ccxt's sync throttle sleeps rateLimit * cost in real time (ticker/24hr costs 80 x 50 ms):
        # off in tests; test_constructor_configures_binance checks it is on by default.
        src.exchange.enableRateLimit = False
        fake = FakeBinance(src.exchange)
        src.exchange.fetch = fake
        return src, fake, sleeps

    return build


# ---------------------------------------------------------------------------- construction
def test_constructor_configures_binance(make):
    src = CcxtSource("binance", now_fn=lambda: NOW)
    ex = src.exchange
    assert isinstance(ex, ccxt.binance)
    assert ex.enableRateLimit is True
    assert ex.options["fetchMarkets"]["types"] == ["spot"]
    assert ex.options["fetchCurrencies"] is False
    assert ex.options["defaultType"] == "spot"
    assert src.rate_limit_per_s == pytest.approx(1000.0 / ex.rateLimit)
    assert src.page_limit == 1000
    assert src.now() == NOW


def test_load_markets_requests_only_public_exchange_info_even_with_keys(make):
    # without fetchCurrencies/fetchMargins disabled, keys would trigger private sapi calls
    src, fake, _ = make(api_key="k" * 64, secret="s" * 64)
    assert src.exchange.apiKey == "k" * 64
    src.markets()
    assert fake.paths() == ["/api/v3/exchangeInfo"]
    src.markets()
    src.to_ccxt_symbol("BINANCE:ETHUSDT")
    assert fake.paths() == ["/api/v3/exchangeInfo"]  # markets are loaded once


def test_unknown_exchange_id():
    with pytest.raises(SourceError) as err:
        CcxtSource("notanexchange")
    assert "notanexchange" in str(err.value)
    assert "ccxt.exchanges" in str(err.value)


def test_now_defaults_to_utc_wall_clock():
    src = CcxtSource("binance")
    before = pd.Timestamp.now(tz="UTC")
    now = src.now()
    assert str(now.tz) == "UTC"
    assert before <= now <= pd.Timestamp.now(tz="UTC")


# ---------------------------------------------------------------------------- markets / tickers
def test_markets_table(make):
    src, _, _ = make()
    m = src.markets()
    assert list(m.columns) == MARKET_COLUMNS
    assert list(m["symbol"]) == ["BINANCE:BCCUSDT", "BINANCE:BTCUSDC", "BINANCE:BTCUSDT", "BINANCE:ETHUSDT"]
    m = m.set_index("symbol")
    btc = m.loc["BINANCE:BTCUSDT"]
    assert (btc["exchange"], btc["base"], btc["quote"], btc["type"]) == ("BINANCE", "BTC", "USDT", "spot")
    assert bool(btc["active"]) is True
    assert btc["tick_size"] == 0.01            # PRICE_FILTER tickSize
    assert btc["lot_size"] == 0.00001          # LOT_SIZE stepSize
    assert btc["min_notional"] == 5.0          # NOTIONAL minNotional
    assert btc["price_precision"] == 2
    assert btc["amount_precision"] == 5
    assert btc["maker_fee"] == 0.001 and btc["taker_fee"] == 0.001
    eth = m.loc["BINANCE:ETHUSDT"]
    assert (eth["lot_size"], eth["amount_precision"]) == (0.0001, 4)
    assert m.loc["BINANCE:BTCUSDC", "quote"] == "USDC"
    bcc = m.loc["BINANCE:BCCUSDT"]              # status BREAK, legacy MIN_NOTIONAL filter
    assert bool(bcc["active"]) is False
    assert (bcc["tick_size"], bcc["lot_size"], bcc["min_notional"]) == (0.1, 0.001, 10.0)
    assert (bcc["price_precision"], bcc["amount_precision"]) == (1, 3)
    assert m["active"].dtype == bool
    assert m[MARKET_COLUMNS[6:]].dtypes.eq("float64").all()


def test_markets_missing_fields_stay_nan(make):
    src, fake, _ = make()
    btc = fake.exchange_info["symbols"][0]
    btc["filters"] = [f for f in btc["filters"] if f["filterType"] not in {"NOTIONAL", "LOT_SIZE"}]
    m = src.markets().set_index("symbol")
    assert math.isnan(m.loc["BINANCE:BTCUSDT", "min_notional"])
    assert math.isnan(m.loc["BINANCE:BTCUSDT", "lot_size"])
    assert math.isnan(m.loc["BINANCE:BTCUSDT", "amount_precision"])
    assert m.loc["BINANCE:BTCUSDT", "tick_size"] == 0.01


def test_tickers_table(make):
    src, fake, _ = make()
    t = src.tickers()
    assert list(t.columns) == TICKER_COLUMNS
    assert "/api/v3/ticker/24hr" in fake.paths()
    t = t.set_index("symbol")
    assert sorted(t.index) == ["BINANCE:BCCUSDT", "BINANCE:BTCUSDC", "BINANCE:BTCUSDT", "BINANCE:ETHUSDT"]
    assert t.loc["BINANCE:BTCUSDT", "last"] == 97135.55
    assert t.loc["BINANCE:BTCUSDT", "quote_volume"] == pytest.approx(1834047293.7241953)
    assert t.loc["BINANCE:BTCUSDT", "change_pct"] == 2.334
    assert t.loc["BINANCE:ETHUSDT", "last"] == 3408.19
    assert t.loc["BINANCE:ETHUSDT", "change_pct"] == -1.195
    assert t.loc["BINANCE:BTCUSDC", "quote_volume"] == pytest.approx(211518720.4837784)
    assert t.loc["BINANCE:BCCUSDT", "quote_volume"] == 0.0


def test_tickers_drop_markets_we_do_not_list(make):
    src, fake, _ = make()
    extra = dict(fake.tickers[0], symbol="XYZUSDT")
    fake.tickers.append(extra)
    assert "BINANCE:XYZUSDT" not in set(src.tickers()["symbol"])


# ---------------------------------------------------------------------------- symbols
def test_symbol_mapping_both_ways(make):
    src, _, _ = make()
    assert src.to_ccxt_symbol("BINANCE:BTCUSDT") == "BTC/USDT"
    assert src.to_ccxt_symbol("BINANCE:BTCUSDC") == "BTC/USDC"
    assert src.from_ccxt_symbol("ETH/USDT") == "BINANCE:ETHUSDT"
    assert src.from_ccxt_symbol("BCC/USDT") == "BINANCE:BCCUSDT"
    for sym in src.markets()["symbol"]:
        assert src.from_ccxt_symbol(src.to_ccxt_symbol(sym)) == sym


def test_unknown_symbol_is_a_source_error(make):
    src, fake, _ = make()
    with pytest.raises(SourceError, match="BINANCE:DOGEUSDT") as err:
        src.ohlcv("BINANCE:DOGEUSDT")
    assert "binance" in str(err.value)
    assert fake.kline_requests() == []  # rejected before any request
    with pytest.raises(SourceError, match="KRAKEN:BTCUSDT"):
        src.to_ccxt_symbol("KRAKEN:BTCUSDT")
    with pytest.raises(SourceError, match="DOGE/USDT"):
        src.from_ccxt_symbol("DOGE/USDT")


def test_exchange_rejecting_a_symbol_is_a_source_error(make):
    src, fake, _ = make()
    fake.fail("/api/v3/klines", http_error(400, "Bad Request", {"code": -1121, "msg": "Invalid symbol."}))
    with pytest.raises(SourceError) as err:
        src.ohlcv("BINANCE:ETHUSDT")
    assert isinstance(err.value.__cause__, ccxt.BadSymbol)
    assert "BINANCE:ETHUSDT" in str(err.value) and "binance" in str(err.value)


# ---------------------------------------------------------------------------- ohlcv
def expected_bars(first: int, last: int) -> pd.DataFrame:
    rows = KLINES[first:last]
    return pd.DataFrame({
        "ts": pd.to_datetime([r[0] for r in rows], unit="ms", utc=True).as_unit("ns"),
        **{c: [float(r[i]) for r in rows] for i, c in enumerate(OHLCV_COLUMNS[1:], start=1)},
    })


def test_ohlcv_pages_through_full_history(make):
    src, fake, _ = make()
    bars = src.ohlcv("BINANCE:BTCUSDT", "1d")
    reqs = fake.kline_requests()
    assert len(reqs) == 3
    assert [int(q["startTime"]) for q in reqs] == [0, KLINES[999][0] + 1, KLINES[1999][0] + 1]
    assert all(q["limit"] == "1000" and q["symbol"] == "BTCUSDT" for q in reqs)
    assert list(bars.columns) == OHLCV_COLUMNS
    assert len(bars) == N_CLOSED  # the bar still forming at NOW is left out
    assert bars["ts"].is_monotonic_increasing and bars["ts"].is_unique
    assert str(bars["ts"].dt.tz) == "UTC"
    assert bars["ts"].iloc[0] == pd.Timestamp("2018-01-01", tz="UTC")
    assert bars["ts"].iloc[-1] == NOW.floor("D") - pd.Timedelta(days=1)
    pd.testing.assert_frame_equal(bars, expected_bars(0, N_CLOSED))


def test_ohlcv_include_partial_keeps_forming_bar(make):
    src, _, _ = make(include_partial=True)
    bars = src.ohlcv("BINANCE:BTCUSDT")
    assert len(bars) == N_CLOSED + 1
    assert bars["ts"].iloc[-1] == NOW.floor("D")


def test_ohlcv_overlapping_pages_are_deduplicated(make):
    src, fake, _ = make()
    serve = fake._klines

    def overlapping(q):  # a venue that re-sends the last 5 bars of the previous page
        if int(q.get("startTime", 0)) > 0:
            q = dict(q, startTime=str(int(q["startTime"]) - 5 * DAY_MS))
        return serve(q)

    fake._klines = overlapping
    bars = src.ohlcv("BINANCE:BTCUSDT")
    assert len(fake.kline_requests()) >= 3
    pd.testing.assert_frame_equal(bars, expected_bars(0, N_CLOSED))


def test_ohlcv_stops_when_a_page_brings_nothing_new(make):
    src, fake, _ = make()
    serve = fake._klines
    fake._klines = lambda q: serve(dict(q, startTime="0"))  # a venue that ignores startTime
    bars = src.ohlcv("BINANCE:BTCUSDT")
    assert len(fake.kline_requests()) == 2
    pd.testing.assert_frame_equal(bars, expected_bars(0, 1000))


def test_ohlcv_honours_since(make):
    src, fake, _ = make()
    since = BAR_TS[1234] + pd.Timedelta(hours=1)  # not aligned: first bar is the next one
    bars = src.ohlcv("BINANCE:BTCUSDT", since=since)
    assert int(fake.kline_requests()[0]["startTime"]) == KLINES[1234][0] + 3_600_000
    pd.testing.assert_frame_equal(bars, expected_bars(1235, N_CLOSED))
    aligned = src.ohlcv("BINANCE:BTCUSDT", since=BAR_TS[1234])
    assert aligned["ts"].iloc[0] == BAR_TS[1234]
    assert len(aligned) == N_CLOSED - 1234


def test_ohlcv_honours_since_and_limit(make):
    src, fake, _ = make()
    bars = src.ohlcv("BINANCE:BTCUSDT", since=BAR_TS[100], limit=1500)
    assert [q["limit"] for q in fake.kline_requests()] == ["1000", "500"]
    pd.testing.assert_frame_equal(bars, expected_bars(100, 1600))


def test_ohlcv_limit_without_since_returns_latest_bars(make):
    src, _, _ = make()
    bars = src.ohlcv("BINANCE:BTCUSDT", limit=10)
    pd.testing.assert_frame_equal(bars, expected_bars(N_CLOSED - 10, N_CLOSED))


def test_ohlcv_since_in_future_is_empty(make):
    src, _, _ = make()
    bars = src.ohlcv("BINANCE:BTCUSDT", since=NOW + pd.Timedelta(days=3))
    assert bars.empty and list(bars.columns) == OHLCV_COLUMNS
    assert str(bars["ts"].dtype) == "datetime64[ns, UTC]"


def test_ohlcv_unknown_timeframe(make):
    src, _, _ = make()
    with pytest.raises(SourceError, match="7d"):
        src.ohlcv("BINANCE:BTCUSDT", "7d")


# ---------------------------------------------------------------------------- retries and errors
def test_network_error_twice_then_success(make):
    src, fake, sleeps = make(retries=4, backoff_s=0.5)
    fake.fail("/api/v3/exchangeInfo", network_error(ccxt.RequestTimeout), network_error(ccxt.ExchangeNotAvailable))
    fake.fail("/api/v3/klines", http_error(429, "Too Many Requests", {"code": -1003, "msg": "Too many requests."}))
    m = src.markets()
    assert len(m) == 4
    assert sleeps == [0.5, 1.0]
    assert fake.paths().count("/api/v3/exchangeInfo") == 3
    sleeps.clear()
    bars = src.ohlcv("BINANCE:BTCUSDT", since=BAR_TS[-10])  # 429 -> ccxt DDoSProtection -> retried
    assert sleeps == [0.5]
    assert len(bars) == 9


def test_network_error_forever(make):
    src, fake, sleeps = make(retries=3, backoff_s=0.25)
    fake.fail("/api/v3/ticker/24hr", network_error(ccxt.NetworkError), forever=True)
    src.markets()
    with pytest.raises(SourceError) as err:
        src.tickers()
    msg = str(err.value)
    assert "binance" in msg and "fetch_tickers" in msg
    assert "failed after 3 retries" in msg and "check connectivity" in msg
    assert sleeps == [0.25, 0.5, 1.0]
    assert fake.paths().count("/api/v3/ticker/24hr") == 4
    assert isinstance(err.value.__cause__, ccxt.NetworkError)


def test_authentication_error(make):
    src, fake, sleeps = make(api_key="bad", secret="bad")
    fake.fail("/api/v3/exchangeInfo", http_error(
        401, "Unauthorized", {"code": -2015, "msg": "Invalid API-key, IP, or permissions for action."}))
    with pytest.raises(SourceError, match="API key") as err:
        src.markets()
    assert isinstance(err.value.__cause__, ccxt.AuthenticationError)
    assert sleeps == []  # not retried


def test_permission_denied(make):
    src, fake, _ = make()
    fake.fail("/api/v3/ticker/24hr", network_error(ccxt.PermissionDenied))
    with pytest.raises(SourceError, match="API key"):
        src.tickers()


def test_other_exchange_error_carries_exchange_message(make):
    src, fake, sleeps = make()
    fake.fail("/api/v3/klines", http_error(
        400, "Bad Request", {"code": -1100, "msg": "Illegal characters found in parameter 'symbol'."}))
    with pytest.raises(SourceError) as err:
        src.ohlcv("BINANCE:BTCUSDT")
    assert "Illegal characters found in parameter" in str(err.value)
    assert isinstance(err.value.__cause__, ccxt.ExchangeError)
    assert sleeps == []
