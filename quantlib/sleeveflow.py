"""Phase 2 stage functions: one sleeve's book (SPEC §2.1-2.6). The sleeve notebooks are thin wrappers.

aggregate -> select -> synthesize -> pre_opt -> optimize -> report -> validate (optional) ->
post_analysis (optional). Only `aggregate` reads the shared
lakehouse and the data run: it copies what the sleeve needs into the run (and records the hashes of
what it read); every later stage reads the run's own artifacts.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from . import storage
from .errors import DataError, GateError
from .profiles import ANNUALIZATION, Profile
from .runs import Run, list_runs, utc_now
from .stage import StageContext

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
    """Union of the data run's candidate lists, one row per (symbol, logic, direction)."""
    frames = []
    for scanner in scanners:
        doc = storage.read_json(data_run.dir / "export" / f"{scanner}.json")
        rows = pd.DataFrame(doc.get("candidates", []))
        if rows.empty:
            continue
        rows["scanner"] = scanner
        frames.append(rows.reindex(columns=CANDIDATE_FIELDS))
    if not frames:
        raise DataError(f"aggregate: the candidate lists {scanners} of data run {data_run.id} are empty; "
                        f"check the scanner funnels in that run's scan notebook (or widen the scanners)")
    out = pd.concat(frames, ignore_index=True).drop_duplicates(["symbol", "logic", "direction"])
    from .synthesis import check_directions
    out["direction"] = check_directions(out["direction"], f"data run {data_run.id} export")
    return out.reset_index(drop=True)


def aggregate(ctx: StageContext) -> dict:
    """Candidates + strict-health returns matrix + point-in-time features, copied into the run."""
    from .features import load_panel
    from .health import assess

    cfg, data = ctx.profile.sleeve, ctx.profile.data
    runs_root = Path(ctx.run.manifest.get("runs_root") or ctx.run.dir.parent)
    data_run = locate_data_run(runs_root, cfg.scanners, cfg.data_run_id)
    candidates = read_candidates(data_run, cfg.scanners)
    lake = ctx.lake
    symbols = sorted(set(candidates["symbol"]))
    loaded = sorted(set(symbols) | {cfg.benchmark})
    panel = load_panel(lake, loaded, data.timeframe)
    close = panel["close"]
    toxic = lake.excluded_symbols()
    common = dict(lookback_days=cfg.lookback_days, min_history_days=cfg.min_history_days,
                  toxic_return=data.toxic_return, toxic=toxic)
    if close.empty:
        raise HealthError(f"aggregate: the lakehouse {lake.root} has no bars for the {len(symbols)} candidates; "
                          f"run `python run_book.py data` first")
    result = assess(close, symbols, **common)
    bench = assess(close, [cfg.benchmark], **common)
    bench_row = bench.health.iloc[0]
    if bench_row["status"] != "OK":
        raise HealthError(f"aggregate: benchmark {cfg.benchmark} (sleeve.benchmark) is {bench_row['status']} "
                          f"({bench_row['detail'] or 'no bars'}); ingest it (data.anchors) or choose another benchmark")
    counts = result.counts()
    if len(result.healthy) < cfg.min_assets_after_health:
        raise HealthError(f"aggregate: strict health left {len(result.healthy)} asset(s) < "
                          f"sleeve.min_assets_after_health={cfg.min_assets_after_health} (status counts {counts}); "
                          f"widen the scanners or refresh the data run")

    meta = _metadata(lake, symbols)
    health = result.health.set_index("symbol")
    candidates = candidates.merge(meta, on="symbol", how="left")
    candidates["health"] = candidates["symbol"].map(health["status"])
    candidates["toxic"] = candidates["health"].eq("TOXIC")
    features = _features_for(lake, result.healthy)

    storage.write_parquet(ctx.path("artifacts/returns.parquet"), result.returns)
    storage.write_parquet(ctx.path("artifacts/benchmark.parquet"),
                          bench.returns.rename(columns={cfg.benchmark: "benchmark"}))
    storage.write_parquet(ctx.path("artifacts/candidates.parquet"), candidates)
    storage.write_parquet(ctx.path("artifacts/features.parquet"), features)
    doc = {"run_id": ctx.run.id, "generated_at": utc_now(), "data_run": data_run.id,
           "data_run_dir": str(data_run.dir), "window": [result.window[0], result.window[1]],
           "benchmark": cfg.benchmark, "counts": counts, "healthy": len(result.healthy),
           "symbols": result.health.replace({np.nan: None}).to_dict(orient="records")}
    storage.write_json(ctx.path("artifacts/health.json"), doc)
    read = {f"lakehouse/{p.relative_to(lake.root)}": storage.sha256_file(p)
            for p in [lake.ohlcv_path(s, data.timeframe) for s in loaded]
            + [lake.symbols_path, lake.registry_path, lake.features_path] if p.exists()}
    read.update({f"{data_run.id}/export/{s}.json": storage.sha256_file(data_run.dir / "export" / f"{s}.json")
                 for s in cfg.scanners})
    storage.write_json(ctx.path("artifacts/data_inputs.json"), {"data_run": data_run.id, "files": read})
    return doc


def _metadata(lake, symbols: list[str]) -> pd.DataFrame:
    cols = ["symbol", "tick_size", "lot_size"]
    if not lake.symbols_path.exists():
        return pd.DataFrame({c: pd.Series(dtype=float if c != "symbol" else object) for c in cols})
    meta = lake.read_table(lake.symbols_path)
    return meta.loc[meta["symbol"].isin(symbols), cols].drop_duplicates("symbol", keep="last")


def _features_for(lake, symbols: list[str]) -> pd.DataFrame:
    """The features-matrix rows of `symbols` (every bar: the validation backtest needs history)."""
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
def features_asof(features: pd.DataFrame, when: pd.Timestamp) -> pd.DataFrame:
    """Per symbol, the features row with the last ts <= `when` (point-in-time)."""
    past = features[features["ts"] <= when]
    return past.sort_values("ts").groupby("symbol", sort=True).tail(1).set_index("symbol")


def training_window(returns: pd.DataFrame, train_days: int, end: pd.Timestamp | None = None) -> pd.DataFrame:
    """The last `train_days` rows of `returns` up to and including `end` (default: the last row)."""
    if end is not None:
        returns = returns.loc[returns.index <= end]
    return returns.iloc[-train_days:]


def selection_params(profile: Profile):
    from .selection import SelectionParams

    cfg = profile.selection.model_dump()
    cfg["lookbacks"] = tuple(cfg["lookbacks"])
    cfg["hurst_band"] = tuple(cfg["hurst_band"])
    return SelectionParams(**cfg)


def select(ctx: StageContext):
    """HTR selection on the training window with the ratings at the last training date."""
    returns = storage.read_parquet(ctx.require("artifacts/returns.parquet"))
    candidates = storage.read_parquet(ctx.require("artifacts/candidates.parquet"))
    features = storage.read_parquet(ctx.require("artifacts/features.parquet"))
    train = training_window(returns, ctx.profile.sleeve.train_days)
    result = select_window(train, candidates, features, ctx.profile.sleeve.asset_class, selection_params(ctx.profile))
    result.audit.update(run_id=ctx.run.id, train_start=train.index[0], train_end=train.index[-1])
    storage.write_parquet(ctx.path("artifacts/selection.parquet"), result.selection)
    storage.write_json(ctx.path("artifacts/selection_audit.json"), result.audit)
    return result


def select_window(train: pd.DataFrame, candidates: pd.DataFrame, features: pd.DataFrame, asset_class: str, params):
    """Selection for one training window: healthy candidates with a return on every day of the window
    (a later listing joins once it covers a whole window), point-in-time ratings at its last date."""
    from .selection import select as htr

    complete = train.columns[train.notna().all()]  # strict health on this window: no missing return
    pool = candidates[candidates["health"].eq("OK") | candidates["toxic"]].copy()
    pool = pool[pool["symbol"].isin(complete) | pool["toxic"]]
    pit = features_asof(features, train.index[-1])
    for col in ("recommend_all", "recommend_ma"):
        pool[col] = pool["symbol"].map(pit[col]) if not pit.empty else np.nan
    return htr(train[[c for c in complete if c in set(pool["symbol"])]], pool.reset_index(drop=True),
               asset_class=asset_class, params=params)


# ----------------------------------------------------------------------------------------------
# 3. synthesize
# ----------------------------------------------------------------------------------------------
def synthesize(ctx: StageContext) -> dict:
    """Atoms, synthetic returns on the training window, pre-opt sign test (gate when atomic flag on)."""
    from . import signtest
    from .synthesis import build_atoms, synthetic_returns

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
def analyze_window(synthetic: pd.DataFrame, profile: Profile) -> tuple[dict, dict]:
    """Atom clusters and the regime with the caps it implies (cluster cap, per-atom cap >= 1/n)."""
    from .analysis import atom_clusters, regime, regime_cluster_cap

    sel, opt = profile.selection, profile.optimizer
    clusters = atom_clusters(synthetic, threshold=sel.threshold, max_clusters=sel.max_clusters)
    state = regime(synthetic)
    state["cluster_cap"] = regime_cluster_cap(state["label"], clusters["n_clusters"], opt.cluster_cap)
    state["atom_cap"] = max(opt.atom_cap, 1.0 / synthetic.shape[1])
    return clusters, state


def pre_opt(ctx: StageContext) -> dict:
    """Clusters, antifragility, regime and the regime cluster cap, on the training window only."""
    from .analysis import antifragility

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
def optimize_window(synthetic: pd.DataFrame, clusters: dict, state: dict, profile: Profile,
                    methods: list[str] | None = None) -> tuple[pd.DataFrame, dict]:
    """Weights (profile, atom_id, weight, cluster) of every risk profile, each through the Stable Sum Gate."""
    from .optimize import optimize_gated

    opt = profile.optimizer
    labels = pd.Series(clusters["labels"]).reindex(synthetic.columns)
    frames, infos = [], {}
    for method in methods or opt.profiles:
        w, info = optimize_gated(synthetic, method, opt.engine, profile_name=profile.name, clusters=labels,
                                 cluster_cap=state["cluster_cap"], atom_cap=state["atom_cap"], linkage=opt.linkage)
        frames.append(pd.DataFrame({"profile": method, "atom_id": w.index.astype(str), "weight": w.to_numpy(),
                                    "cluster": labels.reindex(w.index).to_numpy().astype(int)}))
        infos[method] = info
    return pd.concat(frames, ignore_index=True), infos


def optimize(ctx: StageContext) -> dict:
    """Every risk profile with the profile's engine, Stable Sum Gate, flattening, post-opt sign test."""
    from . import signtest
    from .synthesis import flatten

    synthetic = storage.read_parquet(ctx.require("artifacts/synthetic_returns.parquet"))
    atoms = storage.read_parquet(ctx.require("artifacts/atoms.parquet"))
    clusters = storage.read_json(ctx.require("artifacts/clusters.json"))
    state = storage.read_json(ctx.require("artifacts/regime.json"))
    opt = ctx.profile.optimizer
    weights, infos = optimize_window(synthetic, clusters, state, ctx.profile)
    flat = flatten(weights, atoms)
    result = signtest.post_opt(atoms, weights, flat)
    storage.write_parquet(ctx.path("artifacts/weights.parquet"), weights)
    storage.write_parquet(ctx.path("artifacts/flattened.parquet"), flat)
    storage.write_json(ctx.path("artifacts/sign_test.json"), result)
    storage.write_json(ctx.path("artifacts/optimization.json"),
                       {"engine": opt.engine, "linkage": opt.linkage, "cluster_cap": state["cluster_cap"],
                        "atom_cap": state["atom_cap"], "profiles": infos})
    signtest.enforce(result, ctx.profile.features.directional_sign_test_gate_atomic, "optimize")
    return {"weights": weights, "flattened": flat, "sign_test": result, "info": infos}


# ----------------------------------------------------------------------------------------------
# one window, in memory: the chain the walk-forward backtest and the look-ahead audit replay
# ----------------------------------------------------------------------------------------------
@dataclass
class WindowDecision:
    selection: object            # selection.SelectionResult
    atoms: pd.DataFrame
    synthetic: pd.DataFrame
    clusters: dict
    regime: dict
    weights: pd.DataFrame        # profile, atom_id, weight, cluster


def decide_window(returns: pd.DataFrame, candidates: pd.DataFrame, features: pd.DataFrame, profile: Profile,
                  end: pd.Timestamp, methods: list[str] | None = None) -> WindowDecision:
    """Selection -> synthesis -> analysis -> optimization on the training window ending at `end` (the
    same functions the production stages call, so the validated decisions are the produced ones).
    Uses only rows of `returns` and `features` dated <= `end`."""
    from .synthesis import build_atoms, synthetic_returns

    train = training_window(returns, profile.sleeve.train_days, end)
    result = select_window(train, candidates, features, profile.sleeve.asset_class, selection_params(profile))
    atoms = build_atoms(result.selection)
    synthetic = synthetic_returns(train, atoms)
    clusters, state = analyze_window(synthetic, profile)
    weights, _ = optimize_window(synthetic, clusters, state, profile, methods)
    return WindowDecision(result, atoms, synthetic, clusters, state, weights)


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
    from . import tearsheet as ts
    from .audit import audit_sleeve
    from .book import stages
    from .report import write_figures_html

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
    from . import backtest

    art = lambda rel: storage.read_parquet(ctx.require(f"artifacts/{rel}"))  # noqa: E731
    bar = None
    if progress:
        import sys

        from tqdm import tqdm  # the text bar: a widget bar would be saved as "0%" in the executed notebook

        bar = lambda it: tqdm(it, desc="walk-forward windows", unit="window", file=sys.stdout,  # noqa: E731
                              mininterval=1.0)
    wf = backtest.run(art("returns.parquet"), art("candidates.parquet"), art("features.parquet"),
                      art("benchmark.parquet")["benchmark"], ctx.profile, progress=bar)
    for name, frame in (("returns", wf.returns), ("benchmarks", wf.benchmarks), ("turnover", wf.turnover),
                        ("costs", wf.costs)):
        storage.write_parquet(ctx.path(f"backtest/{name}.parquet"), frame.rename_axis("date"))
    storage.write_parquet(ctx.path("backtest/metrics.parquet"), wf.metrics.rename_axis("name"))
    storage.write_parquet(ctx.path("backtest/windows.parquet"), wf.windows)
    storage.write_parquet(ctx.path("backtest/holdings.parquet"), wf.holdings)
    storage.write_json(ctx.path("backtest/parity.json"), {"run_id": ctx.run.id, **wf.parity})
    if wf.parity["passed"] is False:
        worst = max(wf.parity["profiles"].items(), key=lambda kv: kv[1]["final_rel_diff"])
        raise backtest.BacktestError(f"validate: reference and vectorbt simulators disagree on {worst[0]} "
                                     f"(final equity rel. diff {worst[1]['final_rel_diff']:.2e} > "
                                     f"backtest.parity_tolerance={wf.parity['tolerance']})")
    return wf


def post_analysis(ctx: StageContext) -> dict:
    """Cluster map, factor map and drift monitors (plotly, also standalone HTML under plots/)."""
    from . import postanalysis as pa

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
