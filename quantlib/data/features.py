"""Technical features from stored OHLCV: the latest snapshot and the point-in-time backfill (SPEC §1.5).

Both call the vectorized `ratings.ratings_panel` on (time x symbol) panels. The backfill processes
symbols in chunks and appends parquet row groups to a temp file that is renamed at the end, so memory
is bounded by one chunk and a crash never leaves a half-written features matrix.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from quantlib.core import live, storage
from quantlib.data.lakehouse import Lakehouse
from quantlib.data.ratings import rating_label, ratings_panel

SNAPSHOT_COLUMNS = ["symbol", "ts", "recommend_all", "recommend_ma", "recommend_other", "rating",
                    "adx", "rsi", "perf_1w", "perf_1m", "perf_3m", "volatility_d", "close"]
MATRIX_COLUMNS = ["ts", "symbol", "recommend_all", "recommend_ma", "recommend_other", "adx", "rsi"]
FIELDS = ("open", "high", "low", "close", "volume")


def load_panel(lake: Lakehouse, symbols: list[str], timeframe: str) -> dict[str, pd.DataFrame]:
    """OHLCV fields as aligned DataFrames (union of timestamps x symbols; NaN where no bar).

    Files are read with pyarrow in a small thread pool and scattered into (T, N) arrays with
    `searchsorted`, so the cost is dominated by parquet decoding, not pandas alignment.
    """
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=4) as pool:
        loaded = [(s, a) for s, a in zip(symbols, pool.map(lambda s: lake.read_ohlcv_arrays(s, timeframe), symbols))
                  if a is not None and len(a["ts"])]
    if not loaded:
        return {f: pd.DataFrame(dtype=float) for f in FIELDS}
    stamps = np.unique(np.concatenate([a["ts"] for _, a in loaded]))
    panel = {f: np.full((len(stamps), len(loaded)), np.nan) for f in FIELDS}
    for j, (_, arrays) in enumerate(loaded):
        rows = np.searchsorted(stamps, arrays["ts"])
        for f in FIELDS:
            panel[f][rows, j] = arrays[f]
    index = pd.DatetimeIndex(pd.to_datetime(stamps, utc=True), name="ts")
    columns = pd.Index([s for s, _ in loaded], dtype=object)
    return {f: pd.DataFrame(panel[f], index=index, columns=columns) for f in FIELDS}


def compute_panel_ratings(panel: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:

    return ratings_panel(panel["open"], panel["high"], panel["low"], panel["close"], panel["volume"])


PRICE_FIELDS = ("last", "value_traded", "change_pct", "perf_1w", "perf_1m", "perf_3m", "volatility_d")
"""Screener fields computed from OHLCV alone, at every bar (`price_fields`)."""


def price_fields(panel: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """The OHLCV-derived screener fields at every bar (dates x symbols, NaN where no bar), each using
    bars <= that bar only: last close, value traded (close x volume: the bar's quote volume), change
    over the symbol's previous bar, performance over 1w/1m/3m (percent, calendar offsets on the
    symbol's own bars, as of the bar at or before the offset) and the bar's range (`volatility_d`)."""
    close, high, low, volume = panel["close"], panel["high"], panel["low"], panel["volume"]
    has_bar = close.notna().to_numpy()
    known = close.ffill().to_numpy()
    index = close.index

    def as_of(offset: pd.Timedelta) -> np.ndarray:
        rows = np.searchsorted(index.asi8, (index - offset).asi8, side="right") - 1
        past = np.where((rows >= 0)[:, None], known[np.maximum(rows, 0)], np.nan)
        return past

    def percent_change(past: np.ndarray) -> pd.DataFrame:
        with np.errstate(divide="ignore", invalid="ignore"):
            value = np.where(has_bar & (past > 0), (close.to_numpy() / past - 1.0) * 100.0, np.nan)
        return pd.DataFrame(value, index=index, columns=close.columns)

    previous = np.vstack([np.full((1, close.shape[1]), np.nan), known[:-1]]) if len(index) else known
    with np.errstate(divide="ignore", invalid="ignore"):
        spread = np.where(low.to_numpy() > 0, (high - low).to_numpy() / low.to_numpy() * 100.0, np.nan)
    return {"last": close, "value_traded": close * volume, "change_pct": percent_change(previous),
            "perf_1w": percent_change(as_of(pd.Timedelta(days=7))),
            "perf_1m": percent_change(as_of(pd.Timedelta(days=30))),
            "perf_3m": percent_change(as_of(pd.Timedelta(days=90))),
            "volatility_d": pd.DataFrame(spread, index=index, columns=close.columns)}


def snapshot(panel: dict[str, pd.DataFrame], ratings: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Latest values per symbol (its last bar): the three ratings, ADX, RSI and the `price_fields`."""

    close = panel["close"]
    fields = price_fields(panel)
    rows = []
    for j, symbol in enumerate(close.columns):
        bars = np.flatnonzero(close.iloc[:, j].notna().to_numpy())
        if not len(bars):
            continue
        i = bars[-1]
        row = {"symbol": symbol, "ts": close.index[i], "close": float(close.iat[i, j])}
        for key in ("recommend_all", "recommend_ma", "recommend_other", "adx", "rsi"):
            row[key] = float(ratings[key].iat[i, j])
        for key in ("perf_1w", "perf_1m", "perf_3m", "volatility_d"):
            row[key] = float(fields[key].iat[i, j])
        row["rating"] = rating_label(np.array([row["recommend_all"]]))[0]
        rows.append(row)
    return pd.DataFrame(rows, columns=SNAPSHOT_COLUMNS)


def to_long(ratings: dict[str, pd.DataFrame], close: pd.DataFrame) -> pd.DataFrame:
    """Long format `ts, symbol, ...`: one row per (bar, symbol) where the symbol has a bar."""
    has_bar = close.notna().to_numpy()
    ts_idx, sym_idx = np.nonzero(has_bar)
    out = pd.DataFrame({"ts": close.index[ts_idx], "symbol": close.columns[sym_idx].astype(str)})
    for key in MATRIX_COLUMNS[2:]:
        out[key] = ratings[key].to_numpy()[ts_idx, sym_idx]
    return out.sort_values(["symbol", "ts"], kind="mergesort", ignore_index=True)


def backfill(lake: Lakehouse, symbols: list[str], timeframe: str, chunk: int) -> dict:
    """Write `features_matrix.parquet` for `symbols`, `chunk` symbols at a time (bounded memory)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([("ts", pa.timestamp("ns", tz="UTC")), ("symbol", pa.string())]
                       + [(c, pa.float64()) for c in MATRIX_COLUMNS[2:]])
    rows = 0
    written: list[str] = []
    with storage.atomic_path(lake.features_path) as tmp:
        with pq.ParquetWriter(tmp, schema) as writer:
            starts = range(0, len(symbols), chunk)
            for start in live.track(starts, "backfill chunks", len(starts)):
                panel = load_panel(lake, symbols[start:start + chunk], timeframe)
                if panel["close"].empty:
                    continue
                long = to_long(compute_panel_ratings(panel), panel["close"])
                writer.write_table(pa.Table.from_pandas(long, schema=schema, preserve_index=False))
                rows += len(long)
                written.extend(panel["close"].columns)
    return {"symbols": len(written), "rows": rows, "chunks": -(-len(symbols) // chunk) if symbols else 0,
            "chunk_size": chunk, "path": str(lake.features_path)}
