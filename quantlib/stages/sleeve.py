"""Phase 2 stage functions: one sleeve's book (SPEC §2.1-2.7). The sleeve notebooks are thin wrappers.

aggregate -> select -> synthesize -> pre_opt -> optimize -> report -> validate (optional) ->
post_analysis (optional). Only `aggregate` reads the shared lakehouse and the data run: it copies
what the sleeve needs into the run -- the base universe's returns and the point-in-time screener
history its scanners are evaluated on -- and records the hashes of what it read; every later stage
reads the run's own artifacts (`ctx.read`, names from `quantlib.core.registry`). The production
universe is the walk-forward's universe at t = now.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import pandas as pd

from quantlib.backtest import walkforward
from quantlib.core import figures, registry, storage
from quantlib.core.gates import GateResult, enforce
from quantlib.core.profiles import ANNUALIZATION
from quantlib.core.progress import progress as progress_bar
from quantlib.core.runs import Run, utc_now
from quantlib.data.scanners import Scanner
from quantlib.engine.context import StageContext
from quantlib.stages.external import sleeve_data_run
from quantlib.sleeve import postanalysis, signtest, tearsheet
from quantlib.sleeve.analysis import antifragility
from quantlib.sleeve.audit import audit_sleeve
from quantlib.sleeve.health import assess
from quantlib.sleeve.inputs import HealthError, benchmark_returns, load_sleeve_inputs
from quantlib.sleeve.synthesis import build_atoms, check_directions, flatten as flatten_atoms, synthetic_returns
from quantlib.sleeve.universe import candidates_at, funnel_text
from quantlib.sleeve.window import (analyze_window, optimize_window, select_window, selection_params, training_window,
                                   window_caps)

CANDIDATE_FIELDS = ["symbol", "direction", "logic", "scanner", "value_traded", "recommend_all", "recommend_ma"]


def annualization(asset_class: str) -> int:
    return ANNUALIZATION[asset_class]


# ----------------------------------------------------------------------------------------------
# 1. aggregate
# ----------------------------------------------------------------------------------------------
def read_candidates(data_run: Run, scanners: list[str]) -> pd.DataFrame:
    """Union of the data run's candidate lists (today's scan), one row per (symbol, logic, direction).

    Recorded beside the sleeve's own point-in-time universe for comparison; never its universe, so an
    empty list is no error here (the sleeve's own universe decides)."""
    frames = [pd.DataFrame(columns=CANDIDATE_FIELDS)]
    for scanner in scanners:
        doc = storage.read_json(data_run.path(registry.path("data", "export", scanner=scanner)))
        rows = pd.DataFrame(doc.get("candidates", []))
        if not rows.empty:
            frames.append(rows.assign(scanner=scanner).reindex(columns=CANDIDATE_FIELDS))
    out = pd.concat(frames, ignore_index=True).drop_duplicates(["symbol", "logic", "direction"])
    out["direction"] = check_directions(out["direction"], f"data run {data_run.id} export")
    return out.reset_index(drop=True)


def scanners_of(ctx: StageContext) -> list[Scanner]:
    """The sleeve's scanner definitions as resolved by its aggregate stage (recorded in universe.json)."""
    return [Scanner.model_validate(s) for s in ctx.read("universe")["scanners"]]


def aggregate(ctx: StageContext) -> dict:
    """The point-in-time inputs copied into the run (returns, screener history, benchmark) and the
    production universe: the sleeve's scanners evaluated at its last bar, strict health on the
    last `lookback_days` bars."""
    cfg, data = ctx.profile.sleeve, ctx.profile.data
    data_run = sleeve_data_run(ctx)
    scanners = ctx.scanners(cfg.scanners)
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

    ctx.write("returns", returns)
    ctx.write("benchmark", benchmark_returns(inputs, ctx.profile).to_frame())
    ctx.write("screener", inputs.screener)
    ctx.write("candidates", candidates)
    ctx.write("funnel", funnel)
    health = candidates.drop_duplicates("symbol")[["symbol", "scanner", "health", "health_returns", "last_bar",
                                                   "health_detail"]]
    health = health.rename(columns={"health": "status", "health_returns": "returns", "health_detail": "detail"})
    doc = {"run_id": ctx.run.id, "generated_at": utc_now(), "data_run": data_run.id,
           "window": [returns.index[0], now], "benchmark": cfg.benchmark, "counts": counts, "healthy": healthy,
           "symbols": health.to_dict(orient="records")}
    ctx.write("health", doc)
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
    ctx.write("universe", universe)
    read = {f"lakehouse/{p.relative_to(lake.root)}": storage.sha256_file(p) for p in inputs.files}
    for s in cfg.scanners:
        export = registry.path("data", "export", scanner=s)
        read[f"{data_run.id}/{export}"] = storage.sha256_file(data_run.path(export))
    ctx.write("data_inputs", {"data_run": data_run.id, "files": read})
    return {**doc, "universe": universe, "funnel": funnel}


# ----------------------------------------------------------------------------------------------
# 2. select
# ----------------------------------------------------------------------------------------------
def select(ctx: StageContext):
    """HTR selection on the training window of the production universe (ratings at its last bar)."""
    train = training_window(ctx.read("returns"), ctx.profile.sleeve.train_days)
    result = select_window(train, ctx.read("candidates"), ctx.profile.sleeve.asset_class, selection_params(ctx.profile))
    result.audit.update(run_id=ctx.run.id, train_start=train.index[0], train_end=train.index[-1])
    ctx.write("selection", result.selection)
    ctx.write("selection_audit", result.audit)
    return result


# ----------------------------------------------------------------------------------------------
# 3. synthesize
# ----------------------------------------------------------------------------------------------
def synthesize(ctx: StageContext) -> dict:
    """Atoms, synthetic returns on the training window, pre-opt sign test (gate when atomic flag on)."""
    selection = ctx.read("selection")
    train = training_window(ctx.read("returns"), ctx.profile.sleeve.train_days)
    atoms = build_atoms(selection)
    synthetic = synthetic_returns(train, atoms)
    result = signtest.pre_opt(atoms, train, synthetic, selection)
    ctx.write("atoms", atoms)
    ctx.write("synthetic_returns", synthetic)
    ctx.write("sign_test_pre_opt", result.to_dict())
    signtest.enforce(result, ctx.profile.features.directional_sign_test_gate_atomic, "synthesize")
    return result


# ----------------------------------------------------------------------------------------------
# 4. pre-optimization analysis
# ----------------------------------------------------------------------------------------------
def pre_opt(ctx: StageContext) -> dict:
    """Clusters, antifragility, regime and the regime cluster cap, on the training window only."""
    synthetic = ctx.read("synthetic_returns")
    clusters, state = analyze_window(synthetic, ctx.profile)
    stats = antifragility(synthetic, annualization(ctx.profile.sleeve.asset_class))
    ctx.write("clusters", clusters)
    ctx.write("antifragility", stats.rename_axis("atom_id"))
    ctx.write("regime", state)
    return {"clusters": clusters, "antifragility": stats, "regime": state}


# ----------------------------------------------------------------------------------------------
# 5. optimize
# ----------------------------------------------------------------------------------------------
def optimize(ctx: StageContext) -> dict:
    """Every risk profile with the profile's engine, Stable Sum Gate, flattening, post-opt sign test."""
    atoms, state = ctx.read("atoms"), ctx.read("regime")
    opt = ctx.profile.optimizer
    clusters = ctx.read("clusters")
    weights, infos = optimize_window(ctx.read("synthetic_returns"), clusters, state, ctx.profile)
    atom_cap, cluster_cap = window_caps(clusters, state, ctx.profile)
    flat = flatten_atoms(weights, atoms)
    result = signtest.post_opt(atoms, weights, flat)
    ctx.write("weights", weights)
    ctx.write("flattened", flat)
    ctx.write("sign_test", result.to_dict())
    ctx.write("optimization",
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
    audit: GateResult


def report(ctx: StageContext) -> SleeveReport:
    """Tearsheet per risk profile, weight files, then the audit gate (its failure fails the run)."""
    synthetic, weights, atoms, flat = (ctx.read(n) for n in ("synthetic_returns", "weights", "atoms", "flattened"))
    benchmark = ctx.read("benchmark")["benchmark"]
    portfolio = tearsheet.portfolio_returns(synthetic, weights)
    stats = tearsheet.in_sample_table(portfolio, annualization(ctx.profile.sleeve.asset_class))
    tables, figs = {}, {}
    for profile in ctx.profile.optimizer.profiles:
        tables[profile] = t = tearsheet.profile_tables(profile, synthetic, weights, atoms)
        figs[profile] = [tearsheet.weights_figure(t["weights"], profile), tearsheet.clusters_figure(t["clusters"], profile),
                         tearsheet.risk_figure(t["weights"], profile),
                         tearsheet.equity_figure(portfolio[[profile]], benchmark,
                                                 f"{profile}: in-sample equity and drawdown")]
        figures.write_figures_html(figs[profile], ctx.path("tearsheet_html", profile=profile),
                                   f"{ctx.profile.name} · {profile} · run {ctx.run.id} (in-sample)")
    ctx.write("weights_csv", weights.to_csv(index=False))  # for spreadsheets
    ctx.write("flattened_csv", flat.to_csv(index=False))
    earlier = [s.name for s in registry.stages("sleeve")[:registry.find_stage("sleeve", "report")[0] - 1]]
    audit = audit_sleeve(ctx.run, earlier, returns=ctx.read("returns"), selection=ctx.read("selection"),
                         selection_audit=ctx.read("selection_audit"), weights=weights,
                         optimization=ctx.read("optimization"),
                         sign_test_pre=GateResult.from_dict(ctx.read("sign_test_pre_opt")),
                         sign_test_post=GateResult.from_dict(ctx.read("sign_test")))
    ctx.write("audit", audit.to_dict())
    window = (synthetic.index[0].date(), synthetic.index[-1].date())
    ctx.write("tearsheet", tearsheet.markdown_summary(ctx.run.id, ctx.profile.name, stats, flat, audit, window))
    enforce(audit, f"see {ctx.path('audit')}")
    return SleeveReport(stats, portfolio, tables, figs, audit)


# ----------------------------------------------------------------------------------------------
# 7. validation backtest (optional) and 8. post-analysis (optional)
# ----------------------------------------------------------------------------------------------
WALK_FORWARD_FRAMES = {"wf_returns": "returns", "wf_benchmarks": "benchmarks", "wf_turnover": "turnover",
                       "wf_costs": "costs"}
WALK_FORWARD_TABLES = {"wf_windows": "windows", "wf_universe": "universe", "wf_funnel": "funnel",
                       "wf_holdings": "holdings", "wf_events": "events", "wf_eligibility": "eligibility",
                       "wf_selection": "selection"}


def validate(ctx: StageContext, progress: bool = True):
    """Walk-forward validation on the run's own artifacts; writes backtest/*; parity gates the stage."""
    bar = (lambda it: progress_bar(it, "walk-forward windows", "window")) if progress else None  # noqa: E731
    wf = walkforward.run(ctx.read("returns"), ctx.read("screener"), scanners_of(ctx), ctx.read("benchmark")["benchmark"],
                         ctx.profile, progress=bar)
    for name, attribute in WALK_FORWARD_FRAMES.items():
        ctx.write(name, getattr(wf, attribute).rename_axis("date"))
    ctx.write("wf_metrics", wf.metrics.rename_axis("name"))
    for name, attribute in WALK_FORWARD_TABLES.items():
        ctx.write(name, getattr(wf, attribute))
    ctx.write("parity", GateResult(wf.parity.gate, wf.parity.checks, {"run_id": ctx.run.id, **wf.parity.info}).to_dict())
    if wf.parity.checked and not wf.parity.passed:
        raise walkforward.BacktestError(f"validate: reference and vectorbt simulators disagree: {wf.parity.summary()}")
    return wf


def post_analysis(ctx: StageContext) -> dict:
    """Cluster map, factor map and drift monitors (plotly, also standalone HTML under plots/)."""
    synthetic, weights = ctx.read("synthetic_returns"), ctx.read("weights")
    labels = pd.Series(ctx.read("clusters")["labels"])
    history = _rebalance_history(ctx, synthetic.index[-1], weights)
    main = ctx.profile.optimizer.profiles[0]
    selection = ctx.profile.selection
    plots = {"cluster_map": postanalysis.cluster_map(synthetic, selection.threshold, selection.max_clusters),
             "factor_map": postanalysis.factor_map(synthetic, labels,
                                                   weights[weights["profile"] == main].set_index("atom_id")["weight"])}
    paths = {name: figures.write_figure_html(fig, ctx.path(name)) for name, fig in plots.items()}
    drift = postanalysis.drift_table(history)
    charts = (("drift", "drift_plot", partial(postanalysis.drift_monitor, drift=drift)),
              ("clusters", "clusters_plot", postanalysis.cluster_composition))
    for profile in ctx.profile.optimizer.profiles:
        for key, name, chart in charts:
            plots[f"{key}_{profile}"] = fig = chart(history, profile)
            paths[f"{key}_{profile}"] = figures.write_figure_html(fig, ctx.path(name, profile=profile))
    ctx.write("drift", drift)
    return {"figures": plots, "drift": drift, "paths": paths, "history": history}


def _rebalance_history(ctx: StageContext, production_date: pd.Timestamp, weights: pd.DataFrame) -> pd.DataFrame:
    """Weights across rebalances: the validation backtest's if it ran, plus the production weights."""
    columns = ["rebalance", "profile", "atom_id", "weight", "cluster"]
    production = weights.assign(rebalance=production_date)[columns]
    if not ctx.exists("wf_holdings"):
        return production
    past = ctx.read("wf_holdings").rename(columns={"decision": "rebalance"})
    past = past[past["rebalance"] < production_date][columns]
    return pd.concat([past, production], ignore_index=True)
