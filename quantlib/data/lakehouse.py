"""The shared market-data store: per-symbol OHLCV parquet files plus registry/metadata tables.

Layout under the lakehouse root:
  ohlcv/<timeframe>/<EXCHANGE>_<TICKER>.parquet   ts (UTC bar open), open, high, low, close, volume
  registry.parquet        data-quality flags, point in time (contract below)
  symbols.parquet         market metadata with listing history (contract below)
  technicals.parquet      latest technical snapshot per symbol
  features_matrix.parquet point-in-time ratings, long format (ts, symbol, ...)
Every write is atomic; readers validate schemas and name the file and the fix on failure.

`registry.parquet`, one row per (symbol, status):
  symbol       EXCHANGE:TICKER
  status       TOXIC | ZERO_VOLUME | FLAT_PRICE (all three exclude the symbol from the data phase)
  reason       one line for humans
  detected_at  UTC, the source's clock when ingestion first recorded this (symbol, status, bar_ts)
  bar_ts       UTC open time of the flagged bar: TOXIC -> the first toxic bar; ZERO_VOLUME /
               FLAT_PRICE -> the bar at which the condition first held, i.e. the last bar of the
               first `data.flat_bars`-long window of the trailing run (it stays put while the run
               continues). A decision made strictly before `bar_ts` still sees the symbol.
  value        TOXIC: the toxic simple return; flags: the length of the trailing run in bars
  TOXIC is sticky (never re-fetched, cleared only by editing the file); flags are re-checked on
  every ingest. A registry written before `bar_ts` existed is read with `bar_ts = detected_at`.

`symbols.parquet`, one row per market ever seen; rows are never deleted:
  MARKET_COLUMNS (symbol, exchange, base, quote, type, active, tick_size, lot_size, min_notional,
  price_precision, amount_precision, maker_fee, taker_fee) as last seen, then
  updated_at      UTC, when the row's market fields were last taken from the source (last seen)
  first_seen      UTC, when the lakehouse first saw the market
  inactive_since  UTC, when it was first seen inactive or missing from its exchange's market list
                  (kept on later runs); null while active; cleared when it comes back active
  The three times are on the source's clock (`source.now()`: the wall clock for ccxt, the profile's
  `as_of` for sim), so they compare with bar timestamps. A market missing from a snapshot is marked
  inactive only if its exchange is in that snapshot (another venue's markets are left alone).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from quantlib.core import storage
from quantlib.core.errors import DataError
from quantlib.core.ids import check_symbol, symbol_filename
from quantlib.data.sources.base import MARKET_COLUMNS, OHLCV_COLUMNS, empty_ohlcv

REGISTRY_COLUMNS = ["symbol", "status", "reason", "detected_at", "bar_ts", "value"]
REGISTRY_TIMES = ("detected_at", "bar_ts")
EXCLUDING_STATUSES = ("TOXIC", "ZERO_VOLUME", "FLAT_PRICE")
SYMBOLS_COLUMNS = MARKET_COLUMNS + ["updated_at", "first_seen", "inactive_since"]
SYMBOLS_TIMES = ("updated_at", "first_seen", "inactive_since")


class Lakehouse:
    """Typed access to one lakehouse directory."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    # paths
    def ohlcv_dir(self, timeframe: str) -> Path:
        return self.root / "ohlcv" / timeframe

    def ohlcv_path(self, symbol: str, timeframe: str) -> Path:
        return self.ohlcv_dir(timeframe) / f"{symbol_filename(check_symbol(symbol))}.parquet"

    @property
    def registry_path(self) -> Path:
        return self.root / "registry.parquet"

    @property
    def symbols_path(self) -> Path:
        return self.root / "symbols.parquet"

    @property
    def technicals_path(self) -> Path:
        return self.root / "technicals.parquet"

    @property
    def features_path(self) -> Path:
        return self.root / "features_matrix.parquet"

    # OHLCV
    def stored_symbols(self, timeframe: str) -> list[str]:
        """Symbols with an OHLCV file for `timeframe` (file stem `EX_TICKER` -> `EX:TICKER`)."""
        return sorted(p.stem.replace("_", ":", 1) for p in self.ohlcv_dir(timeframe).glob("*.parquet"))

    def read_ohlcv(self, symbol: str, timeframe: str) -> pd.DataFrame:
        """Stored bars (empty frame if none); a corrupt or malformed file raises DataError."""
        path = self.ohlcv_path(symbol, timeframe)
        if not path.exists():
            return empty_ohlcv()
        frame = storage.read_parquet(path)
        missing = [c for c in OHLCV_COLUMNS if c not in frame.columns]
        if missing or not isinstance(frame["ts"].dtype, pd.DatetimeTZDtype):
            raise DataError(
                f"malformed OHLCV file {path}: expected columns {OHLCV_COLUMNS} with UTC 'ts' "
                f"(missing {missing or 'tz'}); delete it and re-run ingestion"
            )
        return frame[OHLCV_COLUMNS]

    def read_ohlcv_arrays(self, symbol: str, timeframe: str) -> dict[str, np.ndarray] | None:
        """Stored bars as numpy arrays (`ts` as int64 ns UTC) straight from pyarrow; None if no file.

        The fast path for panels (no pandas per symbol); same validation as `read_ohlcv`.
        """
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = self.ohlcv_path(symbol, timeframe)
        if not path.exists():
            return None
        try:
            table = pq.read_table(path, columns=OHLCV_COLUMNS)
        except Exception as exc:
            raise DataError(f"unreadable OHLCV file {path} ({type(exc).__name__}: {exc}); "
                            f"delete it and re-run ingestion") from None
        ts_type = table.schema.field("ts").type
        if getattr(ts_type, "tz", None) is None:
            raise DataError(f"malformed OHLCV file {path}: 'ts' must be a UTC timestamp; delete it and re-run ingestion")
        arrays = {"ts": np.asarray(table.column("ts").cast(pa.timestamp("ns", tz="UTC")).cast(pa.int64()))}
        for name in OHLCV_COLUMNS[1:]:
            arrays[name] = table.column(name).to_numpy().astype(float, copy=False)
        return arrays

    def merge_ohlcv(self, symbol: str, timeframe: str, new: pd.DataFrame,
                    existing: pd.DataFrame | None = None) -> int:
        """Union stored and new bars (newest record wins per ts), write atomically; return rows added."""
        old = self.read_ohlcv(symbol, timeframe) if existing is None else existing
        if new.empty:
            return 0
        frames = [f for f in (old, new[OHLCV_COLUMNS]) if not f.empty]
        merged = pd.concat(frames, ignore_index=True)
        merged["ts"] = pd.to_datetime(merged["ts"], utc=True).astype("datetime64[ns, UTC]")
        merged = merged.drop_duplicates("ts", keep="last").sort_values("ts", ignore_index=True)
        if not merged.equals(old.reset_index(drop=True)):  # an identical re-fetch leaves the file as is
            storage.write_parquet(self.ohlcv_path(symbol, timeframe), merged)
        return len(merged) - len(old)

    def unreadable_ohlcv(self, symbols: list[str], timeframe: str) -> dict[str, str]:
        """{symbol: one-line reason} for the stored files among `symbols` that cannot be read in full.

        Every file is decoded (not just its footer), so a stage that reads the survivors cannot fail
        on them; symbols without a file are not listed.
        """
        from concurrent.futures import ThreadPoolExecutor

        def problem(symbol: str) -> str | None:
            try:
                self.read_ohlcv_arrays(symbol, timeframe)
            except DataError as exc:
                return str(exc)
            return None

        with ThreadPoolExecutor(max_workers=4) as pool:
            found = dict(zip(symbols, pool.map(problem, symbols)))
        return {s: reason for s, reason in found.items() if reason}

    def remove_interrupted_writes(self, timeframe: str | None = None, tables: Sequence[Path] = ()) -> list[Path]:
        """Delete temp files left by interrupted atomic writes: every OHLCV temp of `timeframe` and
        those of the given table files; return what was removed (see `storage.TEMP_PATTERN`)."""
        removed = storage.remove_interrupted_writes(self.ohlcv_dir(timeframe)) if timeframe else []
        for path in tables:
            removed += storage.remove_interrupted_writes(Path(path).parent, {Path(path).name})
        return removed

    # registry
    def read_registry(self) -> pd.DataFrame:
        """The registry with REGISTRY_COLUMNS (UTC timestamps); an older file without `bar_ts` gets
        `bar_ts = detected_at` (the flag is then effective from when it was detected)."""
        return _read_table(self.registry_path, REGISTRY_COLUMNS, REGISTRY_TIMES, ("value",),
                           required=[c for c in REGISTRY_COLUMNS if c not in ("bar_ts", "value")],
                           what="registry", fix="re-run ingestion", fill=_fill_older_registry)

    def excluded_symbols(self) -> set[str]:
        """Symbols the data phase skips (toxic or flagged), whatever their `bar_ts`."""
        registry = self.read_registry()
        return set(registry.loc[registry["status"].isin(EXCLUDING_STATUSES), "symbol"])

    def update_registry(self, entries: pd.DataFrame, cleared: set[str] | None = None) -> pd.DataFrame:
        """Upsert (symbol, status) entries; drop re-checkable flags for `cleared` symbols. TOXIC is sticky.

        An entry that repeats a stored (symbol, status, bar_ts) keeps the stored `detected_at`, so a
        flag that persists across runs keeps the time it was first detected.
        """
        registry = self.read_registry()
        entries = _typed(entries[REGISTRY_COLUMNS].copy(), REGISTRY_TIMES, ("value",))
        if not entries.empty and not registry.empty:
            key = ["symbol", "status", "bar_ts"]
            first = registry[key + ["detected_at"]].rename(columns={"detected_at": "_first"})
            entries = entries.merge(first, on=key, how="left")
            entries["detected_at"] = entries["_first"].where(entries["_first"].notna(), entries["detected_at"])
            entries = entries[REGISTRY_COLUMNS]
        if cleared:
            stale = registry["symbol"].isin(cleared) & (registry["status"] != "TOXIC")
            registry = registry[~stale]
        if not entries.empty:
            registry = pd.concat([registry, entries], ignore_index=True) if len(registry) else entries
            registry = registry.drop_duplicates(["symbol", "status"], keep="last")
        registry = _typed(registry.sort_values(["symbol", "status"], ignore_index=True), REGISTRY_TIMES, ("value",))
        storage.write_parquet(self.registry_path, registry)
        return registry

    # symbols (market metadata with listing history)
    def read_symbols(self) -> pd.DataFrame:
        """symbols.parquet with SYMBOLS_COLUMNS (empty if none). A table written before the history
        columns existed gets `first_seen = updated_at` and, for inactive rows, `inactive_since = updated_at`."""
        return _read_table(self.symbols_path, SYMBOLS_COLUMNS, SYMBOLS_TIMES, required=MARKET_COLUMNS + ["updated_at"],
                           what="symbols table", fix="re-run the metadata stage", fill=_fill_older_symbols)

    def upsert_symbols(self, markets: pd.DataFrame, observed: pd.Timestamp) -> dict[str, list[str]]:
        """Merge one market snapshot (MARKET_COLUMNS) seen at `observed` into symbols.parquet.

        Listed markets take the snapshot's fields (last value wins) and `updated_at = observed`; a new
        one gets `first_seen = observed`. A stored market of a snapshot exchange that the snapshot no
        longer lists is kept with `active = False`. `inactive_since` is set to `observed` the first
        time a market is seen inactive or missing, kept after that, and cleared when it is active
        again. Returns the symbols that are new, newly inactive and reactivated.
        """
        observed = pd.Timestamp(observed).tz_convert("UTC")
        old = self.read_symbols().set_index("symbol")
        snap = markets[MARKET_COLUMNS].drop_duplicates("symbol", keep="last").set_index("symbol")
        snap["active"] = snap["active"].astype(bool)
        snap["updated_at"] = observed
        snap["first_seen"] = old["first_seen"].reindex(snap.index).fillna(observed)
        snap["inactive_since"] = old["inactive_since"].reindex(snap.index).fillna(observed).where(~snap["active"])
        absent = old[~old.index.isin(snap.index)].copy()
        gone = absent["exchange"].isin(set(snap["exchange"]))
        absent.loc[gone, "active"] = False
        absent.loc[gone, "inactive_since"] = absent.loc[gone, "inactive_since"].fillna(observed)
        table = pd.concat([f for f in (absent, snap) if len(f)]).rename_axis("symbol").reset_index()
        table = _typed(table[SYMBOLS_COLUMNS], SYMBOLS_TIMES).sort_values("symbol", ignore_index=True)
        table["active"] = table["active"].astype(bool)
        storage.write_parquet(self.symbols_path, table)
        since = table.set_index("symbol")["inactive_since"]
        before = old["inactive_since"].reindex(since.index)
        return {"new": sorted(snap.index.difference(old.index)),
                "newly_inactive": sorted(since.index[since.notna() & before.isna()]),
                "reactivated": sorted(since.index[since.isna() & before.notna()])}

    # tables
    def read_table(self, path: Path) -> pd.DataFrame:
        return storage.read_parquet(path)

    def write_table(self, path: Path, frame: pd.DataFrame) -> Path:
        return storage.write_parquet(path, frame)


def _read_table(path: Path, columns: list[str], times: tuple[str, ...], floats: tuple[str, ...] = (), *,
                required: list[str], what: str, fix: str, fill: Callable[[pd.DataFrame], None]) -> pd.DataFrame:
    """A lakehouse table with `columns` (typed): empty when `path` does not exist; a corrupt file raises
    storage's DataError (file and fix), a file without a `required` column a DataError naming the file,
    the columns and `fix`; `fill(table)` adds in place the columns an older file did not have."""
    if not path.exists():
        return _typed(pd.DataFrame(columns=columns), times, floats)
    table = storage.read_parquet(path)
    missing = [c for c in required if c not in table.columns]
    if missing:
        raise DataError(f"malformed {what} {path}: missing columns {missing}; restore it or delete it and {fix}")
    fill(table)
    return _typed(table[columns], times, floats)


def _fill_older_registry(registry: pd.DataFrame) -> None:
    """A registry written before `bar_ts` / `value` existed: `bar_ts = detected_at`, `value` NaN."""
    if "bar_ts" not in registry.columns:
        registry["bar_ts"] = registry["detected_at"]
    if "value" not in registry.columns:
        registry["value"] = np.nan


def _fill_older_symbols(table: pd.DataFrame) -> None:
    """A symbols table written before the history columns: `first_seen = updated_at`, and
    `inactive_since = updated_at` for inactive rows."""
    if "first_seen" not in table.columns:
        table["first_seen"] = table["updated_at"]
    if "inactive_since" not in table.columns:
        table["inactive_since"] = table["updated_at"].where(~table["active"].astype(bool))


def _typed(frame: pd.DataFrame, times: tuple[str, ...], floats: tuple[str, ...] = ()) -> pd.DataFrame:
    """`times` as UTC datetime64[ns] (naive values are taken as UTC) and `floats` as float64."""
    for col in times:
        values = pd.to_datetime(frame[col], utc=True)
        frame[col] = values.astype("datetime64[ns, UTC]")
    for col in floats:
        frame[col] = frame[col].astype(float)
    return frame
