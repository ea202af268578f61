"""A sleeve's raw inputs, read from the lakehouse as of a date: the base universe, its returns and the
point-in-time screener its scanners are evaluated on.

The sleeve's aggregate stage copies them into its run (every later stage reads the run's own
artifacts); the look-ahead audit calls the same loader on a perturbed copy of the lakehouse.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from quantlib.core.errors import DataError, GateError
from quantlib.core.profiles import Profile
from quantlib.data.features import load_panel
from quantlib.data.lakehouse import Lakehouse
from quantlib.data.scanners import Scanner
from quantlib.sleeve.health import close_to_returns
from quantlib.sleeve.universe import base_universe, check_point_in_time, require_symbols_table, screener_history


class HealthError(GateError):
    """Strict health left too few assets, or the benchmark is missing/unhealthy."""


@dataclass
class SleeveInputs:
    """What a sleeve decides on, read from the lakehouse as of its last bar (`load_sleeve_inputs`)."""

    base: list[str]              # the base universe: symbol-table symbols passing the static filters
    returns: pd.DataFrame        # dates x base symbols over the lookback (NaN where no bar)
    close: pd.DataFrame          # dates x (base + benchmark) closes over the lookback window
    screener: pd.DataFrame       # date, symbol, point-in-time screener fields (universe.screener_history)
    files: list[Path]            # lakehouse files read


def load_sleeve_inputs(lake: Lakehouse, profile: Profile, scanners: list[Scanner],
                       end: pd.Timestamp | None = None) -> SleeveInputs:
    """The sleeve's raw inputs from the lakehouse: base universe, returns and the point-in-time
    screener over the last `sleeve.lookback_days` bars up to `end` (default: the last bar). The
    aggregate stage and the look-ahead audit (on a perturbed copy of the lakehouse) both call it."""
    cfg, data = profile.sleeve, profile.data
    check_point_in_time(scanners)
    symbols = require_symbols_table(lake.read_symbols(), str(lake.symbols_path))
    base = base_universe(symbols, scanners, lake.stored_symbols(data.timeframe))
    if not base:
        raise DataError(f"aggregate: no symbol of the lakehouse symbol table {lake.symbols_path} with stored "
                        f"{data.timeframe} bars passes the static filters of {[s.name for s in scanners]} "
                        f"(sleeve.scanners); run the data phase with these scanners")
    venues = sorted({s.split(":", 1)[0] for s in base})
    if len(venues) > 1:
        raise DataError(f"aggregate: the static filters of {[s.name for s in scanners]} (sleeve.scanners) admit "
                        f"symbols of several exchanges {venues}, whose calendars differ; add an "
                        f"{{field: exchange, op: \"==\", value: ...}} filter to the scanner")
    loaded = sorted(set(base) | {cfg.benchmark})
    panel = load_panel(lake, loaded, data.timeframe)
    if end is not None:
        panel = {f: frame.loc[frame.index <= end] for f, frame in panel.items()}
    close = panel["close"]
    if close.empty:
        raise HealthError(f"aggregate: the lakehouse {lake.root} has no bars for the {len(base)} base-universe "
                          f"symbols; run `python run_book.py data` first")
    window = close.dropna(how="all").index[-cfg.lookback_days:]
    returns = close_to_returns(close.loc[window]).reindex(columns=base)
    features = _features_for(lake, loaded)
    screener = screener_history(panel, symbols, features, lake.read_registry(), data.flat_bars)
    screener = screener[screener["date"].isin(returns.index)].reset_index(drop=True)
    files = [lake.ohlcv_path(s, data.timeframe) for s in loaded] + [lake.symbols_path, lake.registry_path,
                                                                    lake.features_path]
    return SleeveInputs(base, returns, close.loc[window], screener, [p for p in files if p.exists()])


def benchmark_returns(inputs: SleeveInputs, profile: Profile) -> pd.Series:
    """The market benchmark's daily returns over the sleeve's window (NaN where it has no bar)."""
    name = profile.sleeve.benchmark
    close = inputs.close[[name]] if name in inputs.close.columns else pd.DataFrame({name: np.nan}, index=inputs.close.index)
    return close_to_returns(close)[name].rename("benchmark")


def _features_for(lake: Lakehouse, symbols: list[str]) -> pd.DataFrame:
    """The features-matrix rows of `symbols` (every bar: the screener history needs them)."""
    if not lake.features_path.exists():
        raise DataError(f"aggregate: missing {lake.features_path}; run the data phase's backfill stage")
    try:
        frame = pd.read_parquet(lake.features_path, filters=[("symbol", "in", list(symbols))])
    except Exception as exc:
        raise DataError(f"aggregate: unreadable {lake.features_path} ({type(exc).__name__}); "
                        f"delete it and re-run the data phase's backfill stage") from None
    return frame.sort_values(["symbol", "ts"], ignore_index=True)
