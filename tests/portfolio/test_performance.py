"""portfolio.performance (and the report's use of portfolio.metrics): hand-computed cases, and quantstats
(test-only) as the independent implementation where it defines a metric the same way.

Same definitions in quantstats 0.0.86 (rf = 0, the same periods a year): volatility, Sharpe, Sortino
(downside deviation over all days), max drawdown (from an initial 1.0), rolling volatility and Sharpe,
alpha/beta (`greeks`: beta = cov/var, alpha = annualized mean excess over beta * benchmark), monthly
compounded returns. Different definitions, checked here by hand instead: CAGR (quantstats counts calendar
years, 365 days; ours counts periods, n / A years), information ratio (quantstats does not annualize:
ours = quantstats x sqrt(A)), hit rate (quantstats' win rate leaves zero-return days out; ours counts them as
misses), VaR/CVaR (quantstats is parametric-normal; ours historical), drawdown episodes (quantstats measures
calendar days between start and end dates; ours counts periods under water).
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest

from quantlib.meta.allocation import walk_forward_meta
from quantlib.meta.streams import _daily_index
from quantlib.portfolio import performance
from quantlib.portfolio.metrics import performance_metrics, turnover
from quantlib.portfolio.performance import (contributions, drawdown_table, equal_weight, held_weights, monthly_table,
                                            period_returns, relative_stats, rolling_beta, rolling_sharpe, rolling_vol,
                                            turnover_series, yearly_returns)

A = 252


@pytest.fixture(scope="module")
def qs():
    warnings.filterwarnings("ignore", module="quantstats")
    return pytest.importorskip("quantstats")


@pytest.fixture(scope="module")
def pair() -> tuple[pd.Series, pd.Series]:
    rng = np.random.default_rng(11)
    idx = pd.date_range("2025-01-01", periods=400, freq="D")
    m = pd.Series(rng.normal(0.0004, 0.015, len(idx)), idx, name="m")
    r = (0.6 * m + pd.Series(rng.normal(0.0006, 0.01, len(idx)), idx)).rename("r")
    return r, m


# ------------------------------------------------------------------------------------ hand-computed cases
def test_calendar_returns_compound_within_each_month_and_year():
    r = pd.Series([0.1, -0.5, 0.2, 0.1], pd.to_datetime(["2025-12-31", "2026-01-30", "2026-01-31", "2026-02-01"]))
    months = period_returns(r, "M")
    assert months.tolist() == pytest.approx([0.1, 0.5 * 1.2 - 1, 0.1])
    table = monthly_table(r)
    assert list(table.columns) == list(range(1, 13)) and list(table.index) == [2025, 2026]
    assert table.loc[2026, 1] == pytest.approx(-0.4) and table.loc[2025, 12] == pytest.approx(0.1)
    assert math.isnan(table.loc[2026, 3])
    assert yearly_returns(r).to_dict() == pytest.approx({2025: 0.1, 2026: 0.6 * 1.1 - 1})


def test_calendar_returns_of_utc_dates_and_of_nothing():
    r = pd.Series([0.1, 0.1], pd.DatetimeIndex(["2026-03-31", "2026-04-01"], tz="UTC"))
    assert period_returns(r, "M").tolist() == pytest.approx([0.1, 0.1])
    assert period_returns(pd.Series(dtype=float), "M").empty


def test_rolling_statistics_by_hand():
    idx = pd.date_range("2026-01-01", periods=3, freq="D")
    r = pd.Series([0.01, 0.03, -0.01], idx)
    vol = rolling_vol(r, 2, A)
    assert math.isnan(vol.iloc[0])
    assert vol.iloc[1] == pytest.approx(np.std([0.01, 0.03], ddof=1) * math.sqrt(A))
    assert rolling_sharpe(r, 2, A).iloc[2] == pytest.approx(0.01 / np.std([0.03, -0.01], ddof=1) * math.sqrt(A))
    m = pd.Series([0.02, -0.01, 0.005], idx)
    assert rolling_beta(2 * m, m, 2).dropna().tolist() == pytest.approx([2.0, 2.0])


def test_relative_stats_of_a_levered_benchmark_plus_a_constant():
    rng = np.random.default_rng(1)
    m = pd.Series(rng.normal(0.0, 0.01, 50), pd.date_range("2026-01-01", periods=50, freq="D"))
    st = relative_stats(2 * m + 0.001, m, A)
    assert st["beta"] == pytest.approx(2.0) and st["alpha"] == pytest.approx(0.001 * A)
    assert st["correlation"] == pytest.approx(1.0)
    te = float(np.std(m + 0.001, ddof=1)) * math.sqrt(A)
    assert st["tracking_error"] == pytest.approx(te)
    assert st["information_ratio"] == pytest.approx((m.mean() + 0.001) * A / te)
    assert math.isnan(relative_stats(m.iloc[:1], m.iloc[:1], A)["beta"])
    assert math.isnan(relative_stats(m, m, A)["information_ratio"])  # no active risk: IR undefined


def test_relative_stats_use_only_common_dates():
    idx = pd.date_range("2026-01-01", periods=4, freq="D")
    r = pd.Series([0.01, 0.02, np.nan, 0.04], idx)
    m = pd.Series([0.005, 0.01, 0.02], idx[:3])
    assert relative_stats(r, m, A)["n_days"] == 2


def test_drawdown_episodes_by_hand():
    idx = pd.date_range("2026-01-01", periods=6, freq="D")
    # wealth 1.1 0.55 0.66 1.32 1.188 1.2474; peak 1.1 1.1 1.1 1.32 1.32 1.32
    table = drawdown_table(pd.Series([0.1, -0.5, 0.2, 1.0, -0.1, 0.05], idx), top=5)
    assert table["depth"].tolist() == pytest.approx([-0.5, -0.1])
    first, second = table.iloc[0], table.iloc[1]
    assert (first.start, first.trough, first.recovery, first.length) == (idx[1], idx[1], idx[3], 2)
    assert (second.start, second.trough, second.length) == (idx[4], idx[4], 2) and pd.isna(second.recovery)
    # a loss on the first day is a drawdown from the initial 1.0
    opening = drawdown_table(pd.Series([-0.1, 0.2], idx[:2]))
    assert opening.iloc[0].depth == pytest.approx(-0.1) and opening.iloc[0].recovery == idx[1]
    assert drawdown_table(pd.Series([0.01, 0.02], idx[:2])).empty
    assert len(drawdown_table(pd.Series([-0.1, 0.2] * 5, pd.date_range("2026-01-01", periods=10)), top=3)) == 3


def test_contributions_of_the_held_weights_add_up_to_the_walk_forward_meta_stream():
    rng = np.random.default_rng(5)
    idx = pd.date_range("2026-01-01", periods=90, freq="B")
    sleeves = pd.DataFrame(rng.normal(0.0005, 0.01, (90, 3)), idx, columns=["a", "b", "c"])
    stream, history = walk_forward_meta(sleeves, "risk_parity", 0.05, 0.95, 30, 10)
    held = held_weights(history, stream.index)
    assert held.notna().all().all()
    parts = contributions(held, sleeves.reindex(stream.index))
    np.testing.assert_allclose(parts.sum(axis=1).to_numpy(), stream.to_numpy(), rtol=0, atol=1e-14)


def test_held_weights_before_the_first_rebalance_are_nan():
    history = pd.DataFrame({"a": [0.6, 0.3]}, pd.to_datetime(["2026-01-05", "2026-01-07"]))
    held = held_weights(history, pd.date_range("2026-01-04", periods=5, freq="D"))
    assert math.isnan(held["a"].iloc[0]) and held["a"].iloc[1:].tolist() == [0.6, 0.6, 0.3, 0.3]


def test_turnover_per_rebalance_and_equal_weight_by_hand():
    history = pd.DataFrame({"a": [0.6, 0.4], "b": [0.4, 0.6]}, pd.to_datetime(["2026-01-05", "2026-02-05"]))
    assert turnover_series(history).tolist() == pytest.approx([0.5, 0.2])  # from cash ½·1.0, then ½·(0.2 + 0.2)
    frame = pd.DataFrame({"a": [0.02, 0.01], "b": [0.0, np.nan]})
    assert equal_weight(frame).tolist() == pytest.approx([0.01, 0.01])


def test_cagr_counts_periods_not_calendar_days():
    """Ours: wealth^(A/n) - 1 (quantstats uses calendar days / 365, which differs for weekday streams)."""
    r = pd.Series([0.01] * 126, pd.bdate_range("2026-01-01", periods=126))
    assert performance_metrics(r, A)["cagr"] == pytest.approx(1.01 ** A - 1)


# ------------------------------------------------------------------------------------ quantstats cross-checks
def test_volatility_sharpe_sortino_max_drawdown_match_quantstats(qs, pair):
    r, _ = pair
    ours = performance_metrics(r, A)
    assert ours["vol"] == pytest.approx(qs.stats.volatility(r, periods=A, annualize=True), rel=1e-12)
    assert ours["sharpe"] == pytest.approx(qs.stats.sharpe(r, rf=0.0, periods=A), rel=1e-12)
    assert ours["sortino"] == pytest.approx(qs.stats.sortino(r, rf=0.0, periods=A), rel=1e-12)
    assert ours["max_drawdown"] == pytest.approx(qs.stats.max_drawdown(r), rel=1e-12)
    assert drawdown_table(r, 1)["depth"].iloc[0] == pytest.approx(qs.stats.max_drawdown(r), rel=1e-12)


def test_a_first_day_loss_is_a_drawdown_in_both(qs, pair):
    r, _ = pair
    shifted = r.copy()
    shifted.iloc[0] = -0.05
    assert performance_metrics(shifted, A)["max_drawdown"] == pytest.approx(qs.stats.max_drawdown(shifted), rel=1e-12)


def test_rolling_volatility_and_sharpe_match_quantstats(qs, pair):
    r, _ = pair
    theirs_vol = qs.stats.rolling_volatility(r, rolling_period=63, periods_per_year=A)
    theirs_sharpe = qs.stats.rolling_sharpe(r, rf=0.0, rolling_period=63, annualize=True, periods_per_year=A)
    pd.testing.assert_series_equal(rolling_vol(r, 63, A).dropna(), theirs_vol.dropna(), check_names=False, rtol=1e-10)
    pd.testing.assert_series_equal(rolling_sharpe(r, 63, A).dropna(), theirs_sharpe.dropna(), check_names=False,
                                   rtol=1e-10)


def test_alpha_beta_and_information_ratio_match_quantstats(qs, pair):
    r, m = pair
    ours = relative_stats(r, m, A)
    greeks = qs.stats.greeks(r, m, periods=A)
    assert ours["beta"] == pytest.approx(greeks["beta"], rel=1e-10)
    assert ours["alpha"] == pytest.approx(greeks["alpha"], rel=1e-10)
    assert ours["information_ratio"] == pytest.approx(qs.stats.information_ratio(r, m) * math.sqrt(A), rel=1e-10)


def test_monthly_returns_match_quantstats(qs, pair):
    r, _ = pair
    theirs = qs.stats.monthly_returns(r, eoy=False, compounded=True)
    ours = monthly_table(r)
    for year in ours.index:
        for month in range(1, 13):
            value = ours.loc[year, month]
            if not math.isnan(value):
                assert value == pytest.approx(float(theirs.loc[str(year)].iloc[month - 1]), abs=1e-12), (year, month)


# ------------------------------------------------------------------------------------ edge cases (review findings)
def test_rolling_beta_of_series_without_a_common_date_is_empty():
    r = pd.Series([0.01, 0.02, -0.01], pd.date_range("2026-01-01", periods=3))
    m = pd.Series([0.01, 0.02, -0.01], pd.date_range("2026-02-01", periods=3))
    beta = rolling_beta(r, m, 2)
    assert beta.empty and beta.name == "beta"


def test_rolling_sharpe_and_beta_are_nan_on_a_window_without_variation():
    idx = pd.date_range("2026-01-01", periods=5)
    flat = pd.Series([0.01, 0.01, 0.01, 0.02, -0.01], idx)
    sharpe = rolling_sharpe(flat, 3, A)
    assert math.isnan(sharpe.iloc[2])  # 0.01, 0.01, 0.01: std 0, no Sharpe (not +inf)
    assert np.isfinite(sharpe.iloc[3:]).all()
    assert not np.isinf(rolling_sharpe(-flat, 3, A)).any()
    beta = rolling_beta(pd.Series([0.03, -0.01, 0.02, 0.0, 0.01], idx), flat, 3)
    assert math.isnan(beta.iloc[2]) and np.isfinite(beta.iloc[3:]).all()


def test_tz_aware_dates_are_utc_dates_everywhere():
    """New York 20:00 on 31 March is 1 April in UTC: the calendar tables, the report and the meta's streams
    read it as April (one rule, `performance.utc_naive`), never as the local wall time."""
    idx = pd.DatetimeIndex(["2026-03-30 12:00", "2026-03-31 20:00"]).tz_localize("America/New_York")
    r = pd.Series([0.1, 0.2], idx)
    assert list(period_returns(r, "M").index.astype(str)) == ["2026-03", "2026-04"]
    assert list(performance.utc_naive(idx)) == [pd.Timestamp("2026-03-30 16:00"), pd.Timestamp("2026-04-01 00:00")]
    assert list(_daily_index(idx, "x")) == [pd.Timestamp("2026-03-30"), pd.Timestamp("2026-04-01")]
    plain = pd.DatetimeIndex(["2026-03-31"])
    assert performance.utc_naive(plain).equals(plain)


def test_turnover_series_is_metrics_turnover_at_each_rebalance():
    history = pd.DataFrame({"a": [0.5, 0.2, np.nan], "b": [0.5, 0.5, 0.6], "c": [np.nan, 0.3, 0.4]},
                           pd.to_datetime(["2026-01-05", "2026-01-01", "2026-02-02"]))
    rows = history.sort_index()
    expected = [turnover(pd.Series(dtype=float), rows.iloc[0])] + [
        turnover(rows.iloc[i - 1], rows.iloc[i]) for i in range(1, len(rows))]
    assert turnover_series(history).tolist() == pytest.approx(expected)
    assert expected == pytest.approx([0.5, 0.3, 0.5])
