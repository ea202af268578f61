"""The look-ahead audit (SPEC §0 point-in-time, §2.7; LESSONS L-B1): perturb the raw inputs, rerun.

Copies the lakehouse files a sleeve reads (its base universe's OHLCV, the symbol table, the registry,
the features matrix) into a private temp lakehouse, replaces every OHLCV bar and features row after
a cutoff by noise and plants events after it:
  delist   a held symbol stops trading one bar after the cutoff,
  spike    a held symbol gains +600 % on the first bar after the cutoff (and is registered toxic then),
  listing  a new symbol is listed after the cutoff.
Then it rebuilds the sleeve's inputs from each lakehouse with the production loader
(`sleeveflow.load_sleeve_inputs`) and reruns the walk-forward on both. Everything decided at or
before the cutoff must be identical: the rebuilt universe and scanner funnel per window,
eligibility, selection, weights, trades, strategy and benchmark returns. Because it perturbs raw
data, never artifacts, any input channel (a universe, a health window, a benchmark) is covered.
"""
from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from quantlib.backtest import walkforward as backtest
from quantlib.core import registry, storage
from quantlib.core.errors import DataError
from quantlib.core.gates import Check, GateResult
from quantlib.core.runs import Run, utc_now
from quantlib.core.workspace import Workspace
from quantlib.data.lakehouse import Lakehouse
from quantlib.data.scanners import Scanner
from quantlib.sleeve.inputs import benchmark_returns, load_sleeve_inputs

EVENTS = ("delist", "spike", "listing")
SPIKE_FACTOR = 7.0  # +600 %


def copy_lakehouse(lake: Lakehouse, symbols: Sequence[str], timeframe: str, dest: Path) -> Lakehouse:
    """A copy of the tables and of `symbols`' OHLCV files under `dest`."""
    copy = Lakehouse(dest)
    copy.ohlcv_dir(timeframe).mkdir(parents=True, exist_ok=True)
    for path in (lake.symbols_path, lake.registry_path, lake.features_path):
        if path.exists():
            shutil.copy2(path, copy.root / path.name)
    for symbol in symbols:
        if lake.ohlcv_path(symbol, timeframe).exists():
            shutil.copy2(lake.ohlcv_path(symbol, timeframe), copy.ohlcv_path(symbol, timeframe))
    return copy


def _noise_bars(bars: pd.DataFrame, later: np.ndarray, rng: np.random.Generator) -> pd.DataFrame:
    """Bars whose rows `later` are replaced by a random walk from the last earlier close."""
    out = bars.copy()
    n = int(later.sum())
    if not n:
        return out
    start = float(out.loc[~later, "close"].iloc[-1]) if (~later).any() else 100.0
    close = start * np.cumprod(1.0 + rng.normal(0.0, 0.04, n))
    open_ = np.concatenate([[start], close[:-1]])
    out.loc[later, "open"] = open_
    out.loc[later, "close"] = close
    out.loc[later, "high"] = np.maximum(open_, close) * (1.0 + np.abs(rng.normal(0.0, 0.01, n)))
    out.loc[later, "low"] = np.minimum(open_, close) * (1.0 - np.abs(rng.normal(0.0, 0.01, n)))
    out.loc[later, "volume"] = out.loc[later, "volume"].to_numpy() * rng.lognormal(0.0, 0.5, n)
    return out


def perturb_after(lake: Lakehouse, symbols: Sequence[str], timeframe: str, cutoff: pd.Timestamp,
                  seed: int = 0) -> None:
    """In place: every OHLCV bar and features-matrix row dated after `cutoff` becomes noise."""
    rng = np.random.default_rng(seed)
    for symbol in symbols:
        bars = lake.read_ohlcv(symbol, timeframe)
        if len(bars):
            storage.write_parquet(lake.ohlcv_path(symbol, timeframe),
                                  _noise_bars(bars, (bars["ts"] > cutoff).to_numpy(), rng))
    if lake.features_path.exists():
        features = storage.read_parquet(lake.features_path)
        later = features["ts"] > cutoff
        n = int(later.sum())
        for col in ("recommend_all", "recommend_ma", "recommend_other"):
            features.loc[later, col] = rng.uniform(-1.0, 1.0, n)
        features.loc[later, "adx"] = rng.uniform(0.0, 60.0, n)
        features.loc[later, "rsi"] = rng.uniform(0.0, 100.0, n)
        storage.write_parquet(lake.features_path, features)


def plant_delisting(lake: Lakehouse, symbol: str, timeframe: str, cutoff: pd.Timestamp) -> pd.Timestamp:
    """`symbol` trades one more bar after `cutoff`, then never again; returns its last bar."""
    bars = lake.read_ohlcv(symbol, timeframe)
    later = bars.index[bars["ts"] > cutoff]
    if len(later) < 2:
        raise DataError(f"look-ahead audit: {symbol} has fewer than 2 bars after {cutoff}; choose an earlier --at")
    storage.write_parquet(lake.ohlcv_path(symbol, timeframe), bars.loc[: later[0]])
    if lake.features_path.exists():
        features = storage.read_parquet(lake.features_path)
        keep = ~((features["symbol"] == symbol) & (features["ts"] > bars.at[later[0], "ts"]))
        storage.write_parquet(lake.features_path, features[keep].reset_index(drop=True))
    return bars.at[later[0], "ts"]


def plant_spike(lake: Lakehouse, symbol: str, timeframe: str, cutoff: pd.Timestamp) -> pd.Timestamp:
    """`symbol` jumps x7 on its first bar after `cutoff` (prices after it scaled too) and the
    registry flags it TOXIC on that bar, as the ingestion guard would; returns the spike bar."""
    bars = lake.read_ohlcv(symbol, timeframe)
    later = (bars["ts"] > cutoff).to_numpy()
    if not later.any():
        raise DataError(f"look-ahead audit: {symbol} has no bar after {cutoff}; choose an earlier --at")
    for col in ("open", "high", "low", "close"):
        bars.loc[later, col] = bars.loc[later, col] * SPIKE_FACTOR
    first = bars.loc[later, "open"].index[0]
    bars.at[first, "open"] = bars["close"].iloc[first - 1] if first else bars.at[first, "open"]
    bars.at[first, "low"] = min(bars.at[first, "low"], bars.at[first, "open"])
    storage.write_parquet(lake.ohlcv_path(symbol, timeframe), bars)
    when = bars.at[first, "ts"]
    entry = pd.DataFrame([{"symbol": symbol, "status": "TOXIC", "reason": "look-ahead audit: planted +600 % bar",
                           "detected_at": when, "bar_ts": when, "value": SPIKE_FACTOR - 1.0}])
    registry = lake.read_registry()
    storage.write_parquet(lake.registry_path, pd.concat([registry, entry], ignore_index=True))
    return when


def plant_listing(lake: Lakehouse, template: str, timeframe: str, cutoff: pd.Timestamp) -> str:
    """A new market, a copy of `template`'s bars after `cutoff` under a new ticker; returns it."""
    exchange, ticker = template.split(":", 1)
    symbol = f"{exchange}:{ticker}NEW"
    bars = lake.read_ohlcv(template, timeframe)
    storage.write_parquet(lake.ohlcv_path(symbol, timeframe), bars[bars["ts"] > cutoff].reset_index(drop=True))
    table = storage.read_parquet(lake.symbols_path)
    row = table[table["symbol"] == template].assign(symbol=symbol, base=lambda t: t["base"] + "NEW")
    storage.write_parquet(lake.symbols_path, pd.concat([table, row], ignore_index=True))
    return symbol


STREAM_TOLERANCE = 1e-12
"""Streams (returns, turnover, costs) may differ by float rounding: the perturbed run holds other
atoms *later*, so sums run over a different number of (zero) columns. Decisions compare exactly."""


def _same(name: str, a: pd.DataFrame, b: pd.DataFrame, stream: bool = False) -> Check:
    try:
        pd.testing.assert_frame_equal(a.reset_index(drop=True), b.reset_index(drop=True), check_exact=not stream,
                                      rtol=0.0, atol=STREAM_TOLERANCE if stream else 0.0)
        return Check(name, True, f"{len(a)} rows " + (f"equal to {STREAM_TOLERANCE:g}" if stream else "identical"))
    except AssertionError as exc:
        return Check(name, False, " ".join(str(exc).split())[:300])


def _orders(wf, cutoff: pd.Timestamp) -> pd.DataFrame:
    """Non-zero target weights of every rebalance up to `cutoff` (profile, date, atom, weight)."""
    rows = []
    for method, targets in wf.targets.items():
        long = targets[targets.index <= cutoff].stack().rename("weight").reset_index()
        long.columns = ["date", "atom_id", "weight"]
        rows.append(long[long["weight"].notna() & (long["weight"] != 0)].assign(profile=method))
    return pd.concat(rows, ignore_index=True).sort_values(["profile", "date", "atom_id"], ignore_index=True)


def _trading(wf) -> pd.DataFrame:
    return pd.concat([wf.turnover.add_suffix("_turnover"), wf.costs.add_suffix("_cost")], axis=1)


def compare(base, moved, cutoff: pd.Timestamp) -> list[Check]:
    """Every walk-forward output decided at or before `cutoff`, base vs perturbed."""
    upto = lambda frame, col="decision": frame[frame[col] <= cutoff]  # noqa: E731
    before = lambda frame: frame[frame.index <= cutoff].reset_index()  # noqa: E731
    table = lambda wf: upto(wf.windows).drop(columns=["delisted"])  # noqa: E731
    return [
        _same("universe", upto(base.universe), upto(moved.universe)),
        _same("scanner_funnel", upto(base.funnel), upto(moved.funnel)),
        _same("eligibility", upto(base.eligibility), upto(moved.eligibility)),
        _same("selection_and_regime", table(base), table(moved)),
        _same("weights", upto(base.holdings), upto(moved.holdings)),
        _same("trades", _orders(base, cutoff), _orders(moved, cutoff)),
        _same("turnover_and_costs", before(_trading(base)), before(_trading(moved)), stream=True),
        _same("strategy_returns", before(base.returns), before(moved.returns), stream=True),
        _same("benchmark_returns", before(base.benchmarks), before(moved.benchmarks), stream=True),
    ]


def _held(wf, cutoff: pd.Timestamp, profile: str) -> list[str]:
    """Symbols held by `profile` after the last rebalance at or before `cutoff`, largest first."""
    held = wf.holdings[(wf.holdings["decision"] <= cutoff) & (wf.holdings["profile"] == profile)]
    last = held[held["decision"] == held["decision"].max()]
    return last[last["weight"] > 0].sort_values(["weight", "symbol"], ascending=[False, True])["symbol"].tolist()


def audit(lake: Lakehouse, profile, scanners, end: pd.Timestamp | None = None, cutoff: pd.Timestamp | None = None,
          events: Sequence[str] = EVENTS, seed: int = 0, run_backtest: Callable | None = None) -> GateResult:
    """Rerun the walk-forward from `lake` and from a perturbed copy; compare everything up to `cutoff`
    (default: the middle window's decision date). Uses the reference simulator only (parity is the
    validation's job). `run_backtest(inputs, profile)` defaults to the production walk-forward."""
    unknown = sorted(set(events) - set(EVENTS))
    if unknown:
        raise ValueError(f"look-ahead audit: unknown event(s) {unknown}; choose from {', '.join(EVENTS)}")
    run_backtest = run_backtest or (lambda inputs, prof: backtest.run(
        inputs.returns, inputs.screener, scanners, benchmark_returns(inputs, prof), prof))
    quick = profile.model_copy(update={"backtest": profile.backtest.model_copy(update={"simulators": ["reference"]})})
    cfg, timeframe = backtest.settings(quick), profile.data.timeframe
    inputs = load_sleeve_inputs(lake, quick, scanners, end)
    plan = backtest.windows(inputs.returns.index, cfg.train_days, cfg.test_days, profile.name)
    cutoff = _cutoff(cutoff, plan, inputs.returns.index)
    base = run_backtest(inputs, quick)
    held = _held(base, cutoff, quick.optimizer.profiles[0])
    planted: dict[str, object] = {}
    with tempfile.TemporaryDirectory(prefix="fw-lookahead-") as tmp:
        copy = copy_lakehouse(lake, sorted(set(inputs.base) | {profile.sleeve.benchmark}), timeframe, Path(tmp))
        perturb_after(copy, sorted(set(inputs.base) | {profile.sleeve.benchmark}), timeframe, cutoff, seed)
        targets = [s for s in held if s != profile.sleeve.benchmark]
        if "delist" in events and targets:
            planted["delist"] = {"symbol": targets[0], "last_bar": plant_delisting(copy, targets[0], timeframe, cutoff)}
        if "spike" in events and len(targets) > 1:
            planted["spike"] = {"symbol": targets[1], "bar": plant_spike(copy, targets[1], timeframe, cutoff)}
        if "listing" in events and held:
            planted["listing"] = {"symbol": plant_listing(copy, held[0], timeframe, cutoff)}
        moved = run_backtest(load_sleeve_inputs(copy, quick, scanners, end), quick)
    if "delist" in planted:   # the delisted holding is sold at its last close in the perturbed run
        sold = moved.events[moved.events["symbol"] == planted["delist"]["symbol"]]
        planted["delist"]["liquidated"] = sold[["date", "profile", "weight"]].to_dict(orient="records")
    checks = compare(base, moved, cutoff)
    windows_checked = int((base.windows["decision"] <= cutoff).sum())
    checks.append(Check("windows", windows_checked > 0, f"{windows_checked} of {len(plan)} windows decided by the cutoff"))
    return GateResult("lookahead", checks, {
        "cutoff": cutoff, "windows_checked": windows_checked, "windows_total": len(plan), "events": planted,
        "perturbation_changed_later_decisions": not base.holdings.equals(moved.holdings)})


def _cutoff(cutoff, plan, index: pd.DatetimeIndex) -> pd.Timestamp:
    if cutoff is None:
        return plan[len(plan) // 2].decision
    try:
        when = pd.Timestamp(cutoff)
    except (TypeError, ValueError):
        raise DataError(f"look-ahead audit: --at {cutoff!r} is not a date; give an ISO date such as "
                        f"{plan[len(plan) // 2].decision.date()}") from None
    if when.tzinfo is None and index.tz is not None:
        when = when.tz_localize(index.tz)
    if not plan[0].decision <= when < index[-1]:
        raise DataError(f"look-ahead audit: --at {when.date()} is outside the walk-forward "
                        f"({plan[0].decision.date()} .. {index[-2].date()}); choose a date inside it")
    return when


def audit_run(run: Run, cutoff: str | None = None, seed: int = 0, events: Sequence[str] = EVENTS) -> GateResult:
    """The audit of a sleeve run, rebuilt from the lakehouse it read as of its last bar; writes its
    `lookahead_audit` artifact in the run."""
    if run.manifest.get("phase") != "sleeve":
        raise DataError(f"look-ahead audit: run {run.id} is a {run.manifest.get('phase')} run, not a sleeve run; "
                        f"pass a sleeve run id (`python run_book.py runs`)")
    try:
        universe = storage.read_json(run.path(registry.path("sleeve", "universe")))
        end = storage.read_parquet(run.path(registry.path("sleeve", "returns"))).index[-1]
    except FileNotFoundError:
        raise DataError(f"look-ahead audit: run {run.id} has no aggregate outputs ({registry.path('sleeve', 'universe')}); "
                        f"it predates point-in-time universes or did not finish its first stage -- rerun the sleeve"
                        ) from None
    scanners = [Scanner.model_validate(s) for s in universe["scanners"]]
    lake = Lakehouse(Workspace(run.workspace).resolve(run.profile.data.lakehouse))
    result = audit(lake, run.profile, scanners, end, cutoff, events, seed)
    result = GateResult(result.gate, result.checks, {**result.info, "run_id": run.id, "generated_at": utc_now()})
    storage.write_json(run.path(registry.path("sleeve", "lookahead_audit")), result.to_dict())
    return result
