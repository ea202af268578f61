"""Phase 1 stage functions: each does one stage's work for a `StageContext` and writes its outputs.

The data notebooks are thin wrappers over these, so everything here is reachable from tests.
Order: universe (static market filters) -> ingest -> metadata -> features -> scan -> backfill. Technical
fields need history, so the flow first ingests the base universe: every market passing the scanners'
static filters (exchange, base, quote, type), illiquid and delisted ones included, so that sleeves can
evaluate the time-varying filters point-in-time.
Every stage that uses stored bars (features, scan, backfill) skips flagged symbols and reports and
skips unreadable OHLCV files, so one corrupt file never stops the run; a corrupt anchor does.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from quantlib.core.errors import DataError, GateError
from quantlib.data.features import backfill, compute_panel_ratings, load_panel, snapshot
from quantlib.data.ingest import ingest
from quantlib.core.runs import utc_now
from quantlib.data.scanners import candidate_document, run_scanners, screener_table
from quantlib.data.sources.base import MARKET_COLUMNS
from quantlib.engine.context import StageContext


@dataclass
class ScanResult:
    documents: dict[str, dict]
    funnel: pd.DataFrame  # scanner, step, filter, remaining
    unreadable: dict[str, str] = field(default_factory=dict)  # symbol -> why its OHLCV file was skipped


@dataclass
class TechnicalsResult:
    snapshot: pd.DataFrame  # one row per rated symbol (features.SNAPSHOT_COLUMNS)
    unreadable: dict[str, str]  # symbol -> why its OHLCV file was skipped


def _funnel_table(results: dict[str, tuple[pd.DataFrame, list[dict]]]) -> pd.DataFrame:
    rows = [{"scanner": name, "step": i, **step} for name, (_, funnel) in results.items()
            for i, step in enumerate(funnel)]
    return pd.DataFrame(rows, columns=["scanner", "step", "filter", "remaining"])


def discover_universe(ctx: StageContext) -> ScanResult:
    """Fetch markets and tickers once, run every scanner's static market filters, union the symbols."""
    cfg = ctx.profile.data
    source = ctx.source()
    markets, tickers = source.markets(), source.tickers()
    if markets.empty:
        raise GateError(f"universe: source {source.name} lists no markets; check profile key source")
    ctx.write("markets", markets)
    ctx.write("tickers", tickers)
    scanners = ctx.scanners(cfg.scanners)
    results = run_scanners(scanners, screener_table(markets, tickers), market_only=True)
    symbols = sorted({s for rows, _ in results.values() for s in rows["symbol"]} | set(cfg.anchors))
    doc = {"run_id": ctx.run.id, "generated_at": utc_now(), "source": source.name,
           "as_of": source.now().isoformat(), "anchors": cfg.anchors, "count": len(symbols), "symbols": symbols,
           "scanners": {name: {"count": len(rows), "funnel": funnel} for name, (rows, funnel) in results.items()}}
    ctx.write("universe", doc)
    return ScanResult({"universe": doc}, _funnel_table(results))


def ingest_universe(ctx: StageContext, progress: bool = True) -> pd.DataFrame:
    """Ingest every universe symbol; write the per-symbol report."""
    universe = ctx.read("universe")
    cfg = ctx.profile.data
    report = ingest(ctx.source(), ctx.lake, universe["symbols"], cfg, anchors=cfg.anchors, progress=progress)
    ctx.write("ingest_report", report)
    return report


def refresh_metadata(ctx: StageContext) -> dict:
    """Merge the run's market snapshot into `symbols.parquet`, keeping every market ever seen.

    Fields of listed markets: last value wins. A market that turns inactive or leaves the source's
    list keeps its row with `active = False` and `inactive_since` (see `Lakehouse.upsert_symbols`).
    Times are the source's clock, so point-in-time universes can compare them with bar timestamps.
    """
    markets = ctx.read("markets")
    lake = ctx.lake
    changes = lake.upsert_symbols(markets, observed=ctx.source().now())
    table = lake.read_symbols()
    missing = {col: sorted(markets.loc[markets[col].isna(), "symbol"]) for col in MARKET_COLUMNS
               if markets[col].isna().any()}
    report = {"run_id": ctx.run.id, "symbols_in_run": len(markets), "symbols_in_lakehouse": len(table),
              "active_in_lakehouse": int(table["active"].sum()), **changes,
              "missing_fields": missing,
              "missing_tick_or_lot": sorted(set(missing.get("tick_size", [])) | set(missing.get("lot_size", [])))}
    ctx.write("metadata_report", report)
    return report


def _usable_symbols(ctx: StageContext, symbols: list[str]) -> tuple[list[str], dict[str, str]]:
    """(symbols with readable stored bars that no flag excludes, {unreadable symbol: reason}).

    A corrupt or malformed file of a required anchor raises DataError: the run cannot go on without it.
    """
    lake, cfg = ctx.lake, ctx.profile.data
    excluded = lake.excluded_symbols()
    stored = [s for s in symbols if s not in excluded and lake.ohlcv_path(s, cfg.timeframe).exists()]
    unreadable = lake.unreadable_ohlcv(stored, cfg.timeframe)
    broken = [a for a in cfg.anchors if a in unreadable]
    if broken:
        raise DataError(f"{ctx.stage.name}: required anchor {broken[0]} cannot be read: {unreadable[broken[0]]}")
    return [s for s in stored if s not in unreadable], unreadable


def technicals(ctx: StageContext) -> TechnicalsResult:
    """Ratings snapshot of the universe's usable symbols; upserted into `lakehouse/technicals.parquet`."""
    universe = ctx.read("universe")
    symbols, unreadable = _usable_symbols(ctx, universe["symbols"])
    if not symbols:
        raise DataError("features: no universe symbol has stored bars; run the ingest stage first")
    panel = load_panel(ctx.lake, symbols, ctx.profile.data.timeframe)
    snap = snapshot(panel, compute_panel_ratings(panel))
    ctx.write("technicals", snap)
    lake = ctx.lake
    merged = snap
    if lake.technicals_path.exists():
        old = lake.read_table(lake.technicals_path)
        merged = pd.concat([old[~old["symbol"].isin(snap["symbol"])], snap], ignore_index=True)
    lake.write_table(lake.technicals_path, merged.sort_values("symbol", ignore_index=True))
    return TechnicalsResult(snap, unreadable)


def full_scan(ctx: StageContext) -> ScanResult:
    """Every scanner on the screener table (markets + tickers + technicals), excluded symbols removed."""
    markets = ctx.read("markets")
    tickers = ctx.read("tickers")
    techs = ctx.read("technicals")
    excluded = ctx.lake.excluded_symbols()
    table = screener_table(markets, tickers, techs)
    _, unreadable = _usable_symbols(ctx, list(table["symbol"]))
    table = table[~table["symbol"].isin(excluded | set(unreadable))]
    scanners = ctx.scanners(ctx.profile.data.scanners)
    results = run_scanners(scanners, table)
    now = utc_now()
    docs = {}
    for scanner in scanners:
        rows, funnel = results[scanner.name]
        docs[scanner.name] = candidate_document(scanner, rows, funnel, ctx.run.id, now)
        ctx.write("export", docs[scanner.name], scanner=scanner.name)
    summary = {"run_id": ctx.run.id, "generated_at": now, "excluded_symbols": sorted(excluded),
               "unreadable_files": unreadable, "counts": {name: doc["count"] for name, doc in docs.items()}}
    ctx.write("scan_summary", summary)
    return ScanResult(docs, _funnel_table(results), unreadable)


def backfill_matrix(ctx: StageContext) -> dict:
    """Point-in-time features for every usable stored symbol of the profile's timeframe."""
    cfg, lake = ctx.profile.data, ctx.lake
    removed = lake.remove_interrupted_writes(tables=[lake.features_path])
    symbols, unreadable = _usable_symbols(ctx, lake.stored_symbols(cfg.timeframe))
    report = backfill(lake, symbols, cfg.timeframe, cfg.backfill_chunk)
    report.update(run_id=ctx.run.id, unreadable_files=unreadable, removed_temp_files=[p.name for p in removed])
    ctx.write("backfill_report", report)
    return report
