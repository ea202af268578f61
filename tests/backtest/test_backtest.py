"""Walk-forward validation (SPEC §2.7): windows, delisting exits, synthetic prices, settings, the
validated demo sleeve end to end on point-in-time universes, the look-ahead audit on perturbed raw
data (it passes on the real pipeline and catches planted look-ahead) and the bad-input messages."""
from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest

from conftest import art, spy_local_pools
from quantlib.backtest import walkforward as backtest
from quantlib.backtest import lookahead
from quantlib.core import parallel
from quantlib.backtest.walkforward import BacktestError, delisting_exits, synthetic_prices, windows
from quantlib.core.profiles import load_profile
from quantlib.sleeve.synthesis import build_atoms

DAYS = pd.date_range("2026-01-01", periods=30, freq="D", tz="UTC")


def test_windows_step_by_the_test_window_and_decide_on_the_last_training_bar():
    plan = windows(DAYS, train_days=20, test_days=4)
    assert [(w.decision, w.start, w.end) for w in plan] == [
        (DAYS[19], DAYS[20], DAYS[23]), (DAYS[23], DAYS[24], DAYS[27]), (DAYS[27], DAYS[28], DAYS[29])]


def test_windows_name_the_profile_key_when_the_data_is_too_short():
    with pytest.raises(BacktestError, match=r"backtest\.train_days=40"):
        windows(DAYS, train_days=40, test_days=4, profile_name="p")
    with pytest.raises(BacktestError, match=r"backtest\.test_days=25"):
        windows(DAYS, train_days=20, test_days=25, profile_name="p")


def test_a_symbol_that_stops_trading_exits_on_its_last_bar_once_it_has_a_price():
    idx = DAYS[:6]
    raw = pd.DataFrame({"X:A": [0.0, 0.1, 0.1, np.nan, np.nan, np.nan], "X:B": [0.0, 0.1, 2.0, 0.1, 0.1, np.nan],
                        "X:C": [0.0, 0.1, 0.1, 0.1, 0.1, 0.1]}, index=idx)
    atoms = build_atoms(pd.DataFrame({"symbol": ["X:A", "X:B", "X:C"], "logic": "r",
                                      "direction": ["LONG", "SHORT", "LONG"]}))
    prices = synthetic_prices(raw, atoms)
    exits = delisting_exits(raw, atoms, prices)
    a, b, c = atoms["atom_id"]
    assert exits.index[exits[a]].tolist() == [idx[2]]     # A's last close
    assert not exits[b].any()                             # B's short died at +200 % (worth 0): nothing to sell
    assert not exits[c].any()                             # C trades to the end


def test_synthetic_prices_compound_the_synthesis_and_a_short_can_lose_everything_once():
    idx = DAYS[:5]
    raw = pd.DataFrame({"X:A": [0.0, 0.1, -0.5, 0.2, 0.0], "X:B": [0.0, 0.1, 1.5, -0.5, 0.1],
                        "X:C": [np.nan, np.nan, np.nan, 0.1, 0.1]}, index=idx)
    atoms = build_atoms(pd.DataFrame({"symbol": ["X:A", "X:B", "X:C"], "logic": "r",
                                      "direction": ["LONG", "SHORT", "LONG"]}))
    prices = synthetic_prices(raw, atoms)
    a, b, c = (prices[i] for i in atoms["atom_id"])
    np.testing.assert_allclose(a, [1.0, 1.1, 0.55, 0.66, 0.66])
    np.testing.assert_allclose(b, [1.0, 0.9, 0.0, 0.0, 0.0])  # +150 % day: the short is worth 0 and stays there
    assert c.iloc[:3].isna().all() and c.iloc[3] == pytest.approx(1.1)  # not tradable before its listing


def test_settings_take_the_asset_class_cost_and_window_defaults():
    crypto = backtest.settings(load_profile("demo_crypto_long").profile)
    assert (crypto.fees, crypto.test_days, crypto.train_days, crypto.annualization) == (pytest.approx(0.0014), 10, 252, 365)
    eq = backtest.settings(load_profile("demo_crypto_long", env={"FW_SLEEVE__ASSET_CLASS": "equities"}).profile)
    assert (eq.fees, eq.test_days, eq.annualization) == (pytest.approx(0.0006), 21, 252)


# ------------------------------------------------------------------------------ the validated sleeve
def test_validation_writes_oos_streams_for_every_profile_with_simulator_parity(long_sleeve):
    result, run = long_sleeve
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    returns, metrics = art(run, "backtest/returns.parquet"), art(run, "backtest/metrics.parquet")
    assert list(returns.columns) == run.profile.optimizer.profiles and returns.notna().all().all()
    parity = art(run, "backtest/parity.json")
    assert parity["gate"] == "parity" and parity["passed"]
    assert {c["subject"] for c in parity["checks"]} == set(run.profile.optimizer.profiles)
    assert max(p["final_rel_diff"] for p in parity["info"]["profiles"].values()) <= 1e-6
    assert {"market_benchmark", "universe_equal_weight", "hrp"} <= set(metrics.index)
    assert {"cagr", "sharpe", "sortino", "max_drawdown", "calmar", "turnover_per_rebalance", "cost_drag",
            "var95", "cvar95", "hit_rate"} <= set(metrics.columns)
    w = art(run, "backtest/windows.parquet")
    assert len(w) >= 2 and (w["start"] > w["decision"]).all()
    assert (returns.index[0] == w["decision"].iloc[0]) and (returns.index[-1] == w["end"].iloc[-1])
    # every window's weights are held until the next decision: one target set per decision and profile
    holdings = art(run, "backtest/holdings.parquet")
    sums = holdings.groupby(["decision", "profile"])["weight"].sum()
    np.testing.assert_allclose(sums.to_numpy(), 1.0, atol=1e-9)
    for name in ("cluster_map", "factor_map", "drift_hrp"):
        assert "Plotly.newPlot" in (run.dir / "plots" / f"{name}.html").read_text()


def test_windows_record_the_point_in_time_universe_and_its_funnel(long_sleeve):
    _, run = long_sleeve
    w, universe, funnel = (art(run, f"backtest/{n}.parquet") for n in ("windows", "universe", "funnel"))
    assert (w["universe"] >= w["eligible"]).all() and (w["eligible"] >= 1).all()
    assert set(universe["decision"]) == set(w["decision"]) and universe["health"].notna().all()
    last = funnel.sort_values("step").groupby(["decision", "scanner"]).tail(1)
    assert set(last["filter"]) == {"strict health"}
    assert universe.groupby("decision").size().reindex(w["decision"]).tolist() == w["universe"].tolist()
    doc = art(run, "artifacts/universe.json")
    assert doc["base_universe"]["count"] >= len(set(universe["symbol"])) and doc["scanners"]
    health = art(run, "artifacts/health.json")["symbols"]   # SPEC §2.1: status, bars, last bar per symbol
    assert health and {"symbol", "status", "returns", "last_bar", "detail"} <= set(health[0])
    assert all(h["returns"] > 0 for h in health if h["status"] == "OK")


def test_the_lookahead_audit_passes_on_the_real_pipeline(workspace, long_sleeve):
    _, run = long_sleeve
    result = workspace.book("audit-lookahead", run.id)
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    doc = json.loads((run.dir / "backtest" / "lookahead_audit.json").read_text())
    info = doc["info"]
    assert doc["gate"] == "lookahead" and doc["passed"]
    assert info["windows_checked"] >= 1 and info["perturbation_changed_later_decisions"]
    assert set(info["events"]) == {"delist", "spike", "listing"}
    delist = info["events"]["delist"]   # the planted delisting is liquidated at the symbol's last close
    assert delist["liquidated"] and {e["date"] for e in delist["liquidated"]} == {delist["last_bar"]}
    assert {c["code"] for c in doc["checks"]} >= {"universe", "eligibility", "weights", "trades",
                                                    "strategy_returns", "benchmark_returns"}


def test_the_lookahead_audit_passes_on_a_short_sleeve(short_sleeve, monkeypatch):
    _, run = short_sleeve
    pools = spy_local_pools(monkeypatch)
    monkeypatch.setattr(parallel, "available_cores", lambda: 2)   # windows decided by 2 workers on any machine
    result = lookahead.audit_run(run)
    assert result.passed, result.summary()
    assert result.info["events"], "no held symbol to plant events on"
    assert pools == [2, 2]   # both walk-forwards (base and perturbed) decided their windows in parallel


REAL_POOL = backtest.point_in_time_pool


def _todays_universe(returns, screener, scanners, profile, dates, window):
    """Planted bug: today's scanner output (the last date's universe) used in every window."""
    pool, funnel = REAL_POOL(returns, screener, scanners, profile, [returns.index[-1]], window)
    return (pd.concat([pool.assign(date=d) for d in dates], ignore_index=True),
            pd.concat([funnel.assign(date=d) for d in dates], ignore_index=True))


def _whole_window_health(returns, screener, scanners, profile, dates, window):
    """Planted bug: strict health assessed over the whole lookback, future bars included."""
    from quantlib.sleeve.health import assess_window
    from quantlib.sleeve.universe import universe_at

    pool, funnel = universe_at(screener, scanners, dates)
    health = assess_window(returns, pool["symbol"].unique(), min_history_days=profile.sleeve.min_history_days,
                           toxic_return=profile.data.toxic_return).set_index("symbol")
    pool = pool.assign(health=pool["symbol"].map(health["status"]), health_detail="")
    return pool.assign(toxic=pool["health"].eq("TOXIC")), funnel


@pytest.mark.parametrize("planted", [_todays_universe, _whole_window_health], ids=["todays_list", "whole_health"])
def test_the_lookahead_audit_catches_planted_survivorship(long_sleeve, monkeypatch, planted):
    _, run = long_sleeve
    pools = spy_local_pools(monkeypatch)
    monkeypatch.setattr(backtest, "point_in_time_pool", planted)
    monkeypatch.setattr(parallel, "available_cores", lambda: 2)   # and with windows decided in parallel
    result = lookahead.audit_run(run)
    assert pools == [2, 2]
    assert not result.passed
    failed = {c.code for c in result.failed}
    assert {"universe", "eligibility"} & failed and "strategy_returns" in failed, failed


def test_an_empty_point_in_time_universe_names_the_date_and_the_funnel(long_sleeve, monkeypatch):
    _, run = long_sleeve
    def unhealthy(*args):
        pool, funnel = REAL_POOL(*args)
        return pool.assign(health="STALE"), funnel

    monkeypatch.setattr(backtest, "point_in_time_pool", unhealthy)
    returns, screener = art(run, "artifacts/returns.parquet"), art(run, "artifacts/screener.parquet")
    from quantlib.data.scanners import Scanner

    scanners = [Scanner.model_validate(s) for s in art(run, "artifacts/universe.json")["scanners"]]
    with pytest.raises(BacktestError, match=r"point-in-time universe at the rebalance of \d{4}-\d\d-\d\d is empty "
                                            r".*funnel: rating_all_long: universe \d+ -> .* -> strict health \d+\); "
                                            r"widen sleeve.scanners"):
        backtest.run(returns, screener, scanners, art(run, "artifacts/benchmark.parquet")["benchmark"], run.profile)


def test_impossible_windows_fail_validation_naming_the_key(workspace, first):
    """The whole path once (CLI -> stage -> INDEX.md); which key is named for which window is
    `test_windows_name_the_profile_key_when_the_data_is_too_short`'s."""
    result = workspace.book("sleeve", "demo_crypto_long", "--skip-analysis", env={"FW_BACKTEST__TRAIN_DAYS": "5000"})
    assert result.returncode == 1
    index = (workspace.run_of(result).dir / "INDEX.md").read_text()
    assert "stage validate failed" in index and re.search(r"backtest\.train_days=5000", index)


def test_a_window_without_enough_survivors_holds_cash_and_says_why(long_sleeve):
    """A rebalance where selection cannot form a book (the production sleeve would not trade either)
    sells everything and holds cash until the next rebalance; the window table records the reason."""
    from quantlib.data.scanners import Scanner
    from quantlib.sleeve.selection import SelectionError
    from quantlib.sleeve.window import decide_window

    _, run = long_sleeve
    returns, screener = art(run, "artifacts/returns.parquet"), art(run, "artifacts/screener.parquet")
    scanners = [Scanner.model_validate(s) for s in art(run, "artifacts/universe.json")["scanners"]]
    profile = run.profile.model_copy(update={"backtest": run.profile.backtest.model_copy(
        update={"simulators": ["reference"]})})
    plan = windows(returns.index, 252, backtest.settings(profile).test_days)
    skipped = plan[1].decision

    def decide(r, c, p, end):
        if end == skipped:
            raise SelectionError("selection (HTR): only 1 asset(s) survive")
        return decide_window(r, c, p, end)

    wf = backtest.run(returns, screener, scanners, art(run, "artifacts/benchmark.parquet")["benchmark"], profile,
                      decide=decide)
    row = wf.windows.set_index("decision").loc[skipped]
    assert row["selected"] == 0 and row["note"].startswith("cash: selection (HTR): only 1")
    assert (wf.targets["hrp"].loc[skipped] == 0).all()           # everything sold at that close
    held = wf.returns.loc[plan[1].start:plan[1].end, "hrp"]
    assert (held.iloc[:-1] == 0).all()        # flat in cash until the next rebalance (its last bar) buys again
    assert skipped not in set(wf.holdings["decision"])


def test_audit_cutoff_must_be_a_date_inside_the_walk_forward():
    from quantlib.core.errors import DataError

    index = pd.date_range("2026-01-01", periods=40, freq="D", tz="UTC")
    plan = windows(index, train_days=20, test_days=5)
    assert lookahead._cutoff(None, plan, index) == plan[len(plan) // 2].decision
    assert lookahead._cutoff("2026-01-25", plan, index) == pd.Timestamp("2026-01-25", tz="UTC")
    with pytest.raises(DataError, match=r"--at 'not-a-date' is not a date; give an ISO date such as 2026-01-"):
        lookahead._cutoff("not-a-date", plan, index)
    with pytest.raises(DataError, match=r"--at 2025-06-01 is outside the walk-forward \(2026-01-20 \.\. 2026-02-08\)"):
        lookahead._cutoff("2025-06-01", plan, index)


def test_audit_of_a_data_run_says_it_is_not_a_sleeve_run(first):
    from quantlib.core.errors import DataError

    with pytest.raises(DataError, match=r"is a data run, not a sleeve run"):
        lookahead.audit_run(first.run)
