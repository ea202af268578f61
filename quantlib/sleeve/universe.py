"""The point-in-time universe (SPEC §2.7, conventions): a sleeve's scanners evaluated at any date on
what was known at that date's bar, in one vectorized pass over all dates.

- `base_universe`: every symbol the lakehouse's symbol table has ever seen (delisted ones included)
  that passes the scanners' static market filters (exchange, base, quote, type) and has bars. It is
  never today's market list: a symbol delisted since is still a candidate in the windows before.
- `screener_history`: one row per (date, symbol) where the symbol traded that day and was not known
  to be toxic or flagged: static market fields from the symbol table, price fields from its OHLCV up
  to that bar (`features.price_fields`), technical fields from the features matrix at that bar.
- `universe_at`: the scanners' filters, dedupe, sort and limit per date (`scanners.run_scanner_by`),
  so the production universe (the last date) and every walk-forward window come from one code path.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

from quantlib.core.errors import DataError, GateError, ProfileError
from quantlib.data.features import PRICE_FIELDS, price_fields
from quantlib.sleeve.health import assess_window
from quantlib.data.scanners import TECHNICAL_FIELDS, Scanner, run_scanner, run_scanner_by
from quantlib.data.sources.base import MARKET_COLUMNS

MATRIX_FIELDS = ("recommend_all", "recommend_ma", "recommend_other", "adx", "rsi")
"""Technical fields the features matrix holds at every bar (the backfill's columns)."""
STATIC_MARKET_FIELDS = tuple(c for c in MARKET_COLUMNS if c not in ("symbol", "active"))
POINT_IN_TIME_FIELDS = frozenset(("symbol", "active", "quote_volume") + STATIC_MARKET_FIELDS + PRICE_FIELDS
                                 + MATRIX_FIELDS)
"""Every field a scanner may filter or sort on when it is evaluated at a past date."""
POOL_COLUMNS = ["date", "symbol", "direction", "logic", "scanner", "value_traded", "recommend_all",
                "recommend_ma", "tick_size", "lot_size"]


class UniverseError(GateError):
    """A point-in-time universe is empty at a rebalance date (the message carries the funnel)."""


def check_point_in_time(scanners: Sequence[Scanner]) -> None:
    """Every filter and sort field of every scanner must exist in the screener history."""
    for scanner in scanners:
        fields = [f.field for f in scanner.filters] + ([scanner.sort_by] if scanner.sort_by else [])
        for field in fields:
            if field not in POINT_IN_TIME_FIELDS:
                where = ("technical fields are point-in-time only if the backfill writes them to "
                         "features_matrix.parquet" if field in TECHNICAL_FIELDS else "it is a live-only field")
                raise ProfileError(
                    f"scanner {scanner.name!r} uses field {field!r}, which has no point-in-time history "
                    f"({where}); filter on one of {', '.join(sorted(POINT_IN_TIME_FIELDS))} instead "
                    f"(profiles/scanners/{scanner.name}.yaml)")


def base_universe(symbols: pd.DataFrame, scanners: Sequence[Scanner], stored: Iterable[str]) -> list[str]:
    """Symbols of the lakehouse symbol table with stored bars passing any scanner's static filters."""
    table = symbols[symbols["symbol"].isin(set(stored))]
    admitted: set[str] = set()
    for scanner in scanners:
        admitted |= set(run_scanner(scanner, table, market_only=True)[0]["symbol"])
    return sorted(admitted)


def _flagged(panel: dict[str, pd.DataFrame], flat_bars: int) -> np.ndarray:
    """(dates x symbols) True where the last `flat_bars` bars up to that bar traded nothing or never
    moved (the data phase's ZERO_VOLUME / FLAT_PRICE flags, evaluated at every bar)."""
    close, volume = panel["close"], panel["volume"]
    roll = lambda frame: frame.rolling(flat_bars, min_periods=flat_bars)  # noqa: E731
    own = lambda frame: frame.where(close.notna())  # noqa: E731
    dead = roll((own(volume).fillna(np.inf) > 0).astype(float)).sum() == 0
    still = roll(own(close)).max() == roll(own(close)).min()
    return (dead | still).to_numpy()


def _registry_toxic(registry: pd.DataFrame, dates: pd.DatetimeIndex, symbols: pd.Index) -> np.ndarray:
    """(dates x symbols) True from the bar a TOXIC flag is dated on (`bar_ts`) onwards."""
    out = np.zeros((len(dates), len(symbols)), dtype=bool)
    if registry.empty:
        return out
    toxic = registry[registry["status"].eq("TOXIC") & registry["symbol"].isin(symbols)]
    when = toxic["bar_ts"] if "bar_ts" in toxic.columns else toxic["detected_at"]
    for symbol, ts in zip(toxic["symbol"], pd.to_datetime(when, utc=True)):
        out[dates >= ts, symbols.get_loc(symbol)] = True
    return out


def screener_history(panel: dict[str, pd.DataFrame], symbols: pd.DataFrame, features: pd.DataFrame,
                     registry: pd.DataFrame, flat_bars: int = 5) -> pd.DataFrame:
    """Long table `date, symbol, <POINT_IN_TIME_FIELDS>` of every (bar, symbol) a scanner may see.

    `panel`: OHLCV fields as dates x symbols (`features.load_panel`); `symbols`: the lakehouse
    symbol table (`inactive_since` optional); `features`: the features matrix rows of these
    symbols (long: ts, symbol, MATRIX_FIELDS); `registry`: the lakehouse registry (`bar_ts`)."""
    close = panel["close"]
    dates, columns = close.index, close.columns
    fields = price_fields(panel)
    visible = close.notna().to_numpy() & ~_flagged(panel, flat_bars) & ~_registry_toxic(registry, dates, columns)
    rows, cols = np.nonzero(visible)
    out = pd.DataFrame({"date": dates[rows], "symbol": columns[cols].astype(str)})
    for name in PRICE_FIELDS:
        out[name] = fields[name].to_numpy()[rows, cols]
    out["quote_volume"] = out["value_traded"]
    if not features.empty:
        tech = features[["ts", "symbol", *[c for c in MATRIX_FIELDS if c in features.columns]]]
        out = out.merge(tech.rename(columns={"ts": "date"}), on=["date", "symbol"], how="left")
    for name in MATRIX_FIELDS:
        if name not in out.columns:
            out[name] = np.nan
    static = symbols.drop_duplicates("symbol", keep="last").set_index("symbol")
    for name in STATIC_MARKET_FIELDS:
        out[name] = out["symbol"].map(static[name]) if name in static.columns else np.nan
    out["active"] = True
    if "inactive_since" in static.columns:   # a market seen inactive is inactive from that time on
        inactive = pd.to_datetime(out["symbol"].map(static["inactive_since"]), utc=True)
        out["active"] = inactive.isna() | (inactive > out["date"])
    return out.sort_values(["date", "symbol"], ignore_index=True)


def universe_at(screener: pd.DataFrame, scanners: Sequence[Scanner], dates: Iterable[pd.Timestamp]
                ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Each scanner evaluated at each of `dates` on the screener rows of that date.

    Returns (pool: POOL_COLUMNS + screener fields, one row per (date, symbol, logic, direction)
    across the scanners; funnel: date, scanner, step, filter, remaining)."""
    dates = pd.DatetimeIndex(sorted(set(dates)))
    table = screener[screener["date"].isin(dates)]
    pools, funnels = [], []
    for scanner in scanners:
        if scanner.direction is None:
            raise ProfileError(f"scanner {scanner.name!r} has no direction (LONG or SHORT); a sleeve consumes "
                               f"directional scanners only (sleeve.scanners)")
        rows, funnel = run_scanner_by(scanner, table, "date")
        pools.append(rows.assign(direction=scanner.direction, logic=scanner.logic, scanner=scanner.name))
        funnels.append(funnel.assign(scanner=scanner.name))
    pool = pd.concat(pools, ignore_index=True).drop_duplicates(["date", "symbol", "logic", "direction"])
    funnel = pd.concat(funnels, ignore_index=True)[["date", "scanner", "step", "filter", "remaining"]]
    present = set(table["date"])
    missing = [d for d in dates if d not in present]
    if missing:
        funnel = pd.concat([funnel, pd.DataFrame({"date": missing, "scanner": "", "step": 0,
                                                  "filter": "universe", "remaining": 0})], ignore_index=True)
    order = [c for c in POOL_COLUMNS if c in pool.columns]
    pool = pool[order + [c for c in pool.columns if c not in order]]
    return pool.sort_values(["date", "symbol", "logic", "direction"], ignore_index=True), funnel


def candidates_at(returns: pd.DataFrame, screener: pd.DataFrame, scanners: Sequence[Scanner],
                  dates: Iterable[pd.Timestamp], *, window: int, min_history_days: int, toxic_return: float
                  ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The universe at each date (`universe_at`) with each candidate's strict health assessed on the
    `window` returns rows ending at that date (never on a later row).

    Returns (pool with `health`, `health_detail`, `health_returns` (returns in the window),
    `last_bar` and `toxic` columns; funnel with a final "strict health" step per scanner)."""
    pool, funnel = universe_at(screener, scanners, dates)
    index = returns.index

    def health_at(date: pd.Timestamp, symbols: pd.Series) -> pd.DataFrame:
        end = index.searchsorted(date, side="right")  # the window ends at `date`, never on a later row
        return assess_window(returns.iloc[max(0, end - window):end], symbols.unique(),
                             min_history_days=min_history_days, toxic_return=toxic_return).assign(date=date)

    health = [health_at(date, symbols) for date, symbols in pool.groupby("date", sort=True)["symbol"]]
    columns = {"status": "health", "detail": "health_detail", "returns": "health_returns", "last_return": "last_bar"}
    if health:  # one join for all dates (a per-date assign was most of this function's time)
        pool = pool.merge(pd.concat(health, ignore_index=True)[["date", "symbol", *columns]].rename(columns=columns),
                          on=["date", "symbol"], how="left", validate="many_to_one")
    else:
        pool = pool.assign(health=[], health_detail=[], health_returns=[], last_bar=pd.NaT)
    pool["toxic"] = pool["health"].eq("TOXIC")
    last = funnel[funnel["date"].isin(pool["date"])].groupby(["date", "scanner"]).tail(1)
    ok = pool[pool["health"] == "OK"].groupby(["date", "scanner"]).size()
    keys = pd.MultiIndex.from_frame(last[["date", "scanner"]])
    steps = last.assign(step=last["step"] + 1, filter="strict health",
                        remaining=ok.reindex(keys, fill_value=0).to_numpy().astype(int))
    funnel = pd.concat([funnel, steps], ignore_index=True).sort_values(["date", "scanner", "step"],
                                                                       ignore_index=True)
    return pool, funnel


def funnel_text(funnel: pd.DataFrame, date: pd.Timestamp) -> str:
    """One line per scanner: its funnel at `date` (for error messages)."""
    rows = funnel[funnel["date"] == date]
    parts = []
    for scanner, steps in rows.groupby("scanner", sort=False):
        parts.append(f"{scanner or 'screener'}: " + " -> ".join(f"{f} {n}" for f, n in
                                                                zip(steps["filter"], steps["remaining"])))
    return "; ".join(parts) if parts else "no screener rows"


def require_symbols_table(symbols: pd.DataFrame, path: str) -> pd.DataFrame:
    """The symbol table must exist and hold markets: the base universe comes from it."""
    if symbols.empty:
        raise DataError(f"the lakehouse symbol table {path} is missing or empty; run the data phase "
                        f"(`python run_book.py data`), whose metadata stage writes it")
    return symbols
