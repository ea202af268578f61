"""What a run's `report.html` shows, read from the run's artifacts through the registry: the out-of-sample
streams next to their benchmarks, the physical book, exposure and turnover over time and, for a meta,
its sleeves as assets.

Benchmarks. A sleeve: the market benchmark (`sleeve.benchmark` bought once at the first decision and
held, fees charged) and the equal-weight point-in-time universe (1/N of the eligible names at each
rebalance), both simulated by the walk-forward backtest (`backtest/benchmarks.parquet`). A meta: the
equal-weight sleeves (1/N of the joined sleeve returns, rebalanced daily) and the market blend (the
sleeves' market benchmarks joined on the meta's calendar like the sleeve streams, equal weights).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from quantlib.core import registry, storage
from quantlib.core.errors import WorkbookError
from quantlib.core.profiles import ANNUALIZATION
from quantlib.core.runs import MANIFEST, Run
from quantlib.meta.sleeves import SleeveRef, sleeve_refs, value
from quantlib.meta.streams import aggregate_streams, infer_annualization
from quantlib.portfolio.metrics import metrics_table
from quantlib.portfolio.performance import equal_weight, held_weights, turnover_series, utc_naive


class Missing(WorkbookError):
    """An artifact a report section needs is not in the run (the section says so instead of drawing)."""


@dataclass
class Source:
    """One run's artifacts by registry name (`read` raises `Missing` naming the run-relative path)."""

    run: Run
    phase: str
    cache: dict[str, Any] = field(default_factory=dict)

    def rel(self, name: str) -> str:
        return registry.path(self.phase, name)

    def has(self, name: str) -> bool:
        return (self.run.dir / self.rel(name)).is_file()

    def read(self, name: str) -> Any:
        if name not in self.cache:
            path = self.run.dir / self.rel(name)
            if not path.is_file():
                raise Missing(f"{self.rel(name)} was not written by this run")
            self.cache[name] = storage.read_json(path) if path.suffix == ".json" else storage.read_parquet(path)
        return self.cache[name]


def _dated(frame: pd.DataFrame) -> pd.DataFrame:
    out = frame.copy()
    out.index = utc_naive(out.index)
    return out


@dataclass
class Streams:
    """Out-of-sample daily returns: the book's stream(s) first, then the benchmarks (columns)."""

    returns: pd.DataFrame
    book: str
    market: str | None
    equal: str | None
    annualization: int
    costs: pd.DataFrame  # stream x {turnover_annual, cost_drag} where known

    def kpis(self) -> pd.DataFrame:
        """`metrics.performance_metrics` of each stream with its turnover per year and cost drag."""
        table = metrics_table(self.returns, self.annualization)
        return table.join(self.costs.reindex(table.index))


def primary_profile(run: Run, columns: list[str]) -> str:
    """The risk profile a sleeve's report charts: the parent meta's `meta.allocation.risk_profile` for a
    sleeve of a meta, else the first of `optimizer.profiles` that has a stream."""
    wanted = [value(p) for p in run.profile.optimizer.profiles]
    parent = run.dir.parent.parent
    if run.options.parent_run and (parent / MANIFEST).is_file():
        try:
            wanted.insert(0, value(Run.at(parent).profile.meta.allocation.risk_profile))
        except (WorkbookError, AttributeError, ValueError):
            pass
    return next((p for p in wanted if p in columns), columns[0])


def sleeve_streams(src: Source) -> Streams:
    """A sleeve's walk-forward streams (every risk profile) and its two benchmarks."""
    returns = _dated(src.read("wf_returns"))
    bench = _dated(src.read("wf_benchmarks"))
    market = f"market: {src.run.profile.sleeve.benchmark} buy & hold"
    equal = "equal-weight universe"
    book = primary_profile(src.run, [str(c) for c in returns.columns])
    ordered = [book] + [c for c in returns.columns if c != book]
    frame = pd.concat([returns[ordered], bench.rename(columns={"market_benchmark": market,
                                                               "universe_equal_weight": equal})], axis=1)
    costs = pd.DataFrame(columns=["turnover_annual", "cost_drag"], dtype=float)
    if src.has("wf_metrics"):
        recorded = src.read("wf_metrics")
        costs = recorded.reindex(columns=["turnover_annual", "cost_drag"]).rename(
            index={"market_benchmark": market, "universe_equal_weight": equal})
    return Streams(frame, book, market if market in frame else None, equal if equal in frame else None,
                   ANNUALIZATION[src.run.profile.sleeve.asset_class], costs)  # the backtest's periods a year


def meta_sleeves(src: Source) -> list[SleeveRef]:
    """The meta's sleeves, each found under `sleeves/<id>/` of this run where it is there (so a moved runs
    folder still reads its own copies), else where the sleeves stage recorded it (a pinned run)."""
    refs = []
    for ref in sleeve_refs(src.read("sleeves")):
        here = src.run.dir / "sleeves" / ref.id
        refs.append(SleeveRef(ref.id, here if (here / MANIFEST).is_file() else ref.run_dir, ref.kind))
    return refs


def meta_streams(src: Source) -> Streams:
    """The meta's walk-forward stream, the equal-weight sleeves and the sleeves' market blend."""
    oos = _dated(src.read("meta_returns"))["meta"].dropna()
    sleeves = _dated(src.read("sleeve_returns"))
    frame = pd.DataFrame({"meta": oos})
    equal = "equal-weight sleeves"
    frame[equal] = equal_weight(sleeves).reindex(frame.index)
    market = "market blend (sleeves' benchmarks)"
    markets = {}
    for ref in meta_sleeves(src):
        if ref.kind != "sleeve" or ref.run_dir is None:  # a nested meta has no market benchmark; no run, no file
            continue
        bench = Path(ref.run_dir) / registry.path("sleeve", "wf_benchmarks")
        if bench.is_file():
            markets[ref.id] = storage.read_parquet(bench)["market_benchmark"]
    if markets:
        joined, _ = aggregate_streams(markets)
        frame[market] = joined.mean(axis=1).reindex(frame.index)
    ann = int(src.read("aggregation").get("annualization") or infer_annualization(sleeves.index))
    turnover = turnover_series(src.read("meta_weights_history"))
    years = len(oos) / ann
    costs = pd.DataFrame({"turnover_annual": [float(turnover.sum() / years) if years else float("nan")],
                          "cost_drag": [float("nan")]}, index=["meta"])
    return Streams(frame, "meta", market if markets else None, equal, ann, costs)


def signed_holdings(holdings: pd.DataFrame, profile: str) -> pd.DataFrame:
    """A sleeve's walk-forward holdings of one risk profile with the physical sign (SHORT negative)."""
    rows = holdings[holdings["profile"].astype(str) == profile].copy()
    rows["net"] = rows["weight"].astype(float) * rows["direction"].astype(str).map({"LONG": 1.0, "SHORT": -1.0})
    return rows


def exposure_by_decision(holdings: pd.DataFrame, profile: str, asset_class: str) -> pd.DataFrame:
    """decision date x "asset class · venue · LONG/SHORT": the summed net weights held from each rebalance."""
    rows = signed_holdings(holdings, profile)
    venue = rows["symbol"].astype(str).str.split(":").str[0]
    side = rows["net"].ge(0).map({True: "long", False: "short"})
    rows["group"] = asset_class + " · " + venue + " · " + side
    table = rows.pivot_table(index="decision", columns="group", values="net", aggfunc="sum").fillna(0.0)
    table.index = utc_naive(table.index)
    return table


def with_totals(exposure: pd.DataFrame) -> pd.DataFrame:
    """Exposure groups plus the book's `net` (sum) and `gross` (sum of |group|) columns."""
    return exposure.assign(net=exposure.sum(axis=1), gross=exposure.abs().sum(axis=1))


def meta_exposure(src: Source, dates: pd.DatetimeIndex) -> pd.DataFrame:
    """The meta's exposure on each of `dates`: Σ over sleeves of the meta weight held x the sleeve's exposure
    held (its latest rebalance on or before the date)."""
    risk_profile = value(src.run.profile.meta.allocation.risk_profile)
    held = held_weights(_dated(src.read("meta_weights_history")), dates)
    total = pd.DataFrame(index=dates, dtype=float)
    for ref in meta_sleeves(src):
        if ref.kind != "sleeve" or ref.run_dir is None or ref.id not in held:
            continue
        path = Path(ref.run_dir) / registry.path("sleeve", "wf_holdings")
        if not path.is_file():
            continue
        cls = Run.at(ref.run_dir).profile.sleeve.asset_class
        exposure = exposure_by_decision(storage.read_parquet(path), risk_profile, cls)
        asof = held_weights(exposure, dates).fillna(0.0)
        total = total.add(asof.mul(held[ref.id], axis=0), fill_value=0.0)
    if total.empty:
        raise Missing("no sleeve of this meta recorded walk-forward holdings (backtest/holdings.parquet)")
    return total.fillna(0.0)
