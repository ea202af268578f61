"""Sleeve streams become assets: loading each sleeve's out-of-sample stream, `fold`, `aggregate_streams`.

Sleeves are joined on the common dates (every sleeve observed); other dates' returns `fold` into the
next common date (no P&L lost, never zero-filled, LESSONS L-D5); rows folded / pending / excluded are
reported (`aggregation_table`, `aggregation_summary`). `infer_annualization` gives the joined stream's
periods per year.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from quantlib.core import storage
from quantlib.core.errors import DataError, GateError
from quantlib.meta.sleeves import SleeveRef
from quantlib.portfolio.performance import utc_naive


def _daily_index(index: pd.Index, where: str) -> pd.DatetimeIndex:
    """A tz-naive, midnight-normalized DatetimeIndex (UTC if tz-aware); duplicates are a DataError."""
    try:
        idx = utc_naive(index).normalize()
    except (TypeError, ValueError) as exc:
        raise DataError(f"{where}: the index is not dates ({exc}); write the stream with a DatetimeIndex 'date'") from None
    if idx.has_duplicates:
        dup = idx[idx.duplicated()].unique()[:5]
        raise DataError(f"{where}: duplicated dates {[d.date().isoformat() for d in dup]}; one row per day expected")
    return idx.rename("date")


def load_streams(sleeves: list[SleeveRef], risk_profile: str) -> dict[str, pd.Series]:
    """Each sleeve's out-of-sample daily return stream for `risk_profile` (a nested meta: column "meta").

    Series named by sleeve id on a sorted tz-naive DatetimeIndex "date"; NaN kept (NaN = no
    observation, never a return). A missing run/file/column raises DataError naming it (run
    `completeness_gate` first).
    """
    out: dict[str, pd.Series] = {}
    for ref in sleeves:
        if ref.run_dir is None:
            raise DataError(f"sleeve {ref.id} has no run directory: no return stream to load")
        name, column = ref.stream(risk_profile)
        path = ref.path(name)
        frame = storage.read_parquet(path)
        if "date" in frame.columns:
            frame = frame.set_index("date")
        if column not in frame.columns:
            raise DataError(f"{path} has no column {column!r} (columns {list(frame.columns)}); "
                            "re-run the sleeve's validation backtest")
        s = pd.to_numeric(frame[column], errors="coerce").astype(float)
        s.index = _daily_index(frame.index, str(path))
        out[ref.id] = s.sort_index().rename(ref.id)
    return out


def _span(s: pd.Series) -> str:
    s = s.dropna()
    if s.empty:
        return "no observations"
    return f"{s.index.min().date().isoformat()}..{s.index.max().date().isoformat()} ({len(s)} rows)"


def fold(stream: pd.Series, common_dates: pd.DatetimeIndex) -> tuple[pd.Series, dict]:
    """Move a stream onto `common_dates` without losing P&L (SPEC conventions, DESIGN "Calendars").

    NaN is "no observation" (dropped, never a zero return). Each observed date maps to the first
    common date at or after it (`searchsorted`); each group compounds to one return, Π(1+r) − 1, so
    a return is only ever moved *later*, never earlier. A group of one keeps its value bit for bit.
    Rows before the first common date are outside the joint span (excluded); rows after the last
    one are pending (left out until a later common date exists). Invariant: over any span
    (C_i, C_j] between common dates the folded stream compounds to the stream's own total.
    A common date with no observation at or since the previous common date stays NaN.

    Returns (Series on `common_dates`, counts {on_common, folded, pending, excluded,
    pending_return, excluded_return}) with the last two the compounded returns left out.
    """
    s = pd.Series(stream, dtype=float).dropna().sort_index()
    common = pd.DatetimeIndex(common_dates).unique().sort_values()
    if common.empty:
        raise ValueError("fold: no common dates to fold onto")
    r = s.to_numpy()
    dates = s.index.to_numpy(dtype="datetime64[ns]")
    grid = common.to_numpy(dtype="datetime64[ns]")
    pos = np.searchsorted(grid, dates, side="left")        # first common date >= each date
    excluded = dates < grid[0]
    pending = pos == len(grid)
    keep = ~excluded & ~pending
    kr, kp = r[keep], pos[keep]
    on_common = int((grid[kp] == dates[keep]).sum())
    out = np.full(len(grid), np.nan)
    if len(kr):
        starts = np.flatnonzero(np.r_[True, kp[1:] != kp[:-1]])
        sizes = np.diff(np.r_[starts, len(kr)])
        out[kp[starts]] = np.where(sizes == 1, kr[starts], np.multiply.reduceat(1.0 + kr, starts) - 1.0)
    counts = {"on_common": on_common, "folded": int(keep.sum()) - on_common,
              "pending": int(pending.sum()), "excluded": int(excluded.sum()),
              "pending_return": float(np.prod(1.0 + r[pending]) - 1.0),
              "excluded_return": float(np.prod(1.0 + r[excluded]) - 1.0)}
    return pd.Series(out, index=common.rename("date"), name=s.name), counts


def aggregate_streams(streams: dict[str, pd.Series]) -> tuple[pd.DataFrame, dict]:
    """Sleeves become assets: every stream folded onto the common dates, never zero-filled (L-D5).

    Common dates = the dates on which every sleeve has a (non-NaN) observation. Each sleeve's
    returns on other dates are compounded into its next common date (`fold`), so over any span
    between two common dates a sleeve's joined column compounds to that sleeve's own total: a
    7-day crypto stream joined with a weekday equities stream keeps its weekend P&L in Monday.
    Rows before the first common date are excluded, rows after the last one pending (reported).

    Returns (common dates x sleeve returns, report) with report = {rows_per_sleeve: {id: non-NaN
    rows}, rows_joined: number of common dates, rows_folded / rows_pending / rows_excluded: {id:
    rows}, pending_return / excluded_return: {id: compounded return of those rows}, nan_rows: {id:
    NaN rows in the input}, first, last, annualization}; per sleeve rows_per_sleeve = rows_joined +
    folded + pending + excluded. No common date raises GateError naming the sleeves and ranges.
    """
    if not streams:
        raise GateError("meta aggregation: no sleeve streams to aggregate; check the completeness gate")
    cols = {}
    for sid, s in streams.items():
        s = pd.Series(s, dtype=float)
        s.index = _daily_index(s.index, f"stream of sleeve {sid}")
        cols[sid] = s.sort_index().rename(sid)
    observed = pd.concat(list(cols.values()), axis=1, join="outer").notna()
    common = observed.index[observed.all(axis=1).to_numpy()].sort_values()
    if common.empty:
        spans = "; ".join(f"{sid}: {_span(s)}" for sid, s in cols.items())
        raise GateError(f"meta aggregation: sleeves {list(cols)} have no date on which all of them have a "
                        f"return ({spans}); the sleeves' out-of-sample periods/calendars do not overlap -- "
                        "re-run them over a common window")
    folded = {sid: fold(s, common) for sid, s in cols.items()}
    joined = pd.DataFrame({sid: f for sid, (f, _) in folded.items()}, index=common)
    joined.index.freq = None
    joined.index.name = "date"
    joined.columns.name = "sleeve"
    counts = {sid: c for sid, (_, c) in folded.items()}
    report = {
        "rows_per_sleeve": {sid: int(s.notna().sum()) for sid, s in cols.items()},
        "rows_joined": len(joined),
        **{f"rows_{k}": {sid: c[k] for sid, c in counts.items()} for k in ("folded", "pending", "excluded")},
        **{k: {sid: c[k] for sid, c in counts.items()} for k in ("pending_return", "excluded_return")},
        "nan_rows": {sid: int(s.isna().sum()) for sid, s in cols.items()},
        "first": joined.index[0].date().isoformat(),
        "last": joined.index[-1].date().isoformat(),
        "annualization": infer_annualization(joined.index),
    }
    return joined, report


def aggregation_table(report: dict) -> pd.DataFrame:
    """Per-sleeve rows of an `aggregate_streams` report (the table the report and notebooks show)."""
    keys = {"rows": "rows_per_sleeve", "folded": "rows_folded", "pending": "rows_pending",
            "excluded": "rows_excluded", "pending_return": "pending_return",
            "excluded_return": "excluded_return", "nan_rows": "nan_rows"}
    frame = pd.DataFrame({name: report.get(key, {}) for name, key in keys.items()})
    frame.insert(1, "on_common_dates", report.get("rows_joined"))
    return frame.rename_axis("sleeve")


def aggregation_summary(report: dict) -> str:
    """One sentence saying how the sleeves were aligned (common dates, fold, pending/excluded)."""
    return (f"Aggregation: {report.get('rows_joined')} common dates {report.get('first')}..{report.get('last')} "
            "(every sleeve observed); each sleeve's returns on other dates are compounded into its next "
            "common date (no P&L lost, never zero-filled); returns after the last common date are pending "
            "(left out until a later common date exists), rows before the first one are outside the joint "
            f"span (excluded); annualization {report.get('annualization')} periods per year of common dates.")


def infer_annualization(index: pd.Index) -> int:
    """Periods per year of a (joined) daily stream: 365 when its dates include weekends (crypto 24x7),
    else 252. A stream folded onto weekday common dates has one row per weekday, each the return
    since the previous common date, so 252 is its period count (its weekend P&L sits in Monday)."""
    idx = pd.DatetimeIndex(index)
    return 365 if bool((idx.day_of_week >= 5).any()) else 252
