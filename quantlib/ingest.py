"""Parallel, idempotent OHLCV ingestion with the toxic-return guard (SPEC §1.3).

Each symbol is fetched by a worker of a bounded pool; one symbol's failure never stops the others.
Freshness is judged from the close time of the last *stored* bar, never from file mtimes. Workers
write only their own symbol's file; the registry is written once, by the caller's thread.
"""
from __future__ import annotations

import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from .errors import DataError, GateError, SourceError
from .ids import check_symbol
from .lakehouse import REGISTRY_COLUMNS, Lakehouse
from .profiles import DataConfig
from .sources.base import OHLCV_COLUMNS, TIMEFRAME_SECONDS, MarketDataSource

REPORT_COLUMNS = ["symbol", "status", "rows_added", "bars", "last_bar", "reason", "flags"]


@dataclass
class SymbolResult:
    """Outcome for one symbol. status: added | fresh | toxic | failed."""

    symbol: str
    status: str
    rows_added: int = 0
    bars: int = 0
    last_bar: pd.Timestamp | None = None
    reason: str = ""
    flags: str = ""
    toxic_value: float = float("nan")


class RateLimiter:
    """Spaces calls at least `1/rate` seconds apart across threads (rate 0 = unlimited)."""

    def __init__(self, rate_per_s: float) -> None:
        self.interval = 1.0 / rate_per_s if rate_per_s > 0 else 0.0
        self._next = 0.0
        self._lock = threading.Lock()

    def wait(self) -> None:
        if not self.interval:
            return
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + self.interval
        if start > now:
            time.sleep(start - now)


def toxic_returns(close: np.ndarray, threshold: float) -> np.ndarray:
    """Indices i (>= 1) where |close_i / close_{i-1} - 1| >= threshold."""
    returns = close[1:] / close[:-1] - 1.0
    return np.flatnonzero(np.abs(returns) >= threshold) + 1


def quality_flags(bars: pd.DataFrame, n: int) -> list[str]:
    """ZERO_VOLUME if the last `n` bars traded nothing; FLAT_PRICE if the close never moved."""
    tail = bars.tail(n)
    if len(tail) < n:
        return []
    flags = []
    if (tail["volume"] <= 0).all():
        flags.append("ZERO_VOLUME")
    if tail["close"].nunique() == 1:
        flags.append("FLAT_PRICE")
    return flags


def ingest_symbol(source: MarketDataSource, lake: Lakehouse, symbol: str, cfg: DataConfig,
                  toxic: set[str], limiter: RateLimiter) -> SymbolResult:
    """Fetch, guard and merge one symbol. Never raises for data/source problems: reports them."""
    try:
        check_symbol(symbol)
        if symbol in toxic:
            return SymbolResult(symbol, "toxic", reason="registered toxic earlier; bars not fetched")
        bar = pd.Timedelta(seconds=TIMEFRAME_SECONDS[cfg.timeframe])
        now = source.now()
        stored = lake.read_ohlcv_arrays(symbol, cfg.timeframe)  # fast path: pyarrow, no pandas per symbol
        if stored is not None and len(stored["ts"]):
            last = pd.Timestamp(int(stored["ts"][-1]), tz="UTC")
            if last + bar >= now - pd.Timedelta(hours=cfg.freshness_hours):
                tail = pd.DataFrame({k: stored[k][-cfg.flat_bars:] for k in ("close", "volume")})
                return SymbolResult(symbol, "fresh", bars=len(stored["ts"]), last_bar=last,
                                    flags=",".join(quality_flags(tail, cfg.flat_bars)))
        existing = lake.read_ohlcv(symbol, cfg.timeframe)
        if not existing.empty:
            since = existing["ts"].iloc[-1]
        else:
            since = (now - pd.Timedelta(days=cfg.lookback_days + 100)).floor("D")
        limiter.wait()
        fetched = source.ohlcv(symbol, cfg.timeframe, since=since)
        fetched = _clean(fetched, now, bar)
        combined = pd.concat([existing.tail(1), fetched], ignore_index=True) if len(existing) else fetched
        spikes = toxic_returns(combined["close"].to_numpy(float), cfg.toxic_return)
        if len(spikes):
            i = spikes[0]
            value = float(combined["close"].iloc[i] / combined["close"].iloc[i - 1] - 1.0)
            return SymbolResult(symbol, "toxic", bars=len(existing), toxic_value=value,
                                reason=f"daily return {value:+.1%} on {combined['ts'].iloc[i]:%Y-%m-%d} "
                                       f">= {cfg.toxic_return:.0%}; new bars not merged")
        added = lake.merge_ohlcv(symbol, cfg.timeframe, fetched, existing=existing)
        stored = lake.read_ohlcv(symbol, cfg.timeframe) if added else existing
        if stored.empty:
            return SymbolResult(symbol, "failed", reason="the source returned no bars")
        return SymbolResult(symbol, "added", rows_added=added, bars=len(stored), last_bar=stored["ts"].iloc[-1],
                            flags=",".join(quality_flags(stored, cfg.flat_bars)))
    except (SourceError, DataError) as exc:
        return SymbolResult(symbol, "failed", reason=str(exc))
    except Exception as exc:  # one symbol's bug must not stop the others; the report keeps it
        return SymbolResult(symbol, "failed", reason=f"{type(exc).__name__}: {exc}")


def _clean(bars: pd.DataFrame, now: pd.Timestamp, bar: pd.Timedelta) -> pd.DataFrame:
    """Keep completed bars with finite, positive prices, sorted and unique by ts."""
    if bars.empty:
        return bars[OHLCV_COLUMNS]
    bars = bars[OHLCV_COLUMNS].copy()
    bars["ts"] = pd.to_datetime(bars["ts"], utc=True).astype("datetime64[ns, UTC]")
    prices = bars[["open", "high", "low", "close"]].to_numpy(float)
    ok = np.isfinite(prices).all(axis=1) & (prices > 0).all(axis=1) & (bars["ts"] + bar <= now).to_numpy()
    return bars[ok].drop_duplicates("ts", keep="last").sort_values("ts", ignore_index=True)


def ingest(source: MarketDataSource, lake: Lakehouse, symbols: list[str], cfg: DataConfig,
           anchors: list[str] | None = None, progress: bool = True) -> pd.DataFrame:
    """Ingest `symbols` concurrently; update the registry; return the per-symbol report.

    Raises GateError if every symbol failed or a required anchor has no usable bars.
    """
    from tqdm import tqdm

    symbols = list(dict.fromkeys(symbols))
    toxic = set(lake.read_registry().query("status == 'TOXIC'")["symbol"])
    limiter = RateLimiter(source.rate_limit_per_s)
    results: list[SymbolResult] = []
    with ThreadPoolExecutor(max_workers=cfg.workers) as pool:
        futures = [pool.submit(ingest_symbol, source, lake, s, cfg, toxic, limiter) for s in symbols]
        bar = tqdm(as_completed(futures), total=len(futures), desc="ingest", unit="sym",
                   file=sys.stderr, disable=not progress, mininterval=0.5)
        for future in bar:
            results.append(future.result())
    _record_registry(lake, results, source.now())
    report = pd.DataFrame([{k: v for k, v in asdict(r).items() if k in REPORT_COLUMNS} for r in results],
                          columns=REPORT_COLUMNS).sort_values("symbol", ignore_index=True)
    _check_outcome(report, anchors or [])
    return report


def _record_registry(lake: Lakehouse, results: list[SymbolResult], now: pd.Timestamp) -> None:
    rows = []
    for r in results:
        if r.status == "toxic" and np.isfinite(r.toxic_value):
            rows.append((r.symbol, "TOXIC", r.reason, now, r.toxic_value))
        for flag in filter(None, r.flags.split(",")):
            rows.append((r.symbol, flag, f"{flag.lower().replace('_', ' ')} over the last bars", now, np.nan))
    entries = pd.DataFrame(rows, columns=REGISTRY_COLUMNS)
    checked = {r.symbol for r in results if r.status in ("added", "fresh")}
    lake.update_registry(entries, cleared=checked)


def _check_outcome(report: pd.DataFrame, anchors: list[str]) -> None:
    if len(report) and (report["status"] == "failed").all():
        first = report["reason"].iloc[0]
        raise GateError(f"ingest: all {len(report)} symbols failed (first: {first}); check the source")
    usable = set(report.loc[report["status"].isin(["added", "fresh"]), "symbol"])
    missing = [a for a in anchors if a not in usable]
    if missing:
        reasons = report.set_index("symbol")["reason"].to_dict()
        detail = "; ".join(f"{a}: {reasons.get(a) or 'not in the candidate lists'}" for a in missing)
        raise GateError(f"ingest: required anchor(s) missing: {detail}; fix the source or data.anchors")
