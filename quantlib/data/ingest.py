"""Parallel, idempotent OHLCV ingestion with bar validation and the toxic-return guard (SPEC §1.3).

Each symbol is fetched by a worker of a bounded pool; one symbol's failure never stops the others.
Per symbol, in order:
1. Freshness, judged from the data (never file mtimes) and the bar period: the symbol is skipped
   when its last stored bar is the newest bar the source can have closed by `source.now()` (a daily
   bar stored for yesterday is fresh all day today).
2. Fetch from the last stored bar (or `lookback_days + 100` days deep), drop the still-open bar.
3. Validation: duplicate or missing timestamps, non-finite values, non-positive prices, negative
   volume or high < low reject the whole fetch (reason in the report, nothing merged).
4. Toxic guard (`bounds.is_toxic`, symmetric in log space) on the returns from the last stored bar
   through the fetched bars: a toxic bar registers the symbol TOXIC and nothing is merged.
5. Merge (union, newest record wins), then the zero-volume / flat-price flags on the stored series.
Workers write only their own symbol's file; the registry is written once, by the caller's thread.
Statuses: added (new rows), unchanged (fetched, nothing new), fresh (skipped, nothing to fetch),
toxic, failed (with the reason). A required anchor that is missing, toxic, failed or more than
`MAX_ANCHOR_BARS_BEHIND` closed bars behind the source fails the stage.
"""
from __future__ import annotations

import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from quantlib.data.bounds import downside_threshold, is_toxic
from quantlib.core import live
from quantlib.core.errors import DataError, GateError, SourceError
from quantlib.core.ids import check_symbol
from quantlib.data.lakehouse import REGISTRY_COLUMNS, Lakehouse
from quantlib.core.profiles import DataConfig
from quantlib.core.progress import progress as progress_bar
from quantlib.data.sources.base import OHLCV_COLUMNS, TIMEFRAME_SECONDS, MarketDataSource

REPORT_COLUMNS = ["symbol", "status", "rows_added", "bars", "last_bar", "bars_behind", "reason", "flags"]
STATUSES = ("added", "unchanged", "fresh", "toxic", "failed")
USABLE_STATUSES = ("added", "unchanged", "fresh")
MAX_ANCHOR_BARS_BEHIND = 2
"""A required anchor fails the stage when more closed bars than this exist after its newest stored bar."""
FLAG_TEXT = {"ZERO_VOLUME": "zero volume", "FLAT_PRICE": "unchanged close"}


@dataclass
class SymbolResult:
    """Outcome for one symbol; `status` is one of STATUSES."""

    symbol: str
    status: str
    rows_added: int = 0
    bars: int = 0
    last_bar: pd.Timestamp | None = None
    bars_behind: int | None = None
    reason: str = ""
    flags: str = ""
    toxic_value: float = float("nan")
    toxic_bar: pd.Timestamp | None = None
    flag_runs: dict[str, tuple[pd.Timestamp, int]] = field(default_factory=dict)  # flag -> (bar_ts, run length)


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


# ------------------------------------------------------------------------------ bar-period clock
def newest_closed_bar(now: pd.Timestamp, bar: pd.Timedelta, calendar: str = "24x7") -> pd.Timestamp:
    """Open time of the newest bar the source can have closed at `now` (bars aligned to UTC midnight
    multiples of `bar`); on a `weekday` calendar weekend bars are skipped (holidays are not known)."""
    newest = pd.Timestamp(now).tz_convert("UTC").floor(bar) - bar
    while calendar == "weekday" and newest.day_of_week >= 5:
        newest -= pd.Timedelta(days=1)
    return newest


def bars_behind(last_open: pd.Timestamp, now: pd.Timestamp, bar: pd.Timedelta, calendar: str = "24x7") -> int:
    """How many bars of the source's calendar closed after the bar opened at `last_open` (0 = fresh)."""
    newest = newest_closed_bar(now, bar, calendar)
    if last_open >= newest:
        return 0
    opens = pd.date_range(last_open + bar, newest, freq=bar)
    return int((opens.day_of_week < 5).sum()) if calendar == "weekday" else len(opens)


# ------------------------------------------------------------------------------ guards
def toxic_returns(close: np.ndarray, toxic_return: float) -> np.ndarray:
    """Indices i (>= 1) where the return close_i / close_{i-1} - 1 is toxic (`bounds.is_toxic`)."""
    close = np.asarray(close, dtype=float)
    return np.flatnonzero(is_toxic(close[1:] / close[:-1] - 1.0, toxic_return)) + 1


def trailing_run(condition: np.ndarray) -> int:
    """Length of the run of True values that ends at the last element."""
    false = np.flatnonzero(~np.asarray(condition, dtype=bool))
    return len(condition) - (int(false[-1]) + 1 if len(false) else 0)


def flag_runs(close: np.ndarray, volume: np.ndarray, n: int) -> dict[str, tuple[int, int]]:
    """{flag: (index of the bar at which it first held, trailing run length)} for ZERO_VOLUME (no volume
    for the last >= n bars) and FLAT_PRICE (the close unchanged for the last >= n bars)."""
    close, volume = np.asarray(close, dtype=float), np.asarray(volume, dtype=float)
    if len(close) < n:
        return {}
    runs = {"ZERO_VOLUME": trailing_run(volume <= 0), "FLAT_PRICE": trailing_run(close == close[-1])}
    return {flag: (len(close) - run + n - 1, run) for flag, run in runs.items() if run >= n}


def quality_flags(bars: pd.DataFrame, n: int) -> list[str]:
    """ZERO_VOLUME if the last `n` bars traded nothing; FLAT_PRICE if the close never moved."""
    return list(flag_runs(bars["close"].to_numpy(float), bars["volume"].to_numpy(float), n))


def validate_bars(bars: pd.DataFrame, now: pd.Timestamp, bar: pd.Timedelta, symbol: str) -> pd.DataFrame:
    """Closed bars sorted by ts; raises DataError naming every problem if the fetch is unusable.

    Bars not yet closed at `now` are dropped silently (the open bar is normal). Rejected: missing or
    duplicate timestamps, non-finite values, prices <= 0, negative volume, high < low.
    """
    missing = [c for c in OHLCV_COLUMNS if c not in bars.columns]
    if missing:
        raise DataError(f"{symbol}: the source's bars lack columns {missing}; nothing merged (fix the source adapter)")
    bars = bars[OHLCV_COLUMNS].copy()
    bars["ts"] = pd.to_datetime(bars["ts"], utc=True).astype("datetime64[ns, UTC]")
    problems = []
    if bars["ts"].isna().any():
        problems.append(f"{int(bars['ts'].isna().sum())} bars without a timestamp")
    bars = bars[bars["ts"].isna() | (bars["ts"] + bar <= now)]
    dup = bars["ts"].duplicated(keep="first") & bars["ts"].notna()  # the repeats, not their first rows
    values = bars[OHLCV_COLUMNS[1:]].to_numpy(float)
    prices = values[:, :4]
    for label, bad in (("a repeated timestamp", dup.to_numpy()),
                       ("non-finite values", ~np.isfinite(values).all(axis=1)),
                       ("prices <= 0", (prices <= 0).any(axis=1)),
                       ("negative volume", values[:, 4] < 0),
                       ("high < low", prices[:, 1] < prices[:, 2])):
        if bad.any():
            first = bars["ts"][bad].min()
            problems.append(f"{int(bad.sum())} rows with {label} (first {first:%Y-%m-%d %H:%M})"
                            if pd.notna(first) else f"{int(bad.sum())} rows with {label}")
    if problems:
        raise DataError(f"{symbol}: fetch rejected, nothing merged: {'; '.join(problems)}; "
                        f"the source served invalid bars: check it for this symbol and re-run ingest")
    return bars.sort_values("ts", ignore_index=True)


# ------------------------------------------------------------------------------ one symbol
def ingest_symbol(source: MarketDataSource, lake: Lakehouse, symbol: str, cfg: DataConfig,
                  toxic: dict[str, pd.Timestamp], limiter: RateLimiter) -> SymbolResult:
    """Fetch, validate, guard and merge one symbol. Never raises for data/source problems: reports them."""
    try:
        check_symbol(symbol)
        if symbol in toxic:
            return SymbolResult(symbol, "toxic", reason=f"registered TOXIC earlier (bar {_day(toxic[symbol])}); "
                                                        f"bars not fetched")
        bar = pd.Timedelta(seconds=TIMEFRAME_SECONDS[cfg.timeframe])
        now = source.now()
        calendar = getattr(source, "calendar", "24x7")
        stored = lake.read_ohlcv_arrays(symbol, cfg.timeframe)  # fast path: pyarrow, no pandas per symbol
        if stored is not None and len(stored["ts"]):
            last = pd.Timestamp(int(stored["ts"][-1]), tz="UTC")
            if last >= newest_closed_bar(now, bar, calendar):
                return _finished(SymbolResult(symbol, "fresh", bars=len(stored["ts"]), last_bar=last, bars_behind=0),
                                 stored["ts"], stored["close"], stored["volume"], cfg.flat_bars)
        existing = lake.read_ohlcv(symbol, cfg.timeframe)
        if not existing.empty:
            since = existing["ts"].iloc[-1]
        else:
            since = (now - pd.Timedelta(days=cfg.lookback_days + 100)).floor("D")
        limiter.wait()
        fetched = validate_bars(source.ohlcv(symbol, cfg.timeframe, since=since), now, bar, symbol)
        if len(fetched):
            before = existing[existing["ts"] < fetched["ts"].iloc[0]].tail(1)
            combined = pd.concat([before, fetched], ignore_index=True) if len(before) else fetched
            hits = toxic_returns(combined["close"].to_numpy(float), cfg.toxic_return)
            if len(hits):
                return _toxic(symbol, combined, int(hits[0]), cfg.toxic_return, existing)
        added = lake.merge_ohlcv(symbol, cfg.timeframe, fetched, existing=existing)
        stored = lake.read_ohlcv(symbol, cfg.timeframe) if len(fetched) else existing
        if stored.empty:
            return SymbolResult(symbol, "failed", reason="the source returned no closed bars")
        last = stored["ts"].iloc[-1]
        result = SymbolResult(symbol, "added" if added > 0 else "unchanged", rows_added=added, bars=len(stored),
                              last_bar=last, bars_behind=bars_behind(last, now, bar, calendar))
        return _finished(result, pd.DatetimeIndex(stored["ts"]).as_unit("ns").asi8, stored["close"].to_numpy(float),
                         stored["volume"].to_numpy(float), cfg.flat_bars)
    except (SourceError, DataError) as exc:
        return SymbolResult(symbol, "failed", reason=str(exc))
    except Exception as exc:  # one symbol's bug must not stop the others; the report keeps it
        return SymbolResult(symbol, "failed", reason=f"{type(exc).__name__}: {exc}")


def _toxic(symbol: str, combined: pd.DataFrame, i: int, toxic_return: float, existing: pd.DataFrame) -> SymbolResult:
    value = float(combined["close"].iloc[i] / combined["close"].iloc[i - 1] - 1.0)
    ts = combined["ts"].iloc[i]
    reason = (f"daily return {value:+.1%} on {_day(ts)} is toxic (beyond +{toxic_return:.0%} / "
              f"{downside_threshold(toxic_return):+.1%}, data.toxic_return); new bars not merged")
    last = existing["ts"].iloc[-1] if len(existing) else None
    return SymbolResult(symbol, "toxic", bars=len(existing), last_bar=last, reason=reason,
                        toxic_value=value, toxic_bar=ts)


def _finished(result: SymbolResult, ts_ns: np.ndarray, close: np.ndarray, volume: np.ndarray, n: int) -> SymbolResult:
    """Attach the quality flags of the stored series (`ts_ns`: int64 ns UTC); each flag's bar_ts is the
    bar at which it first held."""
    for flag, (index, run) in flag_runs(close, volume, n).items():
        result.flag_runs[flag] = (pd.Timestamp(int(ts_ns[index]), tz="UTC"), run)
    result.flags = ",".join(result.flag_runs)
    return result


def _day(ts: pd.Timestamp | None) -> str:
    return "unknown date" if ts is None or pd.isna(ts) else f"{ts:%Y-%m-%d}"


# ------------------------------------------------------------------------------ the stage
def ingest(source: MarketDataSource, lake: Lakehouse, symbols: list[str], cfg: DataConfig,
           anchors: list[str] | None = None, progress: bool = True) -> pd.DataFrame:
    """Ingest `symbols` concurrently; update the registry; return the per-symbol report.

    Removes the temp files of interrupted writes first. Raises GateError if every symbol failed or
    a required anchor is missing, toxic, failed or stale.
    """
    removed = lake.remove_interrupted_writes(cfg.timeframe, tables=[lake.registry_path])
    if removed:
        print(f"ingest: removed {len(removed)} temp file(s) left by interrupted writes: "
              f"{', '.join(p.name for p in removed[:5])}{' ...' if len(removed) > 5 else ''}", file=sys.stderr)
    symbols = list(dict.fromkeys(symbols))
    registry = lake.read_registry()
    toxic = dict(registry.loc[registry["status"] == "TOXIC", ["symbol", "bar_ts"]].itertuples(index=False))
    limiter = RateLimiter(source.rate_limit_per_s)
    results: list[SymbolResult] = []
    with ThreadPoolExecutor(max_workers=cfg.workers) as pool:
        futures = [pool.submit(ingest_symbol, source, lake, s, cfg, toxic, limiter) for s in symbols]
        bar = progress_bar(as_completed(futures), "ingest", "sym", total=len(futures), enabled=progress)
        for future in live.track(bar, "ingest symbols", len(futures)):
            results.append(future.result())
    now = source.now()
    _record_registry(lake, results, now)
    report = pd.DataFrame([{k: getattr(r, k) for k in REPORT_COLUMNS} for r in results], columns=REPORT_COLUMNS)
    report = report.astype({"rows_added": int, "bars": int, "bars_behind": "Int64"})
    report["last_bar"] = pd.to_datetime(report["last_bar"], utc=True)
    report = report.sort_values("symbol", ignore_index=True)
    newest = newest_closed_bar(now, pd.Timedelta(seconds=TIMEFRAME_SECONDS[cfg.timeframe]),
                               getattr(source, "calendar", "24x7"))
    _check_outcome(report, anchors or [], newest, cfg.timeframe)
    return report


def _record_registry(lake: Lakehouse, results: list[SymbolResult], now: pd.Timestamp) -> None:
    rows = []
    for r in results:
        if r.status == "toxic" and r.toxic_bar is not None:
            rows.append((r.symbol, "TOXIC", r.reason, now, r.toxic_bar, r.toxic_value))
        for flag, (bar_ts, run) in r.flag_runs.items():
            rows.append((r.symbol, flag, f"{FLAG_TEXT[flag]} for the last {run} bars (held from {_day(bar_ts)})",
                         now, bar_ts, float(run)))
    entries = pd.DataFrame(rows, columns=REGISTRY_COLUMNS)
    checked = {r.symbol for r in results if r.status in USABLE_STATUSES}
    lake.update_registry(entries, cleared=checked)


def _check_outcome(report: pd.DataFrame, anchors: list[str], newest: pd.Timestamp, timeframe: str) -> None:
    if len(report) and (report["status"] == "failed").all():
        first = report["reason"].iloc[0]
        raise GateError(f"ingest: all {len(report)} symbols failed (first: {first}); check the source")
    rows = report.set_index("symbol")
    usable = set(rows.index[rows["status"].isin(USABLE_STATUSES)])
    missing = [a for a in anchors if a not in usable]
    if missing:
        detail = "; ".join(f"{a}: {rows.at[a, 'reason'] if a in rows.index else 'not in the universe'}"
                           for a in missing)
        raise GateError(f"ingest: required anchor(s) missing: {detail}; fix the source or data.anchors")
    stale = [a for a in anchors if rows.at[a, "bars_behind"] > MAX_ANCHOR_BARS_BEHIND]
    if stale:
        detail = "; ".join(f"{a} last bar {_day(rows.at[a, 'last_bar'])} is {rows.at[a, 'bars_behind']} closed "
                           f"{timeframe} bars behind" for a in stale)
        raise GateError(f"ingest: stale required anchor(s): {detail} (newest closed bar {_day(newest)}, "
                        f"at most {MAX_ANCHOR_BARS_BEHIND} allowed); the source stopped updating it: "
                        f"check its feed, or remove it from data.anchors")
