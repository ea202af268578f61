"""The shared market-data store: per-symbol OHLCV parquet files plus registry/metadata tables.

Layout under the lakehouse root:
  ohlcv/<timeframe>/<EXCHANGE>_<TICKER>.parquet   ts (UTC), open, high, low, close, volume
  registry.parquet        symbol, status, reason, detected_at, value   (toxic / flagged symbols)
  symbols.parquet         market metadata (tick/lot sizes, fees, ...)
  technicals.parquet      latest technical snapshot per symbol
  features_matrix.parquet point-in-time ratings, long format (ts, symbol, ...)
Every write is atomic; readers validate schemas and name the file and the fix on failure.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from . import storage
from .errors import DataError
from .ids import check_symbol, symbol_filename
from .sources.base import OHLCV_COLUMNS, empty_ohlcv

REGISTRY_COLUMNS = ["symbol", "status", "reason", "detected_at", "value"]
EXCLUDING_STATUSES = ("TOXIC", "ZERO_VOLUME", "FLAT_PRICE")


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
        storage.write_parquet(self.ohlcv_path(symbol, timeframe), merged)
        return len(merged) - len(old)

    # registry
    def read_registry(self) -> pd.DataFrame:
        if not self.registry_path.exists():
            return pd.DataFrame({c: pd.Series(dtype="object") for c in REGISTRY_COLUMNS})
        return storage.read_parquet(self.registry_path)

    def excluded_symbols(self) -> set[str]:
        """Symbols later stages must skip (toxic or flagged)."""
        registry = self.read_registry()
        return set(registry.loc[registry["status"].isin(EXCLUDING_STATUSES), "symbol"])

    def update_registry(self, entries: pd.DataFrame, cleared: set[str] | None = None) -> pd.DataFrame:
        """Upsert (symbol, status) entries; drop re-checkable flags for `cleared` symbols. TOXIC is sticky."""
        registry = self.read_registry()
        if cleared:
            stale = registry["symbol"].isin(cleared) & (registry["status"] != "TOXIC")
            registry = registry[~stale]
        if not entries.empty:
            registry = pd.concat([registry, entries[REGISTRY_COLUMNS]], ignore_index=True)
            registry = registry.drop_duplicates(["symbol", "status"], keep="last")
        registry = registry.sort_values(["symbol", "status"], ignore_index=True)
        storage.write_parquet(self.registry_path, registry)
        return registry

    # tables
    def read_table(self, path: Path) -> pd.DataFrame:
        return storage.read_parquet(path)

    def write_table(self, path: Path, frame: pd.DataFrame) -> Path:
        return storage.write_parquet(path, frame)
