"""Sleeve tearsheet tables (quantlib.sleeve.tearsheet) on tiny hand-computed series.

Covered: `portfolio_returns` (static weights on synthetic streams, an atom without weight counts 0),
`in_sample_table` (CAGR, vol, Sharpe, Sortino, max drawdown, Calmar, hit rate, VaR/CVaR, total return
computed by hand on five returns, then cross-checked against plain numpy formulas on a longer series),
`risk_contributions` (hand-computed shares on an uncorrelated pair, numpy cross-check), `profile_tables`
(weights with direction and risk share, cluster exposure) and `markdown_summary` (the table row, the
largest physical positions with their sign, the audit verdicts).
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from quantlib.core.gates import Check, GateResult
from quantlib.portfolio.metrics import METRIC_COLUMNS
from quantlib.sleeve import tearsheet

DAYS = pd.date_range("2026-01-01", periods=5, freq="D", tz="UTC")
# two synthetic atoms whose 50/50 portfolio returns R = [0.10, -0.20, 0.25, 0.00, -0.12]
SYNTHETIC = pd.DataFrame({"A": [0.10, -0.30, 0.30, 0.10, -0.12], "B": [0.10, -0.10, 0.20, -0.10, -0.12]}, index=DAYS)
R = [0.10, -0.20, 0.25, 0.00, -0.12]


def weights(profile: str, **by_atom: float) -> pd.DataFrame:
    return pd.DataFrame({"profile": profile, "atom_id": list(by_atom), "weight": list(by_atom.values())})


# ------------------------------------------------------------------ portfolio_returns
def test_portfolio_returns_apply_each_profiles_static_weights():
    w = pd.concat([weights("half", A=0.5, B=0.5), weights("a_only", A=1.0), weights("ghost", A=1.0, Z=0.3)])
    portfolio = tearsheet.portfolio_returns(SYNTHETIC, w)
    assert list(portfolio.columns) == ["half", "a_only", "ghost"] and portfolio.index.equals(DAYS)
    assert portfolio["half"].tolist() == pytest.approx(R, abs=1e-15)
    assert portfolio["a_only"].tolist() == SYNTHETIC["A"].tolist()  # B has no weight: it counts 0
    assert portfolio["ghost"].tolist() == SYNTHETIC["A"].tolist()  # an atom without a stream is ignored


# ------------------------------------------------------------------ in_sample_table, by hand
def test_in_sample_metrics_by_hand_on_five_returns():
    portfolio = tearsheet.portfolio_returns(SYNTHETIC, weights("half", A=0.5, B=0.5))
    # annualization 5 with 5 returns: exactly one year, so CAGR equals the total return
    stats = tearsheet.in_sample_table(portfolio, annualization=5)
    assert list(stats.index) == ["half"] and list(stats.columns) == METRIC_COLUMNS
    row = stats.loc["half"]
    # wealth 1.1, 0.88, 1.1, 1.1, 0.968: total -3.2 %, the worst fall 1.1 -> 0.88 = -20 %
    assert row["total_return"] == pytest.approx(-0.032)
    assert row["cagr"] == pytest.approx(-0.032)
    assert row["max_drawdown"] == pytest.approx(-0.20)
    assert row["calmar"] == pytest.approx(-0.032 / 0.20)
    # mean 0.03 / 5 = 0.006; deviations 0.094, -0.206, 0.244, -0.006, -0.126 -> squares sum 0.12672
    std = math.sqrt(0.12672 / 4)
    assert row["vol"] == pytest.approx(std * math.sqrt(5))
    assert row["sharpe"] == pytest.approx(0.006 / std * math.sqrt(5))
    # downside deviation over all 5 days: sqrt((0.2^2 + 0.12^2) / 5)
    downside = math.sqrt((0.04 + 0.0144) / 5)
    assert row["sortino"] == pytest.approx(0.006 * 5 / (downside * math.sqrt(5)))
    assert row["hit_rate"] == pytest.approx(2 / 5)  # the zero day is a miss
    # sorted -0.20, -0.12, 0, 0.10, 0.25: q05 at position 0.2 -> -0.20 + 0.2 * 0.08 = -0.184
    assert row["var95"] == pytest.approx(0.184)
    assert row["cvar95"] == pytest.approx(0.20)
    assert row["n_days"] == 5


def test_cagr_annualizes_with_the_number_of_returns():
    portfolio = pd.DataFrame({"p": [0.10, -0.20, 0.25, 0.00]}, index=DAYS[:4])  # wealth ends at 1.1
    row = tearsheet.in_sample_table(portfolio, annualization=2).loc["p"]  # 4 returns = two years
    assert row["cagr"] == pytest.approx(math.sqrt(1.1) - 1)
    assert row["total_return"] == pytest.approx(0.1) and row["max_drawdown"] == pytest.approx(-0.2)
    # mean 0.0375, squared deviations sum 0.106875; Sortino: downside sqrt(0.04 / 4) = 0.1
    assert row["sharpe"] == pytest.approx(0.0375 / math.sqrt(0.106875 / 3) * math.sqrt(2))
    assert row["sortino"] == pytest.approx(0.0375 * 2 / (0.1 * math.sqrt(2)))


def test_a_profile_that_never_loses_has_no_drawdown_and_no_calmar():
    portfolio = pd.DataFrame({"up": [0.01, 0.02, 0.0, 0.01, 0.03]}, index=DAYS)
    row = tearsheet.in_sample_table(portfolio, annualization=365).loc["up"]
    assert row["max_drawdown"] == 0.0 and math.isnan(row["calmar"]) and math.isnan(row["sortino"])
    assert row["cagr"] == pytest.approx((1.01 * 1.02 * 1.01 * 1.03) ** (365 / 5) - 1)


def test_in_sample_metrics_match_plain_numpy_formulas():
    rng = np.random.default_rng(11)
    r = rng.normal(0.001, 0.02, 250)
    portfolio = pd.DataFrame({"p": r}, index=pd.date_range("2025-01-01", periods=250, freq="D"))
    row = tearsheet.in_sample_table(portfolio, annualization=365).loc["p"]
    wealth = np.cumprod(1 + r)
    peak = np.maximum.accumulate(np.concatenate([[1.0], wealth]))[1:]
    std = np.sqrt(np.sum((r - r.mean()) ** 2) / (r.size - 1))
    assert row["cagr"] == pytest.approx(wealth[-1] ** (365 / 250) - 1, rel=1e-12)
    assert row["vol"] == pytest.approx(std * np.sqrt(365), rel=1e-12)
    assert row["sharpe"] == pytest.approx(r.mean() / std * np.sqrt(365), rel=1e-12)
    assert row["max_drawdown"] == pytest.approx((wealth / peak - 1).min(), rel=1e-12)
    assert row["hit_rate"] == pytest.approx(np.count_nonzero(r > 0) / 250)


# ------------------------------------------------------------------ risk_contributions
UNCORRELATED = pd.DataFrame({"A": [0.01, -0.01, 0.01, -0.01], "B": [0.02, 0.02, -0.02, -0.02]})


@pytest.mark.parametrize("w, shares", [
    ({"A": 0.5, "B": 0.5}, [0.2, 0.8]),  # cov 0, var B = 4 var A: shares 0.25 v : 0.25 * 4 v
    ({"A": 2 / 3, "B": 1 / 3}, [0.5, 0.5]),  # (4/9) v : (1/9) 4v -> equal risk
    ({"A": 1.0}, [1.0, 0.0]),  # an atom without weight carries no risk
])
def test_risk_shares_by_hand_on_an_uncorrelated_pair(w, shares):
    out = tearsheet.risk_contributions(UNCORRELATED, pd.Series(w))
    assert out.name == "risk_share" and list(out.index) == ["A", "B"]
    assert out.tolist() == pytest.approx(shares)


def test_risk_shares_match_a_numpy_covariance_and_sum_to_one():
    rng = np.random.default_rng(3)
    x = rng.normal(0, 0.01, (60, 4)) + rng.normal(0, 0.01, (60, 1))  # correlated through a common factor
    frame = pd.DataFrame(x, columns=list("ABCD"))
    w = np.array([0.1, 0.2, 0.3, 0.4])
    centred = x - x.mean(axis=0)
    cov = centred.T @ centred / (len(x) - 1)
    expected = w * (cov @ w) / (w @ cov @ w)
    out = tearsheet.risk_contributions(frame, pd.Series(w, index=list("ABCD")))
    assert out.to_numpy() == pytest.approx(expected, rel=1e-12)
    assert out.sum() == pytest.approx(1.0)


def test_risk_shares_are_nan_without_any_variance():
    out = tearsheet.risk_contributions(UNCORRELATED, pd.Series({"A": 0.0, "B": 0.0}))
    assert out.isna().all() and len(out) == 2


# ------------------------------------------------------------------ profile_tables
def test_profile_tables_join_directions_and_sum_cluster_exposure():
    atoms = pd.DataFrame({"atom_id": ["A", "B", "C"], "symbol": ["X:A", "X:B", "X:C"], "logic": "r",
                          "direction": ["LONG", "SHORT", "LONG"]})
    synthetic = UNCORRELATED.assign(C=[0.0, 0.01, 0.0, -0.01])
    w = pd.concat([weights("hrp", A=0.2, B=0.5, C=0.3).assign(cluster=[1, 2, 1]),
                   weights("mv", A=1.0, B=0.0, C=0.0).assign(cluster=[1, 2, 1])])
    tables = tearsheet.profile_tables("hrp", synthetic, w, atoms)
    table = tables["weights"]
    assert table["atom_id"].tolist() == ["B", "C", "A"]  # largest weight first
    assert table["direction"].tolist() == ["SHORT", "LONG", "LONG"] and set(table["profile"]) == {"hrp"}
    shares = tearsheet.risk_contributions(synthetic, pd.Series({"A": 0.2, "B": 0.5, "C": 0.3}))
    assert table.set_index("atom_id")["risk_share"].to_dict() == pytest.approx(shares.to_dict())
    clusters = tables["clusters"].set_index("cluster")
    assert clusters["weight"].to_dict() == pytest.approx({1: 0.5, 2: 0.5})
    assert clusters["atoms"].to_dict() == {1: 2, 2: 1}
    assert clusters["risk_share"].to_dict() == pytest.approx({1: shares["A"] + shares["C"], 2: shares["B"]})
    assert clusters["risk_share"].sum() == pytest.approx(1.0)


# ------------------------------------------------------------------ markdown_summary
def test_markdown_summary_lists_stats_signed_positions_and_audit_verdicts():
    portfolio = tearsheet.portfolio_returns(SYNTHETIC, weights("hrp", A=0.5, B=0.5))
    stats = tearsheet.in_sample_table(portfolio, annualization=5)
    flattened = pd.DataFrame({"profile": "hrp", "symbol": [f"X:S{i}" for i in range(7)],
                              "net_weight": [0.05, -0.30, 0.20, 0.10, -0.15, 0.12, 0.08]})
    audit = GateResult("audit", [Check("RETURNS", True, "5 dates x 2 assets"),
                                 Check("STABLE_SUM", False, "sum 0.9", subject="hrp"),
                                 Check("SIGN_TEST_PRE", False, "1 error(s)", required=False)])
    md = tearsheet.markdown_summary("run-1", "demo_crypto_long", stats, flattened, audit, ("2026-01-01", "2026-01-05"))
    lines = md.splitlines()
    assert lines[0] == "# Sleeve tearsheet: `demo_crypto_long`"
    assert "Run `run-1` · training window 2026-01-01 → 2026-01-05 (all figures **in-sample**)" in lines
    sharpe = 0.006 / math.sqrt(0.12672 / 4) * math.sqrt(5)
    sortino = 0.006 * 5 / (math.sqrt(0.01088) * math.sqrt(5))
    vol = math.sqrt(0.12672 / 4) * math.sqrt(5)
    assert f"| hrp | -3.20% | {vol:.2%} | {sharpe:.2f} | {sortino:.2f} | -20.00% | -0.16 |" in lines
    # the five largest |net| in order, shorts negative
    assert "- **hrp**: X:S1 -30.00%, X:S2 +20.00%, X:S4 -15.00%, X:S5 +12.00%, X:S3 +10.00%" in lines
    assert "## Audit gate: FAIL" in lines
    assert "| RETURNS | PASS | yes | 5 dates x 2 assets |" in lines
    assert "| STABLE_SUM:hrp | FAIL | yes | sum 0.9 |" in lines
    assert "| SIGN_TEST_PRE | FAIL | no | 1 error(s) |" in lines
    assert md.endswith("\n")
    passing = GateResult("audit", [Check("RETURNS", True, "ok")])
    assert "## Audit gate: PASS" in tearsheet.markdown_summary("run-1", "p", stats, flattened, passing, ("a", "b"))
