"""quantlib.backtest.simulate: numpy reference vs vectorbt simulator of a rebalanced long-only portfolio (SPEC §2.7).

Hand-checked tiny cases run through both simulators; random cases check parity (1e-6 required,
both are exact models of the same order logic). One vectorbt numba warm-up per module.
"""
from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pandas as pd
import pytest

from quantlib.backtest.simulate import SimResult, simulate_reference, simulate_vectorbt

SIMULATORS = [simulate_reference, simulate_vectorbt]
sim_ids = ["reference", "vectorbt"]


@pytest.fixture(scope="module", autouse=True)
def vbt_warm():
    """Import vectorbt and compile (or load cached) numba code once for the module."""
    p = pd.DataFrame({"a": [1.0, 1.1], "b": [2.0, 1.9]}, index=pd.date_range("2024-01-01", periods=2))
    t = pd.DataFrame({"a": [0.5, np.nan], "b": [0.5, np.nan]}, index=p.index)
    simulate_vectorbt(p, t, 0.001)


def frame(data, cols=("A", "B")) -> pd.DataFrame:
    data = np.asarray(data, dtype=float)
    return pd.DataFrame(data, index=pd.date_range("2024-01-01", periods=len(data)), columns=list(cols))


def targets_like(prices: pd.DataFrame, rows: dict[int, list[float]]) -> pd.DataFrame:
    t = pd.DataFrame(np.nan, index=prices.index, columns=prices.columns)
    for i, w in rows.items():
        t.iloc[i] = w
    return t


def short_prices(underlying_returns: np.ndarray) -> np.ndarray:
    """Synthetic price of a SHORT atom: cumulative product of -clip(r, upper=1)."""
    return np.cumprod(1.0 - np.clip(underlying_returns, None, 1.0))


def assert_parity(a: SimResult, b: SimResult, tol: float = 1e-6) -> None:
    assert abs(a.equity.iloc[-1] / b.equity.iloc[-1] - 1.0) < tol
    assert (a.returns - b.returns).abs().max() < tol
    assert (a.weights - b.weights).abs().max().max() < tol
    assert (a.turnover - b.turnover).abs().max() < tol
    assert (a.costs - b.costs).abs().max() < tol * a.equity.abs().max()


# ------------------------------------------------------------------------------------ light import
def test_import_does_not_load_vectorbt():
    code = "import sys, quantlib.backtest.simulate; print('vectorbt' in sys.modules, 'numba' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


# --------------------------------------------------------------------------------- hand-checked
@pytest.mark.parametrize("sim", SIMULATORS, ids=sim_ids)
def test_no_fees_one_rebalance_equals_weighted_price_relatives(sim):
    prices = frame([[10, 20], [11, 18], [12, 19], [9, 22]])
    res = sim(prices, targets_like(prices, {0: [0.6, 0.4]}), fees=0.0)
    rel = prices / prices.iloc[0]
    expected = 0.6 * rel["A"] + 0.4 * rel["B"]
    np.testing.assert_allclose(res.equity.to_numpy(), expected.to_numpy(), rtol=1e-12)
    np.testing.assert_allclose(res.returns.iloc[0], 0.0, atol=1e-12)  # first day vs init_cash
    np.testing.assert_allclose(res.returns.iloc[1:].to_numpy(), expected.pct_change().iloc[1:].to_numpy(),
                               rtol=1e-10)
    np.testing.assert_allclose(res.weights.iloc[2].to_numpy(), (0.6 * rel.iloc[2]["A"], 0.4 * rel.iloc[2]["B"])
                               / expected.iloc[2], rtol=1e-12)
    # convention: the first allocation from the all-cash start counts 0.5 * sum|w|
    assert res.turnover.iloc[0] == pytest.approx(0.5)
    assert (res.turnover.iloc[1:] == 0).all() and (res.costs == 0).all()


@pytest.mark.parametrize("sim", SIMULATORS, ids=sim_ids)
def test_fees_first_day_cost_partly_invested(sim):
    prices = frame([[10, 20], [10, 20]])
    f = 0.01
    res = sim(prices, targets_like(prices, {0: [0.5, 0.3]}), fees=f)
    # buys of 0.5 and 0.3 from 1.0 cash: notional 0.8, cost 0.008, cash left 0.192
    assert res.costs.iloc[0] == pytest.approx(f * 0.8, rel=1e-12)
    assert res.equity.iloc[0] == pytest.approx(1.0 - f * 0.8, rel=1e-12)
    np.testing.assert_allclose(res.weights.iloc[0].to_numpy(), np.array([0.5, 0.3]) / 0.992, rtol=1e-12)
    assert res.turnover.iloc[0] == pytest.approx(0.5 * 0.8 / 0.992, rel=1e-12)
    assert res.costs.iloc[1] == 0 and res.turnover.iloc[1] == 0


@pytest.mark.parametrize("sim", SIMULATORS, ids=sim_ids)
def test_fees_fully_invested_partial_last_buy(sim):
    """vectorbt's order logic: buys smallest first; the largest buy is cut to the cash left."""
    prices = frame([[10, 20], [10, 20]])
    f = 0.01
    res = sim(prices, targets_like(prices, {0: [0.6, 0.4]}), fees=f)
    # B (0.4) fills completely: pays 0.4 * 1.01 = 0.404; A gets the 0.596 left: notional 0.596 / 1.01
    notional_a = 0.596 / 1.01
    assert res.costs.iloc[0] == pytest.approx(f * (0.4 + notional_a), rel=1e-12)
    assert res.equity.iloc[0] == pytest.approx(0.4 + notional_a, rel=1e-12)      # = 1 / 1.01, no cash left
    np.testing.assert_allclose(res.weights.iloc[0].to_numpy(), np.array([notional_a, 0.4]) / (0.4 + notional_a),
                               rtol=1e-12)
    assert res.weights.iloc[0].sum() == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("sim", SIMULATORS, ids=sim_ids)
def test_state_carries_across_rebalances(sim):
    """The second rebalance trades from the drifted value (1.1 / (1 + f)), never from init_cash."""
    prices = frame([[100.0], [110.0], [121.0], [121.0]], cols=["A"])
    f = 0.001
    res = sim(prices, targets_like(prices, {0: [1.0], 1: [0.5]}), fees=f)
    e0 = 1.0 / (1.0 + f)                       # fully invested from cash: notional e0, fee f * e0
    e1_pre = 1.1 * e0                           # +10 % before trading on day 1
    e1 = e1_pre * (1.0 - 0.5 * f)               # sell half: fee f * 0.5 * e1_pre
    e2 = 0.5 * e1_pre * (1.0 - f) + 0.5 * e1_pre * 1.1
    np.testing.assert_allclose(res.equity.to_numpy(), [e0, e1, e2, e2], rtol=1e-12)
    np.testing.assert_allclose(res.costs.to_numpy(), [f * e0, f * 0.5 * e1_pre, 0, 0], rtol=1e-12)
    assert res.returns.iloc[1] == pytest.approx(e1 / e0 - 1.0, rel=1e-12)
    assert res.weights.iloc[1, 0] == pytest.approx(0.5 * e1_pre / e1, rel=1e-12)
    # turnover: from 1.0 held to 0.5 * e1_pre / e1 held
    assert res.turnover.iloc[1] == pytest.approx(0.5 * (1.0 - 0.5 * e1_pre / e1), rel=1e-12)


@pytest.mark.parametrize("sim", SIMULATORS, ids=sim_ids)
def test_turnover_half_sum_abs_weight_change_on_crafted_rebalance(sim):
    prices = frame([[10, 10, 10], [12, 10, 9], [12, 10, 9]], cols=["A", "B", "C"])
    targets = targets_like(prices, {0: [0.5, 0.3, 0.2], 1: [0.2, 0.3, 0.3]})
    res = sim(prices, targets, fees=0.0)
    drifted = np.array([0.5 * 1.2, 0.3, 0.2 * 0.9])
    w_before = drifted / drifted.sum()                          # [0.5556, 0.2778, 0.1667]
    expected = 0.5 * np.abs(np.array([0.2, 0.3, 0.3]) - w_before).sum()
    assert expected == pytest.approx(0.2555555555, rel=1e-9)
    assert res.turnover.iloc[1] == pytest.approx(expected, rel=1e-12)
    assert res.turnover.iloc[2] == 0.0

    f = 0.002
    res_f = sim(prices, targets, fees=f)
    e0, w0 = res_f.equity.iloc[0], res_f.weights.iloc[0].to_numpy()
    held = w0 * e0 * np.array([1.2, 1.0, 0.9])                    # drifted holdings before day 1's trades
    v = e0 * (1.0 - w0.sum()) + held.sum()                          # value before trading on day 1
    traded = np.abs(np.array([0.2, 0.3, 0.3]) * v - held).sum()
    assert res_f.costs.iloc[1] == pytest.approx(f * traded, rel=1e-12)   # enough cash: no partial fill
    assert res_f.turnover.iloc[1] == pytest.approx(
        0.5 * np.abs(res_f.weights.iloc[1].to_numpy() - held / v).sum(), rel=1e-12)


@pytest.mark.parametrize("sim", SIMULATORS, ids=sim_ids)
def test_bankrupt_atom_is_worth_zero_and_not_traded(sim):
    r_underlying = np.array([0.0, 0.05, -0.02, 1.5, 0.1, 0.0, -0.1])      # +150 %: the short is wiped out
    a = np.array([100.0, 101, 99, 100, 102, 103, 104])
    prices = frame(np.column_stack([a, short_prices(r_underlying)]), cols=["A", "S"])
    assert prices["S"].iloc[3] == 0.0
    res = sim(prices, targets_like(prices, {0: [0.5, 0.5], 5: [0.5, 0.5]}), fees=0.001)
    assert np.isfinite(res.equity).all() and np.isfinite(res.returns).all()
    assert np.isfinite(res.weights.to_numpy()).all()
    assert (res.weights["S"].iloc[3:] == 0).all() and res.weights["S"].iloc[2] > 0.4
    # on day 5 only A trades: S's target stays in cash
    assert res.weights["A"].iloc[5] == pytest.approx(0.5, abs=1e-3)
    loss = res.equity.iloc[2] * res.weights["S"].iloc[2]
    a_gain = res.equity.iloc[2] * res.weights["A"].iloc[2] * (100 / 99 - 1)
    assert res.equity.iloc[3] == pytest.approx(res.equity.iloc[2] - loss + a_gain, rel=1e-12)


@pytest.mark.parametrize("sim", SIMULATORS, ids=sim_ids)
def test_whole_portfolio_bankrupt_gives_zero_equity_not_nan(sim):
    prices = frame([[10.0], [5.0], [1e-14], [3.0]], cols=["S"])   # <= ZERO_PRICE: dead for good
    res = sim(prices, targets_like(prices, {0: [1.0], 3: [1.0]}), fees=0.0)
    np.testing.assert_allclose(res.equity.to_numpy(), [1.0, 0.5, 0.0, 0.0], atol=1e-15)
    np.testing.assert_allclose(res.returns.to_numpy(), [0.0, -0.5, -1.0, 0.0], atol=1e-12)
    assert (res.weights.iloc[2:] == 0).all().all() and res.costs.iloc[3] == 0


@pytest.mark.parametrize("sim", SIMULATORS, ids=sim_ids)
def test_missing_price_is_valued_at_last_close_and_not_traded(sim):
    prices = frame([[np.nan, 2.0], [1.0, 2.0], [np.nan, 2.0], [1.2, 2.0]])
    res = sim(prices, targets_like(prices, {0: [0.5, 0.5], 1: [0.5, 0.5], 2: [0.0, 1.0]}), fees=0.0)
    # day 0: A not listed yet, its half stays cash; day 1: A bought; day 2: A has no price -> A is not
    # sold (held at its last close 1.0) and B's buy finds only the cash left from day 1 (none)
    np.testing.assert_allclose(res.weights.to_numpy(), [[0.0, 0.5], [0.5, 0.5], [0.5, 0.5], [0.6 / 1.1, 0.5 / 1.1]],
                               rtol=1e-12)
    np.testing.assert_allclose(res.equity.to_numpy(), [1.0, 1.0, 1.0, 1.1], rtol=1e-12)
    assert res.turnover.iloc[2] == 0.0 and res.costs.iloc[2] == 0.0


# ----------------------------------------------------------------------------------------- parity
def random_case(seed: int, n_days: int = 160, n_assets: int = 8, every: int = 10):
    rng = np.random.default_rng(seed)
    r = rng.normal(0.0005, 0.03, (n_days, n_assets))
    prices = np.cumprod(1.0 + r, axis=0) * rng.uniform(1, 500, n_assets)
    r_short = rng.normal(0.0, 0.03, n_days)
    r_short[n_days // 2] = 1.5                                   # underlying +150 %: short price -> 0
    prices[:, -1] = short_prices(r_short)
    if seed % 2:                                                  # late listing and a data gap
        prices[:15, 0] = np.nan
        prices[40:44, 1] = np.nan
    cols = [f"atom{i}" for i in range(n_assets - 1)] + ["short"]
    prices = pd.DataFrame(prices, index=pd.date_range("2023-01-01", periods=n_days), columns=cols)
    targets = pd.DataFrame(np.nan, index=prices.index, columns=cols)
    for i in range(0, n_days, every):
        w = rng.dirichlet(np.full(n_assets, 0.7))
        if rng.random() < 0.4:
            w *= rng.uniform(0.5, 1.0)                            # some cash left
        w[rng.random(n_assets) < 0.15] = 0.0
        targets.iloc[i] = w
    return prices, targets


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_reference_matches_vectorbt(seed):
    prices, targets = random_case(seed)
    fees = 0.0014
    ref = simulate_reference(prices, targets, fees)
    vb = simulate_vectorbt(prices, targets, fees)
    assert_parity(ref, vb)
    dead = prices.index[len(prices) // 2]
    assert (prices.loc[dead:, "short"] == 0).all()
    assert (ref.weights.loc[dead:, "short"] == 0).all()
    assert np.isfinite(ref.equity).all() and (ref.equity > 0).all()
    reb = targets.notna().any(axis=1)
    assert (ref.turnover[~reb] == 0).all() and (ref.turnover[reb] > 0).all()
    assert (ref.costs[reb] > 0).all() and (ref.costs[~reb] == 0).all()


# ------------------------------------------------------------------------------- delisting exits
@pytest.mark.parametrize("sim", SIMULATORS, ids=sim_ids)
def test_exit_sells_the_position_at_its_last_close_into_cash(sim):
    """B stops trading after day 2: its shares are sold at that close (fees paid), the cash is kept,
    nothing else trades and no price is carried forward."""
    prices = frame([[1.0, 1.0], [1.1, 2.0], [1.2, 4.0], [1.3, np.nan], [1.4, np.nan]])
    targets = targets_like(prices, {0: [0.5, 0.5]})
    exits = pd.DataFrame(False, index=prices.index, columns=prices.columns)
    exits.iloc[2, 1] = True
    fees = 0.01
    res = sim(prices, targets, fees, exits=exits)
    # day 0: equal order values, A filled first (0.5 shares for 0.505), B partly with the 0.495 left
    shares_b = 0.495 / 1.01
    cash = shares_b * 4.0 * (1 - fees)                  # day 2: B sold at its last close, net of fees
    np.testing.assert_allclose(res.equity.to_numpy(), [1.0 - 0.5 * 0.01 - (0.495 - shares_b),
                                                       0.55 + 2.0 * shares_b, 0.6 + cash, 0.65 + cash, 0.7 + cash])
    assert res.costs.iloc[2] == pytest.approx(shares_b * 4.0 * fees)
    assert res.weights.iloc[2:, 1].eq(0).all()          # B is cash from its last close on
    assert res.turnover.iloc[2] > 0 and res.turnover.iloc[[1, 3, 4]].eq(0).all()


def test_exit_reference_and_vectorbt_agree_on_a_random_book():
    prices, targets = random_case(3)
    exits = pd.DataFrame(False, index=prices.index, columns=prices.columns)
    last = 70
    prices.iloc[last + 1:, 0] = np.nan                            # atom0 delisted after day 70
    exits.iloc[last, 0] = True
    targets.iloc[last + 1:, 0] = np.where(targets.iloc[last + 1:, 0].notna(), 0.0, np.nan)
    ref = simulate_reference(prices, targets, 0.0014, exits=exits)
    vb = simulate_vectorbt(prices, targets, 0.0014, exits=exits)
    assert_parity(ref, vb)
    assert (ref.weights.iloc[last:, 0] == 0).all() and ref.costs.iloc[last] > 0


@pytest.mark.parametrize("sim", SIMULATORS, ids=sim_ids)
def test_exit_on_a_rebalance_day_sets_the_target_to_zero(sim):
    prices = frame([[1.0, 1.0], [1.0, 1.0], [1.0, 1.0]])
    targets = targets_like(prices, {0: [0.5, 0.5], 1: [0.2, 0.8]})
    exits = pd.DataFrame(False, index=prices.index, columns=prices.columns)
    exits.iloc[1, 1] = True
    res = sim(prices, targets, 0.0, exits=exits)
    np.testing.assert_allclose(res.weights.iloc[1].to_numpy(), [0.2, 0.0], atol=1e-12)


def test_exit_without_a_price_is_rejected():
    prices = frame([[1.0, 1.0], [1.0, np.nan]])
    exits = pd.DataFrame(False, index=prices.index, columns=prices.columns)
    exits.iloc[1, 1] = True
    with pytest.raises(ValueError, match="exit of B .* no positive price"):
        simulate_reference(prices, targets_like(prices, {0: [0.5, 0.5]}), 0.0, exits=exits)


def test_naive_simulator_would_fail_parity():
    """Guards the point of modelling vectorbt: exact target weights from the pre-trade value minus
    fees (a naive vectorized simulator) is more than 1e-6 away from vectorbt."""
    prices, targets = random_case(5)
    targets = targets.div(targets.sum(axis=1), axis=0)            # fully invested: partial fills happen
    fees = 0.0014
    vb = simulate_vectorbt(prices, targets, fees)
    ref = simulate_reference(prices, targets, fees)
    assert_parity(ref, vb)
    # naive: on each rebalance hold exactly w of the post-fee value
    p = prices.ffill().fillna(0.0).to_numpy()
    tradeable = np.isfinite(prices.to_numpy()) & (prices.to_numpy() > 0)
    eq = np.empty(len(p))
    shares, cash = np.zeros(p.shape[1]), 1.0
    for i in range(len(p)):
        if targets.iloc[i].notna().any():
            v = cash + shares @ p[i]
            w = np.where(tradeable[i], targets.iloc[i].fillna(0.0).to_numpy(), 0.0)
            fee = fees * np.abs(w * v - shares * p[i]).sum()
            v_after = v - fee
            shares = np.where(tradeable[i], w * v_after / np.where(tradeable[i], p[i], 1.0), shares)
            cash = v_after - shares @ p[i]
        eq[i] = cash + shares @ p[i]
    assert abs(eq[-1] / vb.equity.iloc[-1] - 1.0) > 1e-6


def test_vectorbt_emits_no_warnings():
    prices, targets = random_case(2, n_days=40, n_assets=4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        simulate_vectorbt(prices, targets, 0.001)
    assert [str(w.message) for w in caught] == []


# ------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("rows, match", [
    ({0: [0.7, 0.4]}, "sum to more than 1"),
    ({0: [-0.1, 0.5]}, ">= 0"),
])
def test_invalid_targets_rejected(rows, match):
    prices = frame([[10, 20], [11, 21]])
    with pytest.raises(ValueError, match=match):
        simulate_reference(prices, targets_like(prices, rows), 0.001)


def test_misaligned_targets_rejected():
    prices = frame([[10, 20], [11, 21]])
    targets = targets_like(prices, {0: [0.5, 0.5]}).iloc[:, ::-1]
    with pytest.raises(ValueError, match="index .* and columns"):
        simulate_reference(prices, targets, 0.001)
