"""Performance metrics (quantlib.portfolio.metrics) on hand-computed tiny series."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from quantlib.portfolio.metrics import (METRIC_COLUMNS, drawdown, metrics_table, performance_metrics, turnover,
                              wealth)

R = pd.Series([0.1, -0.1, 0.05, 0.0], index=pd.date_range("2026-01-01", periods=4, name="date"))


def test_wealth_and_drawdown_hand_case():
    # wealth after each return, no inserted initial row
    assert wealth(R).tolist() == pytest.approx([1.1, 0.99, 1.0395, 1.0395])
    assert wealth(R).index.equals(R.index)
    # running max 1.1 after day 1 -> 0.99/1.1 - 1 = -0.1, 1.0395/1.1 - 1 = -0.055
    assert drawdown(R).tolist() == pytest.approx([0.0, -0.1, -0.055, -0.055])


def test_drawdown_running_max_includes_initial_wealth():
    # a first-day loss is a drawdown from the initial 1.0, not 0
    assert drawdown(pd.Series([-0.2, 0.1])).tolist() == pytest.approx([-0.2, 0.88 - 1.0])


def test_bankrupt_path_stays_at_zero():
    r = pd.Series([0.1, -1.5, 0.5, 2.0])
    assert wealth(r).tolist() == [pytest.approx(1.1), 0.0, 0.0, 0.0]
    m = performance_metrics(r, 252)
    assert m["cagr"] == -1.0
    assert m["max_drawdown"] == pytest.approx(-1.0)
    assert m["total_return"] == pytest.approx(-1.0)


def test_performance_metrics_hand_case():
    m = performance_metrics(R, 252)
    assert m["n_days"] == 4 and isinstance(m["n_days"], int)
    assert all(type(m[k]) is float for k in METRIC_COLUMNS if k != "n_days")
    assert m["total_return"] == pytest.approx(0.0395)
    assert m["cagr"] == pytest.approx(1.0395 ** (252 / 4) - 1)
    # mean 0.0125; sample variance 0.021875 / 3
    std = math.sqrt(0.021875 / 3)
    assert m["vol"] == pytest.approx(std * math.sqrt(252))
    assert m["sharpe"] == pytest.approx(0.0125 / std * math.sqrt(252))
    assert m["sharpe"] == pytest.approx(2.32379, rel=1e-5)
    # downside deviation sqrt(0.01 / 4) = 0.05 -> sortino = 0.0125 / 0.05 * sqrt(252)
    assert m["sortino"] == pytest.approx(0.25 * math.sqrt(252))
    assert m["max_drawdown"] == pytest.approx(-0.1)
    assert m["calmar"] == pytest.approx(m["cagr"] / 0.1)
    assert m["hit_rate"] == 0.5  # the 0.0 day is a miss
    # sorted [-0.1, 0, 0.05, 0.1]: q05 at position 0.15 -> -0.1 + 0.15 * 0.1 = -0.085
    assert m["var95"] == pytest.approx(0.085)
    assert m["cvar95"] == pytest.approx(0.1)


def test_sharpe_and_vol_match_direct_numpy():
    rng = np.random.default_rng(3)
    x = rng.normal(0.0005, 0.02, 500)
    m = performance_metrics(pd.Series(x), 365)
    assert m["vol"] == pytest.approx(np.std(x, ddof=1) * np.sqrt(365), rel=1e-12)
    assert m["sharpe"] == pytest.approx(np.mean(x) / np.std(x, ddof=1) * np.sqrt(365), rel=1e-12)
    assert m["cagr"] == pytest.approx(np.prod(1 + x) ** (365 / 500) - 1, rel=1e-10)
    w = np.cumprod(1 + x)
    mdd = np.min(w / np.maximum.accumulate(np.maximum(w, 1.0)) - 1)
    assert m["max_drawdown"] == pytest.approx(min(mdd, 0.0), rel=1e-12)


def test_undefined_metrics_are_nan_not_errors():
    empty = performance_metrics(pd.Series([], dtype=float), 252)
    assert empty["n_days"] == 0
    assert all(math.isnan(empty[k]) for k in METRIC_COLUMNS if k != "n_days")
    one = performance_metrics(pd.Series([0.01]), 252)
    assert one["n_days"] == 1 and math.isnan(one["vol"]) and math.isnan(one["sharpe"])
    assert one["max_drawdown"] == 0.0 and math.isnan(one["calmar"])  # no drawdown -> Calmar undefined
    assert math.isnan(one["sortino"])  # no negative day -> downside deviation 0
    flat = performance_metrics(pd.Series([0.0, 0.0, 0.0]), 252)
    assert math.isnan(flat["sharpe"]) and flat["hit_rate"] == 0.0 and flat["cagr"] == 0.0


def test_nan_returns_are_dropped_not_zero_filled():
    with_gap = pd.Series([0.1, np.nan, -0.1, 0.05, 0.0])
    m = performance_metrics(with_gap, 252)
    assert m["n_days"] == 4
    assert m["sharpe"] == pytest.approx(performance_metrics(R, 252)["sharpe"])


def test_bad_annualization_raises():
    with pytest.raises(ValueError):
        performance_metrics(R, 0)


def test_turnover():
    assert turnover(pd.Series({"a": 0.5, "b": 0.5}), pd.Series({"a": 1.0})) == pytest.approx(0.5)
    assert turnover(pd.Series({"a": 1.0}), pd.Series({"b": 1.0})) == pytest.approx(1.0)
    assert turnover(pd.Series({"a": 0.3, "b": -0.2}), pd.Series({"a": 0.3, "b": -0.2})) == 0.0
    # short to long flip of one name: 0.5 * |0.4 - (-0.4)|
    assert turnover(pd.Series({"x": -0.4}), pd.Series({"x": 0.4})) == pytest.approx(0.4)
    assert turnover(pd.Series(dtype=float), pd.Series({"a": 1.0})) == pytest.approx(0.5)


def test_metrics_table_one_row_per_profile():
    df = pd.DataFrame({"p1": R.to_numpy(), "p2": [0.01, 0.02, -0.01, 0.0]})
    t = metrics_table(df, 252)
    assert list(t.index) == ["p1", "p2"] and list(t.columns) == METRIC_COLUMNS
    assert t.loc["p1", "sharpe"] == pytest.approx(performance_metrics(R, 252)["sharpe"])
    assert t.loc["p2", "total_return"] == pytest.approx(1.01 * 1.02 * 0.99 - 1)
    assert t["n_days"].tolist() == [4, 4]
