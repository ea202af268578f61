"""Composable scanners (SPEC §1.2): YAML pipelines of filters over a screener table.

A scanner file may `extends:` another; the child's filters run after the parent's, every other key
overrides. No filter is active unless written. Pipeline: filters (funnel count after each) ->
dedupe by base (best quote by `quote_priority`) -> sort -> limit.

The same pipeline runs on today's screener (the data phase) and, grouped by date, on the
point-in-time screener history of `quantlib.sleeve.universe` (one row per date and symbol), so every
walk-forward window's universe comes from the production code path (SPEC §2.7).
Fields split by how they change over time: `STATIC_FIELDS` (exchange, base, quote, type: fixed for
a market) define the *base universe* the data phase ingests; every other filter is decided at the
date it is evaluated.
"""
from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import Field, ValidationError

from quantlib.core.errors import ProfileError
from quantlib.core.profiles import Strict, default_profiles_dir, load_yaml_chain
from quantlib.data.sources.base import MARKET_COLUMNS, TICKER_COLUMNS

Op = Literal[">", ">=", "<", "<=", "==", "!=", "in", "not_in", "between", "matches", "not_matches"]
MARKET_FIELDS = frozenset(MARKET_COLUMNS) | frozenset(TICKER_COLUMNS) | {"value_traded"}
STATIC_FIELDS = frozenset({"symbol", "exchange", "base", "quote", "type"})
"""Fields that never change for a market: the only filters applied to the base universe."""
TECHNICAL_FIELDS = ("recommend_all", "recommend_ma", "recommend_other", "adx", "rsi",
                    "perf_1w", "perf_1m", "perf_3m", "volatility_d")
CANDIDATE_FIELDS = ("symbol", "exchange", "base", "quote", "type", "value_traded") + TECHNICAL_FIELDS[:5]


class Filter(Strict):
    field: str
    op: Op
    value: Any


class Scanner(Strict):
    """A resolved scanner definition."""

    name: str
    description: str = ""
    direction: Literal["LONG", "SHORT"] | None = None
    logic: str = "scan"
    filters: list[Filter] = Field(default_factory=list)
    sort_by: str | None = None
    order: Literal["asc", "desc"] = "desc"
    limit: int | None = Field(default=None, ge=1)
    dedupe_by_base: bool = False
    quote_priority: list[str] = Field(default_factory=list)


def scanners_dir(profiles_dir: Path | None = None) -> Path:
    return (profiles_dir or default_profiles_dir()) / "scanners"


def load_scanner(name: str, profiles_dir: Path | None = None) -> Scanner:
    """Resolve a scanner's `extends` chain (filters concatenated, root first) and validate it."""
    directory = scanners_dir(profiles_dir)
    docs, chain = load_yaml_chain(name, directory, kind="scanner")
    merged: dict[str, Any] = {"filters": []}
    for doc in docs:
        filters = doc.get("filters", [])
        if not isinstance(filters, list):
            raise ProfileError(f"{directory / (doc.get('name', name) + '.yaml')}: 'filters' must be a list")
        merged.update({k: v for k, v in doc.items() if k not in ("extends", "filters")})
        merged["filters"] = merged["filters"] + filters
    merged["name"] = name
    try:
        scanner = Scanner.model_validate(merged)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"])
        hint = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        raise ProfileError(f"{directory / (name + '.yaml')} (chain {' <- '.join(chain)}): key '{key}': {hint}") from None
    for f in scanner.filters:
        _check_filter_value(scanner, f, directory / f"{name}.yaml")
    return scanner


NUMERIC_OPS = frozenset({">", ">=", "<", "<=", "between"})


def _number_text(value: Any) -> bool:
    """A string YAML left as text although it reads as a number (`5e6`: YAML 1.1 needs `5.0e+6`)."""
    if not isinstance(value, str):
        return False
    try:
        float(value)
    except ValueError:
        return False
    return True


def _check_filter_value(scanner: Scanner, f: Filter, path: Path | None = None) -> None:
    where = f"scanner {scanner.name!r} filter on {f.field!r} ({f.op})" + (f" in {path}" if path else "")
    values = f.value if isinstance(f.value, list) else [f.value]
    text = next((v for v in values if _number_text(v)), None) if f.op in NUMERIC_OPS else None
    if text is not None:
        fixed = format(float(text), ".0f") if float(text).is_integer() else repr(float(text))
        raise ProfileError(f"{where}: value {text!r} is a string (YAML reads `{text}` as text, not a number); "
                           f"write {fixed}")
    if f.op in ("in", "not_in") and not isinstance(f.value, list):
        raise ProfileError(f"{where}: value must be a list")
    if f.op == "between" and not (isinstance(f.value, list) and len(f.value) == 2):
        raise ProfileError(f"{where}: value must be [low, high]")
    if f.op in ("matches", "not_matches"):
        try:
            re.compile(str(f.value))
        except re.error as exc:
            raise ProfileError(f"{where}: invalid regular expression ({exc})") from None


def filter_mask(table: pd.DataFrame, f: Filter, scanner: str = "?") -> pd.Series:
    """Rows passing one filter. A missing (NaN) value never passes."""
    if f.field not in table.columns:
        raise ProfileError(
            f"scanner {scanner!r}: unknown field {f.field!r}; available: {', '.join(sorted(table.columns))}"
        )
    col = table[f.field]
    present = col.notna()
    v = f.value
    if f.op == ">":
        mask = col > v
    elif f.op == ">=":
        mask = col >= v
    elif f.op == "<":
        mask = col < v
    elif f.op == "<=":
        mask = col <= v
    elif f.op == "==":
        mask = col == v
    elif f.op == "!=":
        mask = col != v
    elif f.op == "in":
        mask = col.isin(v)
    elif f.op == "not_in":
        mask = ~col.isin(v)
    elif f.op == "between":
        mask = (col >= v[0]) & (col <= v[1])
    else:
        matched = col.astype("string").str.contains(str(v), regex=True, na=False)
        mask = matched if f.op == "matches" else ~matched
    return (mask.fillna(False) & present).astype(bool)


def run_scanner(scanner: Scanner, table: pd.DataFrame, market_only: bool = False) -> tuple[pd.DataFrame, list[dict]]:
    """Apply the pipeline; return (candidates, funnel). `market_only` keeps the static market steps
    only (the base universe: no time-varying filter, no sort or limit)."""
    rows, funnel = run_scanner_by(scanner, table.assign(_group=0), "_group", market_only)
    steps = [{"filter": f, "remaining": int(n)} for f, n in zip(funnel["filter"], funnel["remaining"])]
    return rows.drop(columns="_group"), steps


def run_scanner_by(scanner: Scanner, table: pd.DataFrame, by: str, market_only: bool = False
                   ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The pipeline applied independently within each group of `table[by]` (e.g. each date), in one
    vectorized pass: filters row-wise, dedupe by (group, base), sort and limit per group.

    Returns (rows sorted by group then rank, funnel with columns [by, step, filter, remaining])."""
    keep = (lambda field: field in STATIC_FIELDS) if market_only else (lambda field: True)
    groups = pd.Index(pd.unique(table[by])).sort_values()
    steps: list[tuple[str, pd.Series]] = []

    def count(label: str, frame: pd.DataFrame) -> None:
        steps.append((label, frame.groupby(by, sort=True).size().reindex(groups, fill_value=0)))

    rows = table
    count("universe", rows)
    for f in scanner.filters:
        if keep(f.field):
            rows = rows[filter_mask(rows, f, scanner.name)]
            count(f"{f.field} {f.op} {f.value}", rows)
    if scanner.dedupe_by_base and not market_only:
        rows = dedupe_by_base(rows, scanner.quote_priority, by=by)
        count("dedupe_by_base", rows)
    if scanner.sort_by and not market_only:
        if scanner.sort_by not in rows.columns:
            raise ProfileError(f"scanner {scanner.name!r}: unknown sort_by field {scanner.sort_by!r}")
        rows = rows.sort_values([by, scanner.sort_by, "symbol"], ascending=[True, scanner.order == "asc", True],
                                na_position="last", kind="mergesort")
        if scanner.limit:
            rows = rows[rows.groupby(by, sort=False).cumcount() < scanner.limit]
            count(f"limit {scanner.limit}", rows)
    else:
        rows = rows.sort_values(by, kind="mergesort")
    funnel = pd.DataFrame([{by: g, "step": i, "filter": label, "remaining": int(n)}
                           for i, (label, counts) in enumerate(steps) for g, n in counts.items()],
                          columns=[by, "step", "filter", "remaining"])
    return rows.reset_index(drop=True), funnel


def dedupe_by_base(rows: pd.DataFrame, quote_priority: list[str], by: str | None = None) -> pd.DataFrame:
    """Keep one row per base (per group of `by`, if given): the quote earliest in `quote_priority`,
    then the highest value traded, then the symbol."""
    rank = {q: i for i, q in enumerate(quote_priority)}
    order = rows.assign(_rank=rows["quote"].map(rank).fillna(len(rank)),
                        _vt=-rows.get("value_traded", pd.Series(0.0, index=rows.index)).fillna(0.0))
    keys = ([by] if by else []) + ["base"]
    order = order.sort_values(keys + ["_rank", "_vt", "symbol"], kind="mergesort")
    kept = order.drop_duplicates(keys, keep="first").index
    return rows.loc[rows.index.isin(kept)]


def screener_table(markets: pd.DataFrame, tickers: pd.DataFrame,
                   technicals: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per symbol: market fields, ticker fields (`value_traded` = 24h quote volume), technicals."""
    table = markets.merge(tickers, on="symbol", how="left")
    table["value_traded"] = table["quote_volume"].astype(float)
    if technicals is not None and not technicals.empty:
        tech = technicals[["symbol"] + [c for c in TECHNICAL_FIELDS if c in technicals.columns]]
        table = table.merge(tech, on="symbol", how="left")
    for name in TECHNICAL_FIELDS:
        if name not in table.columns:
            table[name] = np.nan
    return table


def candidate_document(scanner: Scanner, rows: pd.DataFrame, funnel: list[dict], run_id: str,
                       generated_at: str) -> dict:
    """The JSON contract of `export/<scanner>.json`."""
    fields = [c for c in CANDIDATE_FIELDS if c in rows.columns]
    candidates = []
    for rec in rows[fields].to_dict(orient="records"):
        rec = {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in rec.items()}
        rec["direction"], rec["logic"] = scanner.direction, scanner.logic
        candidates.append(rec)
    return {"scanner": scanner.name, "run_id": run_id, "generated_at": generated_at,
            "direction": scanner.direction, "logic": scanner.logic, "count": len(candidates),
            "funnel": funnel, "candidates": candidates}


def run_scanners(scanners: list[Scanner], table: pd.DataFrame, market_only: bool = False
                 ) -> dict[str, tuple[pd.DataFrame, list[dict]]]:
    """Run scanners independently in parallel threads; results keyed by scanner name."""
    with ThreadPoolExecutor(max_workers=min(8, max(1, len(scanners)))) as pool:
        futures = {s.name: pool.submit(run_scanner, s, table, market_only) for s in scanners}
        return {name: fut.result() for name, fut in futures.items()}
