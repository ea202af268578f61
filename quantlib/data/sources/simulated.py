"""A deterministic simulated exchange (offline default source).

Two venues share one generator:
- ``crypto``: `BINANCE:<BASE><QUOTE>` spot pairs quoted in USDT/USDC/FDUSD (plus a few perps), 24x7.
- ``equities``: `SIMEQ:<TICKER>` stocks on a weekday calendar with exchange holidays removed.

Prices follow a market factor with bull/bear regimes plus GARCH(1,1) idiosyncratic noise with
Student-t(4) innovations (fat tails, volatility clustering); some assets trend, some mean-revert.
Stablecoin and gold-pegged bases exist so that scanners must exclude them. Injected faults:
``SPIKE`` (one day above +500 %), ``GAPPY`` (missing bars), ``DELIST`` (inactive, bars stop),
``ZEROVOL`` (zero volume for the last bars).

Every path is generated on a fixed calendar from `GENESIS` with a seed derived from the venue seed
and the base name, so the same bar has the same value whatever the as-of time or the request window.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pandas as pd

from quantlib.core.errors import SourceError
from quantlib.core.ids import check_symbol
from quantlib.data.sources.base import MARKET_COLUMNS, OHLCV_COLUMNS, TICKER_COLUMNS, MarketDataSource, empty_ohlcv

GENESIS = pd.Timestamp("2020-01-01", tz="UTC")
YOUNGEST_LISTING = pd.Timestamp("2026-09-01", tz="UTC")

CRYPTO_BASES = (
    "BTC ETH BNB SOL XRP DOGE ADA TRX AVAX LINK TON DOT MATIC SHIB LTC BCH UNI ATOM XLM ETC "
    "FIL APT ARB OP NEAR ICP HBAR VET INJ RNDR GRT AAVE MKR SUI SEI TIA STX IMX ALGO EGLD "
    "QNT FLOW XTZ SAND MANA AXS THETA EOS KAVA CHZ GALA FTM RUNE SNX CRV LDO DYDX GMX PEPE "
    "WIF BONK FLOKI JUP PYTH ENA ORDI WLD BLUR CFX KAS ROSE ZIL ONE CELO IOTA NEO WAVES QTUM "
    "ZEC DASH ENJ BAT ZRX COMP YFI SUSHI 1INCH LRC ANKR STORJ SKL OCEAN FET AGIX RLC BAND API3 "
    "MASK ENS GLM HOT IOST JASMY CKB"
).split()
STABLE_BASES = ("USDC", "FDUSD", "TUSD", "DAI", "USDP")
GOLD_BASES = ("PAXG", "XAUT")
FAULT_BASES = ("SPIKE", "GAPPY", "DELIST", "ZEROVOL")
EQUITY_TICKERS = (
    "SPY AAPL MSFT AMZN GOOGL META NVDA TSLA JPM JNJ V PG XOM UNH HD MA CVX MRK ABBV PEP KO "
    "AVGO COST WMT MCD CSCO ADBE CRM NFLX INTC AMD ORCL NKE DIS BA CAT GS IBM QCOM TXN"
).split()
US_HOLIDAYS = ("01-01", "07-04", "12-25", "11-26", "05-25", "09-07")


@dataclass(frozen=True)
class _Asset:
    base: str
    seed: int
    listed: int  # first bar index on the venue calendar
    vol: float  # daily idiosyncratic vol
    beta: float
    drift: float
    kind: str  # normal | trend | meanrev | stable | gold | fault
    liquidity: float  # median daily quote volume (USD)
    price0: float


class SimExchange(MarketDataSource):
    """Deterministic simulated venue speaking the `MarketDataSource` interface."""

    def __init__(self, venue: str = "crypto", seed: int = 7, as_of: str | pd.Timestamp | None = None,
                 n_bases: int | None = None) -> None:
        if venue not in ("crypto", "equities"):
            raise SourceError(f"unknown sim venue {venue!r}: use 'crypto' or 'equities' (profile key source.venue)")
        self.venue = venue
        self.seed = int(seed)
        self._as_of = None if as_of in (None, "") else pd.Timestamp(as_of)
        if self._as_of is not None and self._as_of.tzinfo is None:
            self._as_of = self._as_of.tz_localize("UTC")
        self.calendar = "24x7" if venue == "crypto" else "weekday"
        self.name = f"sim:{venue}"
        self.exchange = "BINANCE" if venue == "crypto" else "SIMEQ"
        names = CRYPTO_BASES if venue == "crypto" else EQUITY_TICKERS
        self._bases = tuple(names[:n_bases] if n_bases else names)

    # ----------------------------------------------------------------- interface
    def now(self) -> pd.Timestamp:
        return self._as_of if self._as_of is not None else pd.Timestamp.now(tz="UTC")

    def snapshot(self) -> str | None:
        """Deterministic given venue, seed, listed names and a fixed `as_of`; on the wall clock, the answers
        (tickers, the time recorded with metadata) change from one second to the next: None."""
        if self._as_of is None:
            return None
        return f"{self.name} seed={self.seed} bases={len(self._bases)} as_of={self._as_of.isoformat()}"

    def markets(self) -> pd.DataFrame:
        rows = []
        last_close = self._panel["close"][-1]
        for pair in self._pairs:
            asset = self._assets[pair.base]
            price = float(last_close[self._index[pair.base]]) if np.isfinite(last_close[self._index[pair.base]]) else asset.price0
            tick = 10.0 ** np.floor(np.log10(max(price, 1e-8)) - 4)
            lot = 10.0 ** np.floor(-np.log10(max(price, 1e-8)) + 1) if price < 10 else 1e-5
            if self.venue == "equities":
                tick, lot = 0.01, 1.0
            missing_meta = pair.base == "GAPPY"  # one listing without a lot size, reported as missing
            rows.append({
                "symbol": pair.symbol, "exchange": self.exchange, "base": pair.base, "quote": pair.quote,
                "type": pair.type, "active": pair.base != "DELIST", "tick_size": tick,
                "lot_size": np.nan if missing_meta else lot, "min_notional": 5.0 if self.venue == "crypto" else 1.0,
                "price_precision": int(max(0, -np.log10(tick))), "amount_precision": int(max(0, -np.log10(lot))),
                "maker_fee": 0.001 if self.venue == "crypto" else 0.0, "taker_fee": 0.001 if self.venue == "crypto" else 0.0005,
            })
        return pd.DataFrame(rows, columns=MARKET_COLUMNS)

    def tickers(self) -> pd.DataFrame:
        rows = []
        for pair in self._pairs:
            bars = self._bars(pair)
            if bars.empty or bars["ts"].iloc[-1] < self._last_bar_ts:
                rows.append({"symbol": pair.symbol, "last": float(bars["close"].iloc[-1]) if len(bars) else np.nan,
                             "quote_volume": 0.0, "change_pct": 0.0})
                continue
            close = bars["close"].to_numpy()
            change = (close[-1] / close[-2] - 1.0) * 100.0 if len(close) > 1 else 0.0
            rows.append({"symbol": pair.symbol, "last": float(close[-1]),
                         "quote_volume": float(close[-1] * bars["volume"].iloc[-1]), "change_pct": float(change)})
        return pd.DataFrame(rows, columns=TICKER_COLUMNS)

    def ohlcv(self, symbol: str, timeframe: str = "1d", since: pd.Timestamp | None = None,
              limit: int | None = None) -> pd.DataFrame:
        check_symbol(symbol)
        if timeframe != "1d":
            raise SourceError(f"{self.name}: timeframe {timeframe!r} not offered; the simulator has '1d' bars only")
        pair = self._pair_by_symbol.get(symbol)
        if pair is None:
            raise SourceError(f"{self.name}: unknown symbol {symbol!r}; list markets() for the symbols it offers")
        bars = self._bars(pair)
        if since is not None:
            bars = bars[bars["ts"] >= pd.Timestamp(since)]
        if limit is not None:
            bars = bars.iloc[: int(limit)]
        return bars.reset_index(drop=True)

    # ----------------------------------------------------------------- generation
    @cached_property
    def _calendar(self) -> pd.DatetimeIndex:
        """All bar open times from GENESIS to the last completed bar (venue calendar)."""
        days = pd.date_range(GENESIS, self._last_bar_ts, freq="D")
        if self.venue == "equities":
            days = days[(days.day_of_week < 5) & ~days.strftime("%m-%d").isin(US_HOLIDAYS)]
        return days

    @property
    def _last_bar_ts(self) -> pd.Timestamp:
        """Open time of the last completed daily bar at `now()`."""
        return self.now().floor("D") - pd.Timedelta(days=1)

    @cached_property
    def _assets(self) -> dict[str, _Asset]:
        names = list(self._bases)
        if self.venue == "crypto":
            names += list(STABLE_BASES) + list(GOLD_BASES) + list(FAULT_BASES)
        n_days = len(pd.date_range(GENESIS, YOUNGEST_LISTING, freq="D"))
        assets = {}
        for rank, base in enumerate(names):
            seed = zlib.crc32(f"{self.seed}:{self.venue}:{base}".encode())
            rng = np.random.default_rng(seed)
            kind = rng.choice(["normal", "normal", "trend", "meanrev"])
            if base in STABLE_BASES:
                kind = "stable"
            elif base in GOLD_BASES:
                kind = "gold"
            elif base in FAULT_BASES:
                kind = "fault"
            # most assets listed early; every 7th is young (short history)
            listed = int(rng.integers(0, 300)) if rank % 7 else int(rng.integers(0, n_days))
            if base in ("BTC", "ETH", "SPY"):
                kind = "normal"
            if base in ("BTC", "ETH", "SPY") or kind in ("stable", "gold", "fault"):
                listed = 0
            crypto = self.venue == "crypto"
            if not crypto:
                listed = listed * 5 // 7  # the weekday calendar has about 5/7 as many bars
            vol = float(rng.uniform(0.02, 0.06) if crypto else rng.uniform(0.008, 0.02))
            liquidity = float(np.exp(rng.normal(np.log(3e8 if crypto else 2e9), 1.2)) / (1 + rank / 20))
            assets[base] = _Asset(
                base=base, seed=seed, listed=listed, vol=vol,
                beta=float(rng.uniform(0.6, 1.4)), drift=float(rng.normal(0, 0.0015 if crypto else 0.0004)),
                kind=str(kind), liquidity=liquidity, price0=float(np.exp(rng.uniform(np.log(0.05), np.log(500)))),
            )
        if "BTC" in assets:
            assets["BTC"] = _replace(assets["BTC"], price0=30000.0, liquidity=2e10, vol=0.025, beta=1.0)
        if "ETH" in assets:
            assets["ETH"] = _replace(assets["ETH"], price0=2000.0, liquidity=1e10, beta=1.1)
        if "SPY" in assets:
            assets["SPY"] = _replace(assets["SPY"], price0=400.0, liquidity=3e10, vol=0.004, beta=1.0, drift=0.0002)
        for base in ("SPIKE", "GAPPY"):
            if base in assets:
                assets[base] = _replace(assets[base], liquidity=5e8)
        return assets

    @cached_property
    def _index(self) -> dict[str, int]:
        return {base: i for i, base in enumerate(self._assets)}

    @cached_property
    def _panel(self) -> dict[str, np.ndarray]:
        """OHLCV arrays (T x bases) on the venue calendar; NaN before listing or on missing bars."""
        T, assets = len(self._calendar), list(self._assets.values())
        N = len(assets)
        crypto = self.venue == "crypto"
        market_rng = self._rng("market")
        # market factor: two-state regime chain (bull/bear) with GARCH volatility
        regime = np.empty(T, dtype=np.int8)
        state = 1
        switch = self._rng("regime").random(T)
        for t in range(T):
            if switch[t] < 1 / 120:
                state = 1 - state
            regime[t] = state
        mu = np.where(regime == 1, 0.0012 if crypto else 0.0005, -0.0015 if crypto else -0.0006)
        market = mu + _garch(market_rng, T, 1, 0.025 if crypto else 0.009)[:, 0]

        eps = np.empty((T, N))
        for j, asset in enumerate(assets):  # each asset's own seeded innovations ...
            eps[:, j] = _student_t(np.random.default_rng(asset.seed), T, 1)[:, 0]
        eps = _garch_filter(eps, np.array([a.vol for a in assets]))  # ... one GARCH pass over all of them
        beta = np.array([a.beta for a in assets])
        drift = np.array([a.drift for a in assets])
        kinds = np.array([a.kind for a in assets])
        logret = beta * market[:, None] + eps + drift
        trend = kinds == "trend"
        logret[:, trend] += np.sign(drift[trend] + 1e-9) * (0.0008 if crypto else 0.0003)
        logp = np.log([a.price0 for a in assets]) + np.cumsum(logret, axis=0)
        meanrev = kinds == "meanrev"
        if meanrev.any():  # Ornstein-Uhlenbeck around the starting level
            level = np.log([a.price0 for a in assets])[meanrev]
            x = np.empty((T, meanrev.sum()))
            x_prev = level.copy()
            shocks = eps[:, meanrev] + 0.5 * market[:, None]
            for t in range(T):
                x_prev = x_prev + shocks[t] - 0.03 * (x_prev - level)
                x[t] = x_prev
            logp[:, meanrev] = x
        for kind, anchor, scale in (("stable", 1.0, 0.0004), ("gold", 1900.0, 0.009)):
            cols = kinds == kind
            if cols.any():
                noise = self._rng(kind).normal(0, scale, (T, cols.sum()))
                drift_gold = np.arange(T)[:, None] * (0.0003 if kind == "gold" else 0.0)
                logp[:, cols] = np.log(anchor) + drift_gold + (noise if kind == "stable" else np.cumsum(noise, 0) * 0.3)
        close = np.exp(logp)
        vol = np.array([a.vol for a in assets])
        prev = np.vstack([close[:1], close[:-1]])
        gap = 0.0 if crypto else 0.2
        open_ = prev * np.exp(self._rng("gap").normal(0, 1, (T, N)) * vol * gap)
        high = np.maximum(open_, close) * np.exp(np.abs(self._rng("high").normal(0, 1, (T, N))) * vol * 0.4)
        low = np.minimum(open_, close) * np.exp(-np.abs(self._rng("low").normal(0, 1, (T, N))) * vol * 0.4)
        ret = np.abs(np.diff(np.log(close), axis=0, prepend=np.log(close[:1])))
        liquidity = np.array([a.liquidity for a in assets])
        quote_volume = liquidity * np.exp(self._rng("volume").normal(0, 0.35, (T, N))) * (1 + 8 * ret)
        volume = quote_volume / close
        panel = {"open": open_, "high": high, "low": low, "close": close, "volume": volume}
        listed = np.array([a.listed for a in assets])
        alive = np.arange(T)[:, None] >= listed
        self._inject_faults(panel, alive)
        for key in panel:
            panel[key] = np.where(alive, panel[key], np.nan)
        return panel

    def _rng(self, purpose: str) -> np.random.Generator:
        """An independent stream per purpose, so that draws never depend on the calendar length."""
        return np.random.default_rng(zlib.crc32(f"{self.seed}:{self.venue}:{purpose}".encode()))

    def _inject_faults(self, panel: dict[str, np.ndarray], alive: np.ndarray) -> None:
        """Plant the documented faults at fixed offsets from the end of the calendar."""
        T = alive.shape[0]
        idx = self._index
        if "SPIKE" in idx:  # one day > +500 %, 30 bars before the end; the level stays up
            j, t = idx["SPIKE"], T - 30
            for key in ("open", "high", "low", "close"):
                panel[key][t:, j] *= 7.0
            panel["open"][t, j] = panel["close"][t - 1, j]
            panel["low"][t, j] = panel["close"][t - 1, j]
        if "GAPPY" in idx:  # three missing bars inside the recent window
            for t in (T - 50, T - 120, T - 121):
                alive[t, idx["GAPPY"]] = False
        if "DELIST" in idx:  # delisted 40 bars before the end
            alive[T - 40:, idx["DELIST"]] = False
        if "ZEROVOL" in idx:
            panel["volume"][T - 8:, idx["ZEROVOL"]] = 0.0

    # ----------------------------------------------------------------- pairs
    @cached_property
    def _pairs(self) -> list["_Pair"]:
        pairs = []
        for rank, base in enumerate(self._assets):
            if self.venue == "equities":
                pairs.append(_Pair(f"SIMEQ:{base}", base, "USD", "spot", 1.0))
                continue
            pairs.append(_Pair(f"BINANCE:{base}USDT", base, "USDT", "spot", 1.0))
            if base in STABLE_BASES and base != "USDC":
                pairs.append(_Pair(f"BINANCE:{base}USDC", base, "USDC", "spot", 0.2))
            if rank < 30 and base not in STABLE_BASES:
                pairs.append(_Pair(f"BINANCE:{base}USDC", base, "USDC", "spot", 0.15))
            if rank < 15:
                pairs.append(_Pair(f"BINANCE:{base}FDUSD", base, "FDUSD", "spot", 0.1))
            if rank < 5:
                pairs.append(_Pair(f"BINANCE:{base}USDT.P", base, "USDT", "perp", 2.0))
        return pairs

    @cached_property
    def _pair_by_symbol(self) -> dict[str, "_Pair"]:
        return {p.symbol: p for p in self._pairs}

    def _bars(self, pair: "_Pair") -> pd.DataFrame:
        """The pair's bars: the base path, a small quote-specific basis, volume scaled by quote share."""
        j = self._index[pair.base]
        close = self._panel["close"][:, j]
        valid = np.isfinite(close)
        if not valid.any():
            return empty_ohlcv()
        basis = 1.0
        if pair.quote != "USDT" or pair.type != "spot":
            rng = np.random.default_rng(zlib.crc32(pair.symbol.encode()))
            basis = np.exp(rng.normal(0, 0.0004, len(close)))
        frame = pd.DataFrame({"ts": self._calendar[valid]})
        for key in OHLCV_COLUMNS[1:]:
            values = self._panel[key][:, j] * (pair.share if key == "volume" else basis)
            frame[key] = values[valid]
        frame["high"] = frame[["open", "high", "close"]].max(axis=1)
        frame["low"] = frame[["open", "low", "close"]].min(axis=1)
        return frame


@dataclass(frozen=True)
class _Pair:
    symbol: str
    base: str
    quote: str
    type: str
    share: float  # share of the base's volume traded on this pair


def _replace(asset: _Asset, **changes) -> _Asset:
    return _Asset(**{**asset.__dict__, **changes})


def _student_t(rng: np.random.Generator, T: int, N: int, df: float = 4.0) -> np.ndarray:
    """Unit-variance Student-t innovations (fat tails)."""
    return rng.standard_t(df, size=(T, N)) / np.sqrt(df / (df - 2))


def _garch_filter(z: np.ndarray, vol: np.ndarray | float, alpha: float = 0.08, beta: float = 0.9) -> np.ndarray:
    """GARCH(1,1) returns from innovations `z` (T x N) with unconditional vol `vol` (per column)."""
    vol = np.broadcast_to(np.asarray(vol, dtype=float), z.shape[1:])
    omega = vol ** 2 * (1 - alpha - beta)
    out = np.empty_like(z)
    var = vol ** 2
    for t in range(z.shape[0]):
        out[t] = np.sqrt(var) * z[t]
        var = omega + alpha * out[t] ** 2 + beta * var
    return out


def _garch(rng: np.random.Generator, T: int, N: int, vol: float, alpha: float = 0.08,
           beta: float = 0.9, df: float = 4.0) -> np.ndarray:
    """GARCH(1,1) returns with unit-variance Student-t innovations and unconditional vol `vol`."""
    return _garch_filter(_student_t(rng, T, N, df), vol, alpha, beta)
