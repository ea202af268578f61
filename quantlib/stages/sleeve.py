"""Phase 2 stage functions: one sleeve's book (SPEC §2.1-2.7). The sleeve notebooks are thin wrappers.

aggregate -> select -> synthesize -> pre_opt -> optimize -> report -> validate (optional) ->
post_analysis (optional). Only `aggregate` reads the shared lakehouse and the data run: it copies
what the sleeve needs into the run -- the base universe's returns and the point-in-time screener
history its scanners are evaluated on -- and records the hashes of what it read; every later stage
reads the run's own artifacts. The production universe is the walk-forward's universe at t = now.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from quantlib.core import storage
from quantlib.core.errors import DataError, GateError
from quantlib.data.features import load_panel
from quantlib.sleeve.health import assess, close_to_returns
from quantlib.data.lakehouse import Lakehouse
from quantlib.core.profiles import ANNUALIZATION, Profile
from quantlib.core.runs import Run, list_runs, utc_now
from quantlib.data.scanners import Scanner, load_scanner
from quantlib.engine.context import StageContext
from quantlib.sleeve.synthesis import check_directions
from quantlib.sleeve.universe import (base_universe, candidates_at, check_point_in_time, funnel_text, require_symbols_table,
                       screener_history)
from quantlib.sleeve.window import (analyze_window, optimize_window, select_window, selection_params, training_window,
                                   window_caps)

CANDIDATE_FIELDS = ["symbol", "direction", "logic", "scanner", "value_traded", "recommend_all", "recommend_ma"]


class HealthError(GateError):
    """Strict health left too few assets, or the benchmark is missing/unhealthy."""


def annualization(asset_class: str) -> int:
    return ANNUALIZATION[asset_class]


# ----------------------------------------------------------------------------------------------
# 1. aggregate
# ----------------------------------------------------------------------------------------------
def locate_data_run(runs_root: Path, scanners: list[str], pinned: str | None) -> Run:
    """The pinned data run, or the newest PASS data run that exported every one of `scanners`."""
    def has_exports(run: Run) -> bool:
        return all((run.dir / "export" / f"{s}.json").exists() for s in scanners)

    if pinned:
        run = Run.open(runs_root, pinned)
        if run.manifest.get("phase") != "data" or run.manifest.get("status") != "PASS":
            raise DataError(f"aggregate: pinned data run {pinned} (sleeve.data_run_id) is not a passed data run; "
                            f"run `python run_book.py data` and pin its id")
        if not has_exports(run):
            raise DataError(f"aggregate: data run {pinned} has no candidate list for {scanners} "
                            f"(sleeve.scanners); run the data phase with those scanners")
        return run
    for row in list_runs(runs_root):
        if row["phase"] == "data" and row["status"] == "PASS":
            run = Run.open(runs_root, row["run_id"])
            if has_exports(run):
                return run
    raise DataError(f"aggregate: no passed data run under {runs_root} exports {scanners} (sleeve.scanners); "
                    f"run `python run_book.py data` first")


def read_candidates(data_run: Run, scanners: list[str]) -> pd.DataFrame:
    """Union of the data run's candidate lists (today's scan), one row per (symbol, logic, direction).

    Recorded beside the sleeve's own point-in-time universe for comparison; never its universe, so an
    empty list is no error here (the sleeve's own universe decides)."""
    frames = [pd.DataFrame(columns=CANDIDATE_FIELDS)]
    for scanner in scanners:
        doc = storage.read_json(data_run.dir / "export" / f"{scanner}.json")
        rows = pd.DataFrame(doc.get("candidates", []))
        if not rows.empty:
            frames.append(rows.assign(scanner=scanner).reindex(columns=CANDIDATE_FIELDS))
    out = pd.concat(frames, ignore_index=True).drop_duplicates(["symbol", "logic", "direction"])
    out["direction"] = check_directions(out["direction"], f"data run {data_run.id} export")
    return out.reset_index(drop=True)


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


def scanners_of(ctx: StageContext) -> list[Scanner]:
    """The sleeve's scanner definitions as resolved by its aggregate stage (recorded in universe.json)."""
    doc = storage.read_json(ctx.require("artifacts/universe.json"))
    return [Scanner.model_validate(s) for s in doc["scanners"]]


def aggregate(ctx: StageContext) -> dict:
    """The point-in-time inputs copied into the run (returns, screener history, benchmark) and the
    production universe: the sleeve's scanners evaluated at its last bar, strict health on the
    last `lookback_days` bars."""
    cfg, data = ctx.profile.sleeve, ctx.profile.data
    runs_root = Path(ctx.run.manifest.get("runs_root") or ctx.run.dir.parent)
    data_run = locate_data_run(runs_root, cfg.scanners, cfg.data_run_id)
    scanners = [load_scanner(name) for name in cfg.scanners]
    lake = ctx.lake
    inputs = load_sleeve_inputs(lake, ctx.profile, scanners)
    returns, now = inputs.returns, inputs.returns.index[-1]
    bench = assess(inputs.close, [cfg.benchmark], lookback_days=cfg.lookback_days,
                   min_history_days=cfg.min_history_days, toxic_return=data.toxic_return)
    bench_row = bench.health.iloc[0]
    if bench_row["status"] != "OK":
        raise HealthError(f"aggregate: benchmark {cfg.benchmark} (sleeve.benchmark) is {bench_row['status']} "
                          f"({bench_row['detail'] or 'no bars'}); ingest it (data.anchors) or choose another benchmark")
    candidates, funnel = candidates_at(returns, inputs.screener, scanners, [now], window=len(returns),
                                       min_history_days=cfg.min_history_days, toxic_return=data.toxic_return)
    counts = {k: int(v) for k, v in candidates["health"].value_counts().items()}
    healthy = int(candidates["health"].eq("OK").sum())
    if healthy < cfg.min_assets_after_health:
        raise HealthError(f"aggregate: strict health left {healthy} asset(s) of the universe at {now.date()} < "
                          f"sleeve.min_assets_after_health={cfg.min_assets_after_health} (status counts {counts}; "
                          f"funnel: {funnel_text(funnel, now)}); widen the scanners or refresh the data run")

    storage.write_parquet(ctx.path("artifacts/returns.parquet"), returns)
    storage.write_parquet(ctx.path("artifacts/benchmark.parquet"), benchmark_returns(inputs, ctx.profile).to_frame())
    storage.write_parquet(ctx.path("artifacts/screener.parquet"), inputs.screener)
    storage.write_parquet(ctx.path("artifacts/candidates.parquet"), candidates)
    storage.write_parquet(ctx.path("artifacts/funnel.parquet"), funnel)
    health = candidates.drop_duplicates("symbol")[["symbol", "scanner", "health", "health_returns", "last_bar",
                                                   "health_detail"]]
    health = health.rename(columns={"health": "status", "health_returns": "returns", "health_detail": "detail"})
    doc = {"run_id": ctx.run.id, "generated_at": utc_now(), "data_run": data_run.id,
           "window": [returns.index[0], now], "benchmark": cfg.benchmark, "counts": counts, "healthy": healthy,
           "symbols": health.to_dict(orient="records")}
    storage.write_json(ctx.path("artifacts/health.json"), doc)
    today = read_candidates(data_run, cfg.scanners)
    universe = {"run_id": ctx.run.id, "as_of": now, "base_universe": {
                    "source": f"lakehouse/{lake.symbols_path.name} (every symbol ever ingested) with stored "
                              f"{data.timeframe} bars, static filters of the scanners",
                    "count": len(inputs.base), "symbols": inputs.base},
                "scanners": [s.model_dump() for s in scanners],
                "production": {"count": len(candidates), "healthy": healthy},
                "data_run_export": {"data_run": data_run.id, "count": len(today),
                                    "not_in_point_in_time": sorted(set(today["symbol"]) - set(candidates["symbol"])),
                                    "only_in_point_in_time": sorted(set(candidates["symbol"]) - set(today["symbol"]))}}
    storage.write_json(ctx.path("artifacts/universe.json"), universe)
    read = {f"lakehouse/{p.relative_to(lake.root)}": storage.sha256_file(p) for p in inputs.files}
    read.update({f"{data_run.id}/export/{s}.json": storage.sha256_file(data_run.dir / "export" / f"{s}.json")
                 for s in cfg.scanners})
    storage.write_json(ctx.path("artifacts/data_inputs.json"), {"data_run": data_run.id, "files": read})
    return {**doc, "universe": universe, "funnel": funnel}


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


# ----------------------------------------------------------------------------------------------
# 2. select
# ----------------------------------------------------------------------------------------------
def select(ctx: StageContext):
    """HTR selection on the training window of the production universe (ratings at its last bar)."""
    returns = storage.read_parquet(ctx.require("artifacts/returns.parquet"))
    candidates = storage.read_parquet(ctx.require("artifacts/candidates.parquet"))
    train = training_window(returns, ctx.profile.sleeve.train_days)
    result = select_window(train, candidates, ctx.profile.sleeve.asset_class, selection_params(ctx.profile))
    result.audit.update(run_id=ctx.run.id, train_start=train.index[0], train_end=train.index[-1])
    storage.write_parquet(ctx.path("artifacts/selection.parquet"), result.selection)
    storage.write_json(ctx.path("artifacts/selection_audit.json"), result.audit)
    return result


# ----------------------------------------------------------------------------------------------
# 3. synthesize
# ----------------------------------------------------------------------------------------------
def synthesize(ctx: StageContext) -> dict:
    """Atoms, synthetic returns on the training window, pre-opt sign test (gate when atomic flag on)."""
    from quantlib.sleeve import signtest
    from quantlib.sleeve.synthesis import build_atoms, synthetic_returns

    returns = storage.read_parquet(ctx.require("artifacts/returns.parquet"))
    selection = storage.read_parquet(ctx.require("artifacts/selection.parquet"))
    train = training_window(returns, ctx.profile.sleeve.train_days)
    atoms = build_atoms(selection)
    synthetic = synthetic_returns(train, atoms)
    result = signtest.pre_opt(atoms, train, synthetic, selection)
    storage.write_parquet(ctx.path("artifacts/atoms.parquet"), atoms)
    storage.write_parquet(ctx.path("artifacts/synthetic_returns.parquet"), synthetic)
    storage.write_json(ctx.path("artifacts/sign_test_pre_opt.json"), result)
    signtest.enforce(result, ctx.profile.features.directional_sign_test_gate_atomic, "synthesize")
    return result


# ----------------------------------------------------------------------------------------------
# 4. pre-optimization analysis
# ----------------------------------------------------------------------------------------------
def pre_opt(ctx: StageContext) -> dict:
    """Clusters, antifragility, regime and the regime cluster cap, on the training window only."""
    from quantlib.sleeve.analysis import antifragility

    synthetic = storage.read_parquet(ctx.require("artifacts/synthetic_returns.parquet"))
    clusters, state = analyze_window(synthetic, ctx.profile)
    stats = antifragility(synthetic, annualization(ctx.profile.sleeve.asset_class))
    storage.write_json(ctx.path("artifacts/clusters.json"), clusters)
    storage.write_parquet(ctx.path("artifacts/antifragility.parquet"), stats.rename_axis("atom_id"))
    storage.write_json(ctx.path("artifacts/regime.json"), state)
    return {"clusters": clusters, "antifragility": stats, "regime": state}


# ----------------------------------------------------------------------------------------------
# 5. optimize
# ----------------------------------------------------------------------------------------------
def optimize(ctx: StageContext) -> dict:
    """Every risk profile with the profile's engine, Stable Sum Gate, flattening, post-opt sign test."""
    from quantlib.sleeve import signtest
    from quantlib.sleeve.synthesis import flatten

    synthetic = storage.read_parquet(ctx.require("artifacts/synthetic_returns.parquet"))
    atoms = storage.read_parquet(ctx.require("artifacts/atoms.parquet"))
    clusters = storage.read_json(ctx.require("artifacts/clusters.json"))
    state = storage.read_json(ctx.require("artifacts/regime.json"))
    opt = ctx.profile.optimizer
    weights, infos = optimize_window(synthetic, clusters, state, ctx.profile)
    atom_cap, cluster_cap = window_caps(clusters, state, ctx.profile)
    flat = flatten(weights, atoms)
    result = signtest.post_opt(atoms, weights, flat)
    storage.write_parquet(ctx.path("artifacts/weights.parquet"), weights)
    storage.write_parquet(ctx.path("artifacts/flattened.parquet"), flat)
    storage.write_json(ctx.path("artifacts/sign_test.json"), result)
    storage.write_json(ctx.path("artifacts/optimization.json"),
                       {"engine": opt.engine, "linkage": opt.linkage, "cluster_cap": cluster_cap,
                        "atom_cap": atom_cap, "profiles": infos})
    signtest.enforce(result, ctx.profile.features.directional_sign_test_gate_atomic, "optimize")
    return {"weights": weights, "flattened": flat, "sign_test": result, "info": infos}


# ----------------------------------------------------------------------------------------------
# 6. report and the atomic audit gate
# ----------------------------------------------------------------------------------------------
@dataclass
class SleeveReport:
    stats: pd.DataFrame            # in-sample metrics per risk profile
    portfolio: pd.DataFrame        # in-sample returns per risk profile
    tables: dict[str, dict]        # per profile: weights, clusters
    figures: dict[str, list]       # per profile: plotly figures
    audit: dict


def report(ctx: StageContext) -> SleeveReport:
    """Tearsheet per risk profile, weight files, then the audit gate (its failure fails the run)."""
    from quantlib.sleeve import tearsheet as ts
    from quantlib.sleeve.audit import audit_sleeve
    from quantlib.engine.executor import stages
    from quantlib.core.figures import write_figures_html

    art = lambda rel: storage.read_parquet(ctx.require(f"artifacts/{rel}"))  # noqa: E731
    synthetic, weights, atoms, flat = art("synthetic_returns.parquet"), art("weights.parquet"), art("atoms.parquet"), \
        art("flattened.parquet")
    benchmark = art("benchmark.parquet")["benchmark"]
    portfolio = ts.portfolio_returns(synthetic, weights)
    stats = ts.in_sample_table(portfolio, annualization(ctx.profile.sleeve.asset_class))
    tables, figures = {}, {}
    for profile in ctx.profile.optimizer.profiles:
        tables[profile] = t = ts.profile_tables(profile, synthetic, weights, atoms)
        figures[profile] = [ts.weights_figure(t["weights"], profile), ts.clusters_figure(t["clusters"], profile),
                            ts.risk_figure(t["weights"], profile),
                            ts.equity_figure(portfolio[[profile]], benchmark, f"{profile}: in-sample equity and drawdown")]
        write_figures_html(figures[profile], ctx.path(f"reports/tearsheet_{profile}.html"),
                           f"{ctx.profile.name} · {profile} · run {ctx.run.id} (in-sample)")
    storage.write_text(ctx.path("artifacts/weights.csv"), weights.to_csv(index=False))  # for spreadsheets
    storage.write_text(ctx.path("artifacts/flattened.csv"), flat.to_csv(index=False))
    names = [s.name for s in stages("sleeve")]
    earlier = names[:names.index("report")]
    audit = audit_sleeve(ctx.run, earlier)
    storage.write_json(ctx.path("artifacts/audit.json"), audit)
    window = (synthetic.index[0].date(), synthetic.index[-1].date())
    storage.write_text(ctx.path("reports/tearsheet.md"),
                       ts.markdown_summary(ctx.run.id, ctx.profile.name, stats, flat, audit, window))
    if not audit["passed"]:
        failed = [c for c in audit["checks"] if c["required"] and not c["passed"]]
        raise GateError(f"report: audit gate failed ({', '.join(c['code'] for c in failed)}): {failed[0]['detail']}; "
                        f"see {ctx.run.path('artifacts/audit.json')}")
    return SleeveReport(stats, portfolio, tables, figures, audit)


# ----------------------------------------------------------------------------------------------
# 7. validation backtest (optional) and 8. post-analysis (optional)
# ----------------------------------------------------------------------------------------------
def validate(ctx: StageContext, progress: bool = True):
    """Walk-forward validation on the run's own artifacts; writes backtest/*; parity gates the stage."""
    from quantlib.backtest import walkforward as backtest

    art = lambda rel: storage.read_parquet(ctx.require(f"artifacts/{rel}"))  # noqa: E731
    bar = None
    if progress:
        import sys

        from tqdm import tqdm  # the text bar: a widget bar would be saved as "0%" in the executed notebook

        bar = lambda it: tqdm(it, desc="walk-forward windows", unit="window", file=sys.stdout,  # noqa: E731
                              mininterval=1.0)
    wf = backtest.run(art("returns.parquet"), art("screener.parquet"), scanners_of(ctx),
                      art("benchmark.parquet")["benchmark"], ctx.profile, progress=bar)
    for name, frame in (("returns", wf.returns), ("benchmarks", wf.benchmarks), ("turnover", wf.turnover),
                        ("costs", wf.costs)):
        storage.write_parquet(ctx.path(f"backtest/{name}.parquet"), frame.rename_axis("date"))
    storage.write_parquet(ctx.path("backtest/metrics.parquet"), wf.metrics.rename_axis("name"))
    for name in ("windows", "universe", "funnel", "holdings", "events"):
        storage.write_parquet(ctx.path(f"backtest/{name}.parquet"), getattr(wf, name))
    storage.write_json(ctx.path("backtest/parity.json"), {"run_id": ctx.run.id, **wf.parity})
    if wf.parity["passed"] is False:
        worst = max(wf.parity["profiles"].items(), key=lambda kv: kv[1]["final_rel_diff"])
        raise backtest.BacktestError(f"validate: reference and vectorbt simulators disagree on {worst[0]} "
                                     f"(final equity rel. diff {worst[1]['final_rel_diff']:.2e} > "
                                     f"backtest.parity_tolerance={wf.parity['tolerance']})")
    return wf


def post_analysis(ctx: StageContext) -> dict:
    """Cluster map, factor map and drift monitors (plotly, also standalone HTML under plots/)."""
    from quantlib.sleeve import postanalysis as pa

    synthetic = storage.read_parquet(ctx.require("artifacts/synthetic_returns.parquet"))
    weights = storage.read_parquet(ctx.require("artifacts/weights.parquet"))
    labels = pd.Series(storage.read_json(ctx.require("artifacts/clusters.json"))["labels"])
    history = _rebalance_history(ctx, weights)
    main = ctx.profile.optimizer.profiles[0]
    figures = {"cluster_map": pa.cluster_map(synthetic, ctx.profile.selection.threshold, ctx.profile.selection.max_clusters),
               "factor_map": pa.factor_map(synthetic, labels, weights[weights["profile"] == main].set_index("atom_id")["weight"])}
    for profile in ctx.profile.optimizer.profiles:
        figures[f"drift_{profile}"] = pa.drift_monitor(history, profile)
        figures[f"clusters_{profile}"] = pa.cluster_composition(history, profile)
    drift = pa.drift_table(history)
    storage.write_parquet(ctx.path("artifacts/drift.parquet"), drift)
    paths = pa.write_plots(figures, ctx.path("plots/x").parent)
    return {"figures": figures, "drift": drift, "paths": paths, "history": history}


def _rebalance_history(ctx: StageContext, weights: pd.DataFrame) -> pd.DataFrame:
    """Weights across rebalances: the validation backtest's if it ran, plus the production weights."""
    synthetic_end = storage.read_parquet(ctx.require("artifacts/synthetic_returns.parquet")).index[-1]
    production = weights.assign(rebalance=synthetic_end)[["rebalance", "profile", "atom_id", "weight", "cluster"]]
    held = ctx.run.path("backtest/holdings.parquet")
    if not held.exists():
        return production
    past = storage.read_parquet(held).rename(columns={"decision": "rebalance"})
    past = past[past["rebalance"] < synthetic_end][["rebalance", "profile", "atom_id", "weight", "cluster"]]
    return pd.concat([past, production], ignore_index=True)
