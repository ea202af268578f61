"""Walk-forward validation backtest (SPEC §2.7): point-in-time decisions, two simulators, benchmarks.

Timeline of window k: the decision date d_k is the last bar of the training window. The universe is
rebuilt point-in-time at d_k (`universe.candidates_at`: the sleeve's scanners on the screener rows
of d_k -- symbols trading then, value traded from OHLCV up to then, ratings at that bar, toxic
flags dated before -- and strict health on the training window only), then
`window.decide_window` runs selection -> synthesis -> analysis -> optimization on the training
rows <= d_k only. Orders execute at d_k's close and the book is held through the test window
(d_k+1 ... d_k+test_days); the next decision date is d_k + test_days bars (step = test window).
Wealth and holdings carry across windows (one simulation over the whole span, never reset).

Assets of the simulation are strategy atoms priced by their synthetic stream (LONG: the raw price
relative; SHORT: 1 - clip(r, upper=1), so a short loses at most 100 % and a +100 % day leaves it
worthless) -- the same synthesis the optimizer saw (LESSONS L-X3).
Costs: (slippage + commission) x traded notional. Benchmarks: the profile's market benchmark
bought and held, and an equal weight of the eligible universe in the sleeve's direction, rebalanced
on the same dates. Both simulated by the reference simulator with the same costs.
A held symbol that stops trading (its bars end before the span does) is liquidated at its last close
into cash (`events`); no price is carried forward. The simulators' columns are sorted by atom id,
so which buy a fee cuts short never depends on atoms that only appear in later windows.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import numpy as np
import pandas as pd

from quantlib.core.errors import GateError
from quantlib.backtest.simulate import simulate_reference, simulate_vectorbt
from quantlib.core import live, parallel
from quantlib.core.gates import Check, GateResult
from quantlib.portfolio.metrics import metrics_table
from quantlib.core.profiles import ANNUALIZATION, Profile
from quantlib.data.scanners import Scanner
from quantlib.sleeve.selection import SelectionError
from quantlib.sleeve.synthesis import atom_id, synthetic_returns
from quantlib.sleeve.universe import candidates_at, funnel_text
from quantlib.sleeve.window import WindowDecision, decide_window

ASSET_CLASS_DEFAULTS = {"crypto": {"test_days": 10, "slippage_bp": 10.0, "commission_bp": 4.0},
                        "equities": {"test_days": 21, "slippage_bp": 5.0, "commission_bp": 1.0}}


class BacktestError(GateError):
    """The walk-forward backtest cannot run (too little history, no eligible assets) or failed parity."""


@dataclass(frozen=True)
class Settings:
    train_days: int
    test_days: int
    fees: float  # fraction of traded notional (slippage + commission)
    annualization: int
    simulators: tuple[str, ...]
    parity_tolerance: float


def settings(profile: Profile) -> Settings:
    """Resolve the profile's backtest section with the asset-class defaults."""
    bt, cls = profile.backtest, profile.sleeve.asset_class
    defaults = ASSET_CLASS_DEFAULTS[cls]
    pick = lambda value, key: defaults[key] if value is None else value  # noqa: E731
    fees = (pick(bt.slippage_bp, "slippage_bp") + pick(bt.commission_bp, "commission_bp")) / 1e4
    return Settings(train_days=bt.train_days or profile.sleeve.train_days, test_days=pick(bt.test_days, "test_days"),
                    fees=fees, annualization=ANNUALIZATION[cls],
                    simulators=tuple(bt.simulators), parity_tolerance=bt.parity_tolerance)


@dataclass(frozen=True)
class Window:
    decision: pd.Timestamp   # last training bar: decide and trade at its close
    start: pd.Timestamp      # first test bar
    end: pd.Timestamp        # last test bar


def windows(index: pd.DatetimeIndex, train_days: int, test_days: int, profile_name: str = "") -> list[Window]:
    """Walk-forward windows over `index` (step = test window; the last one may be shorter)."""
    if len(index) < train_days + 1:
        raise BacktestError(f"validate: {len(index)} return rows cannot hold one window of backtest.train_days="
                            f"{train_days} + 1 test bar (profile {profile_name}); lower backtest.train_days or "
                            f"raise sleeve.lookback_days")
    if len(index) < train_days + test_days:
        raise BacktestError(f"validate: backtest.test_days={test_days} after backtest.train_days={train_days} needs "
                            f"{train_days + test_days} return rows, the data has {len(index)} (profile {profile_name}); "
                            f"lower backtest.test_days / backtest.train_days or raise sleeve.lookback_days")
    out = []
    for i in range(train_days, len(index), test_days):
        out.append(Window(index[i - 1], index[i], index[min(i + test_days, len(index)) - 1]))
    return out


def point_in_time_pool(returns: pd.DataFrame, screener: pd.DataFrame, scanners: list[Scanner], profile: Profile,
                       dates: list[pd.Timestamp], window: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The sleeve's candidates at each decision date with their health on the `window` rows up to it."""
    return candidates_at(returns, screener, scanners, dates, window=window,
                         min_history_days=profile.sleeve.min_history_days, toxic_return=profile.data.toxic_return)


@dataclass
class WalkForward:
    returns: pd.DataFrame      # date x risk profile: out-of-sample daily returns (reference simulator)
    benchmarks: pd.DataFrame   # date x {market_benchmark, universe_equal_weight}
    windows: pd.DataFrame      # one row per window: decision, start, end, universe, eligible, selected, ..., note
    universe: pd.DataFrame     # decision, symbol, logic, direction, scanner, health, ...: the rebuilt universe
    funnel: pd.DataFrame       # decision, scanner, step, filter, remaining: the scanner funnel per window
    eligibility: pd.DataFrame  # decision, symbol, logic, direction: the healthy pool of each window
    selection: pd.DataFrame    # the HTR selection of each window that selected (its columns, then decision)
    holdings: pd.DataFrame     # decision, profile, atom_id, symbol, direction, weight, cluster
    targets: dict              # risk profile -> dates x atom_id target weights (the trades' inputs)
    turnover: pd.DataFrame     # date x risk profile (0 between rebalances)
    costs: pd.DataFrame        # date x risk profile, as a fraction of the previous equity
    events: pd.DataFrame       # date, atom_id, symbol, event, profile, weight: delistings liquidated
    parity: GateResult         # reference vs vectorbt per profile
    metrics: pd.DataFrame      # one row per risk profile and benchmark


def ray_address(profile: Profile) -> str | None:
    """The Ray cluster to decide the windows on: the one the sleeve runs on when it has several nodes
    (`FW_RAY_ADDRESS`, set by the sleeve's task) and `backtest.windows_on_ray` asks for it; else None (forked
    local workers: on one machine they are cheaper than the Ray workers a kernel's job would start)."""
    return os.environ.get(parallel.RAY_ADDRESS_ENV) if profile.backtest.windows_on_ray else None


def run(returns: pd.DataFrame, screener: pd.DataFrame, scanners: list[Scanner], benchmark: pd.Series,
        profile: Profile, progress: Callable | None = None, decide: Callable | None = None,
        universe: Callable | None = None) -> WalkForward:
    """The whole walk-forward validation of one sleeve (universes, decisions, simulations, benchmarks,
    metrics). `universe` and `decide` default to the production functions (tests plant others).

    The windows are decided in parallel (`backtest.workers`, `core.parallel.ordered_map`: forked local
    workers, or Ray tasks with `backtest.windows_on_ray` when the kernel sees `FW_RAY_ADDRESS`) -- each depends only on the data up to its
    decision date -- and come back in window order, identical to a sequential run, the first failing
    window's error raised as it would be there; progress advances as windows arrive. The simulations
    are one sequential pass over all of them."""
    decide = decide or decide_window
    universe = universe or point_in_time_pool
    cfg = settings(profile)
    plan = windows(returns.index, cfg.train_days, cfg.test_days, profile.name)
    pools, funnel = universe(returns, screener, scanners, profile, [w.decision for w in plan], cfg.train_days)
    with parallel.ordered_map(partial(rebalance, decide=decide), (returns, pools, funnel, profile), plan,
                              profile.backtest.workers, ray_address(profile)) as decided:
        windows_done = live.track(progress(plan) if progress else plan, "walk-forward windows", len(plan))
        steps = [next(decided) for _ in windows_done]  # the bars advance as each window's decision arrives
    rows = [s.row for s in steps]
    decisions = [(s.window, s.decision) for s in steps if s.decision is not None]
    if not decisions:
        raise BacktestError(f"validate: no window of profile {profile.name} selected 2 or more assets "
                            f"(first: {rows[0]['note']}); widen sleeve.scanners or relax the selection")
    holdings = pd.concat([window_holdings(w, d) for w, d in decisions], ignore_index=True)
    keys = ["decision", "symbol", "logic", "direction"]
    eligibility = pd.concat([s.eligible for s in steps], ignore_index=True)[keys]
    book = simulation_book(returns, holdings, eligibility, plan[0].decision)
    results, turnover, costs, parity, targets, events = {}, {}, {}, {}, {}, []
    methods = profile.optimizer.profiles
    for method in live.track(methods, f"walk-forward simulations ({'+'.join(cfg.simulators)})", len(methods)):
        t = trade(holdings, book, [w.decision for w in plan], cfg, method)
        targets[method], results[method], turnover[method], costs[method] = t.targets, t.returns, t.turnover, t.costs
        events.append(t.events)
        if "vectorbt" in t.sims and "reference" in t.sims:
            parity[method] = _parity(t.sims["reference"], t.sims["vectorbt"])
    benchmarks = _benchmarks(book.span, benchmark, book.eligible_atoms, book.prices, plan, cfg.fees, book.exits)
    out = pd.DataFrame(results)
    metrics = _metrics(out, benchmarks, pd.DataFrame(turnover), pd.DataFrame(costs), len(plan), cfg)
    par = parity_gate(parity, cfg.parity_tolerance)
    events = pd.concat(events, ignore_index=True)
    selection = pd.concat([d.selection.selection.assign(decision=w.decision) for w, d in decisions], ignore_index=True)
    return WalkForward(out.rename_axis("date"), benchmarks.rename_axis("date"), with_delistings(pd.DataFrame(rows), events),
                       pools.rename(columns={"date": "decision"}), funnel.rename(columns={"date": "decision"}),
                       eligibility, selection, holdings, targets,
                       pd.DataFrame(turnover), pd.DataFrame(costs), events, par, metrics)


@dataclass
class Rebalance:
    """One walk-forward rebalance: the universe at its decision date (with health), its healthy pool
    (`decision` instead of `date`), its windows-table row and the decision (None: the window holds cash)."""

    window: Window
    pool: pd.DataFrame
    eligible: pd.DataFrame
    row: dict
    decision: WindowDecision | None


def rebalance(returns: pd.DataFrame, pools: pd.DataFrame, funnel: pd.DataFrame, profile: Profile, w: Window,
              decide: Callable | None = None) -> Rebalance:
    """The decision of window `w` on its point-in-time universe (`pools` rows dated `w.decision`): too
    few survivors of the selection is a cash window, any other gate failure a `BacktestError`."""
    pool = pools[pools["date"] == w.decision]
    healthy = pool[pool["health"].eq("OK")]
    if healthy.empty:
        raise BacktestError(f"validate: the point-in-time universe at the rebalance of {w.decision.date()} "
                            f"is empty (profile {profile.name}; funnel: {funnel_text(funnel, w.decision)}); "
                            f"widen sleeve.scanners or shorten backtest.train_days")
    row = {"decision": w.decision, "start": w.start, "end": w.end, "universe": len(pool),
           "eligible": len(healthy), "selected": 0, "regime": None, "stage_reached": None, "note": ""}
    eligible = healthy.rename(columns={"date": "decision"})
    try:
        d = (decide or decide_window)(returns, pool.drop(columns="date"), profile, w.decision)
    except SelectionError as exc:   # too few survivors: the production sleeve would not trade either
        return Rebalance(w, pool, eligible, row | {"note": f"cash: {str(exc).splitlines()[0]}"}, None)
    except GateError as exc:
        raise BacktestError(f"validate: window decided on {w.decision.date()}: {exc}") from None
    return Rebalance(w, pool, eligible, row | {"selected": len(d.atoms), "regime": d.regime["label"],
                                               "stage_reached": d.selection.audit["stage_reached"]}, d)


def window_holdings(w: Window, d: WindowDecision) -> pd.DataFrame:
    """The holdings rows of one decision: weights of every risk profile with their atoms' symbols."""
    return d.weights.merge(d.atoms, on="atom_id").assign(decision=w.decision)


@dataclass
class Book:
    """What the simulations trade: every atom held or eligible in some window (sorted by atom id),
    priced by its synthetic stream over the span from the first decision, and its delisting exits."""

    span: pd.DataFrame
    atoms: pd.DataFrame
    eligible_atoms: pd.DataFrame
    prices: pd.DataFrame
    exits: pd.DataFrame


def simulation_book(returns: pd.DataFrame, holdings: pd.DataFrame, eligibility: pd.DataFrame,
                    first_decision: pd.Timestamp) -> Book:
    """The `Book` of a walk-forward from its holdings and its eligibility (decision, symbol, logic, direction)."""
    span = returns.loc[returns.index >= first_decision]
    atoms = holdings[["atom_id", "symbol", "logic", "direction"]].drop_duplicates("atom_id")
    eligible_atoms = _eligible_atoms(eligibility)
    all_atoms = (pd.concat([atoms, eligible_atoms], ignore_index=True).drop_duplicates("atom_id")
                 .sort_values("atom_id", ignore_index=True))
    prices = synthetic_prices(span, all_atoms)
    return Book(span, all_atoms, eligible_atoms, prices, delisting_exits(span, all_atoms, prices))


@dataclass
class Trading:
    """One risk profile traded: its target-weight rows and what its primary simulation (the reference
    simulator when it runs) did -- returns, turnover, costs as a fraction of the previous equity,
    delisting liquidations; `sims` holds every simulator's result."""

    targets: pd.DataFrame
    returns: pd.Series
    turnover: pd.Series
    costs: pd.Series
    events: pd.DataFrame
    sims: dict


def trade(holdings: pd.DataFrame, book: Book, decisions: list[pd.Timestamp], cfg: Settings, method: str,
          simulators: list[str] | None = None) -> Trading:
    """Simulate risk profile `method`'s holdings on `book` with `simulators` (default: the profile's)."""
    targets = _targets(holdings[holdings["profile"] == method], book.prices, decisions)
    sims = {name: _simulate(name, book.prices, targets, cfg.fees, book.exits) for name in simulators or cfg.simulators}
    ref = sims.get("reference") or next(iter(sims.values()))
    return Trading(targets, ref.returns, ref.turnover, ref.costs / ref.equity.shift(1).fillna(1.0),
                   _liquidations(ref, book.exits, book.atoms, method), sims)


def primary_simulator(cfg: Settings) -> str:
    """The simulator whose returns, turnover, costs and events the walk-forward records."""
    return "reference" if "reference" in cfg.simulators else cfg.simulators[0]


def delisting_exits(span: pd.DataFrame, atoms: pd.DataFrame, prices: pd.DataFrame) -> pd.DataFrame:
    """(dates x atoms) True on the last bar of each atom whose symbol stops trading inside the span
    (its returns end before the span's last date) and whose price there is still positive."""
    exits = pd.DataFrame(False, index=prices.index, columns=prices.columns)
    last = span.reindex(columns=atoms["symbol"].unique()).apply(pd.Series.last_valid_index)
    for atom, symbol in zip(atoms["atom_id"], atoms["symbol"]):
        when = last.get(symbol)
        if when is not None and not pd.isna(when) and when < span.index[-1] and prices.at[when, atom] > 0:
            exits.at[when, atom] = True
    return exits


def _liquidations(sim, exits: pd.DataFrame, atoms: pd.DataFrame, method: str) -> pd.DataFrame:
    """The delisting events of one simulation where a position was actually sold."""
    symbol = atoms.set_index("atom_id")["symbol"]
    held = sim.weights.shift(1).fillna(0.0)
    rows = []
    for t, j in zip(*np.nonzero(exits.to_numpy())):
        when, atom = exits.index[t], exits.columns[j]
        if held.at[when, atom] > 0:
            rows.append({"date": when, "atom_id": atom, "symbol": symbol[atom], "event": "delisted",
                         "profile": method, "weight": float(held.at[when, atom])})
    return pd.DataFrame(rows, columns=["date", "atom_id", "symbol", "event", "profile", "weight"])


def with_delistings(table: pd.DataFrame, events: pd.DataFrame) -> pd.DataFrame:
    """The window table with the symbols liquidated inside each window's test span."""
    table["delisted"] = [", ".join(sorted(set(events.loc[(events["date"] > d) & (events["date"] <= e), "symbol"])))
                         for d, e in zip(table["decision"], table["end"])]
    return table


def _eligible_atoms(pools: pd.DataFrame) -> pd.DataFrame:
    atoms = pools[["symbol", "logic", "direction", "decision"]].copy()
    atoms["atom_id"] = [atom_id(s, l, d) for s, l, d in zip(atoms["symbol"], atoms["logic"], atoms["direction"])]
    return atoms


def synthetic_prices(returns: pd.DataFrame, atoms: pd.DataFrame) -> pd.DataFrame:
    """Dates x atom price paths: 1.0 on the first row (the first decision date) for symbols trading
    that day, then compounded synthetic returns; NaN before a later listing (not tradable), and a
    SHORT that loses 100 % stays at 0."""
    atoms = atoms[["atom_id", "symbol", "logic", "direction"]]
    growth = (1.0 + synthetic_returns(returns.iloc[1:], atoms)).cumprod()  # NaN rows stay NaN
    trading = returns.iloc[0][atoms["symbol"].to_list()].notna().to_numpy()
    first = pd.DataFrame([np.where(trading, 1.0, np.nan)], index=returns.index[:1], columns=growth.columns)
    return pd.concat([first, growth])


def _targets(holdings: pd.DataFrame, prices: pd.DataFrame, decisions: list[pd.Timestamp]) -> pd.DataFrame:
    """Target-weight rows on every decision date (0 for atoms not held: a window without a
    selection is all cash), NaN rows elsewhere."""
    wide = holdings.pivot_table(index="decision", columns="atom_id", values="weight", aggfunc="sum")
    targets = pd.DataFrame(np.nan, index=prices.index, columns=prices.columns)
    targets.loc[decisions] = 0.0
    targets.loc[wide.index, wide.columns] = wide.fillna(0.0).to_numpy()
    return targets


def _simulate(name: str, prices: pd.DataFrame, targets: pd.DataFrame, fees: float, exits: pd.DataFrame):

    return (simulate_reference if name == "reference" else simulate_vectorbt)(prices, targets, fees, exits=exits)


def parity_gate(parity: dict[str, dict], tolerance: float) -> GateResult:
    """Reference vs vectorbt per risk profile: final equity and every return within `tolerance`
    (not checked when only one simulator ran)."""
    checks = [Check("PARITY", p["final_rel_diff"] <= tolerance and p["max_return_diff"] <= tolerance,
                    f"final equity rel. diff {p['final_rel_diff']:.2e}, max return diff {p['max_return_diff']:.2e} "
                    f"(backtest.parity_tolerance={tolerance})", subject=method) for method, p in parity.items()]
    if not checks:
        checks = [Check("PARITY", False, "one simulator (backtest.simulators): parity not checked", required=False)]
    return GateResult("parity", checks, {"tolerance": tolerance, "profiles": parity})


def _parity(ref, vbt) -> dict:
    final_ref, final_vbt = float(ref.equity.iloc[-1]), float(vbt.equity.iloc[-1])
    return {"final_equity_reference": final_ref, "final_equity_vectorbt": final_vbt,
            "final_rel_diff": abs(final_ref - final_vbt) / max(abs(final_ref), 1e-300),
            "max_return_diff": float(np.nanmax(np.abs(ref.returns.to_numpy() - vbt.returns.to_numpy())))}


def _benchmarks(span: pd.DataFrame, benchmark: pd.Series, eligible_atoms: pd.DataFrame, prices: pd.DataFrame,
                plan: list[Window], fees: float, exits: pd.DataFrame) -> pd.DataFrame:

    bench = benchmark.reindex(span.index)
    market_price = pd.DataFrame({"market": np.concatenate([[1.0], np.cumprod(1.0 + bench.iloc[1:].fillna(0.0))])},
                                index=span.index)
    market_target = pd.DataFrame(np.nan, index=span.index, columns=["market"])
    market_target.iloc[0] = 1.0
    market = simulate_reference(market_price, market_target, fees).returns
    targets = pd.DataFrame(np.nan, index=prices.index, columns=prices.columns)
    for w in plan:
        ids = eligible_atoms.loc[eligible_atoms["decision"] == w.decision, "atom_id"].unique()
        targets.loc[w.decision] = 0.0
        targets.loc[w.decision, ids] = 1.0 / len(ids)
    equal = simulate_reference(prices, targets, fees, exits=exits).returns
    return pd.DataFrame({"market_benchmark": market, "universe_equal_weight": equal})


def _metrics(returns: pd.DataFrame, benchmarks: pd.DataFrame, turnover: pd.DataFrame, costs: pd.DataFrame,
             n_rebalances: int, cfg: Settings) -> pd.DataFrame:
    table = metrics_table(pd.concat([returns, benchmarks], axis=1), cfg.annualization)
    years = len(returns) / cfg.annualization
    table["turnover_per_rebalance"] = (turnover.sum() / n_rebalances).reindex(table.index)
    table["turnover_annual"] = (turnover.sum() / years).reindex(table.index)
    table["cost_drag"] = (costs.mean() * cfg.annualization).reindex(table.index)
    return table
