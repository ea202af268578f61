"""HTR selection (SPEC §2.2): feature hand cases, crafted universes for each relaxation stage,
hard vetoes at every stage, direction-aware alpha, dominant_signal, audit arithmetic, errors."""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy.optimize import brentq

from quantlib.sleeve import selection as sel
from quantlib.core.errors import GateError
from quantlib.sleeve.selection import (
    DEFAULT_WEIGHTS,
    SelectionError,
    SelectionParams,
    alpha_scores,
    candidate_features,
    percentile_rank,
    resolve_weights,
    select,
)
from quantlib.portfolio.stats import cvar_loss, efficiency_ratio, hurst_rs, permutation_entropy

N_DAYS = 252
WINDOW = 120
EFF = {"trend": 0.6, "hi": 0.15, "mid": 0.027, "lo": 0.005}  # strict min 0.03, relaxed min 0.024
# alpha driven by the two ratings only (makes "best by alpha" explicit in crafted universes)
RATINGS_ONLY = {k: 0.0 for k in ("momentum", "efficiency", "volatility", "entropy", "hurst", "cvar", "liquidity")}


# ---------------------------------------------------------------- hand cases for the features
def test_permutation_entropy_monotonic_is_zero():
    assert permutation_entropy(np.arange(200.0)) == 0.0
    assert permutation_entropy(-np.arange(200.0)) == 0.0
    assert permutation_entropy(np.ones(50)) == 0.0  # ties in order of appearance: one pattern


def test_permutation_entropy_bandt_pompe_example():
    # Bandt & Pompe (2002): x = 4 7 9 10 6 11 3, order 3 -> patterns 012, 012, 201, 102, 201.
    x = [4, 7, 9, 10, 6, 11, 3]
    h = -(2 * 0.4 * math.log(0.4) + 0.2 * math.log(0.2))
    assert permutation_entropy(x, order=3) == pytest.approx(h / math.log(6), abs=1e-12)
    assert permutation_entropy(x, order=3, normalize=False) == pytest.approx(h, abs=1e-12)
    # delay 2: (4,9,6) (7,10,11) (9,6,3) -> argsorts [0,2,1], [0,1,2], [2,1,0]: three distinct patterns
    assert permutation_entropy(x, order=3, delay=2) == pytest.approx(math.log(3) / math.log(6))


def test_permutation_entropy_ties_stable_and_short_input():
    # (1,1),(1,1),(1,2) are all the pattern [0, 1] when ties keep their order of appearance.
    assert permutation_entropy([1, 1, 1, 2], order=2) == 0.0
    assert permutation_entropy([1, 2, 1, 2, 1], order=2) == pytest.approx(1.0)
    assert math.isnan(permutation_entropy([1.0, 2.0, 3.0], order=5))


def test_permutation_entropy_white_noise_near_one():
    x = np.random.default_rng(3).standard_normal(10_000)
    assert permutation_entropy(x, order=5) > 0.99


def test_efficiency_ratio_and_cvar_hand_cases():
    assert efficiency_ratio([0.01, -0.02, 0.03]) == pytest.approx(0.02 / 0.06)
    assert efficiency_ratio([0.01, 0.02]) == pytest.approx(1.0)
    assert math.isnan(efficiency_ratio([0.0, 0.0]))
    # 40 returns -0.20..0.19: the 5 % quantile is -0.1805, so the tail is {-0.20, -0.19}.
    r = np.arange(-20, 20) / 100
    assert cvar_loss(r) == pytest.approx(0.195)
    assert cvar_loss(np.full(10, 0.01)) == pytest.approx(-0.01)  # all gains: a negative "loss"


def _cands(symbols, **overrides) -> pd.DataFrame:
    n = len(symbols)
    base = {"symbol": list(symbols), "direction": "LONG", "logic": "rating", "value_traded": 2e7,
            "recommend_all": 0.0, "recommend_ma": 0.0, "tick_size": 0.01, "lot_size": 0.001, "toxic": False}
    base.update(overrides)
    return pd.DataFrame({k: (v if isinstance(v, list) else [v] * n) for k, v in base.items()})


def test_candidate_features_annualization_and_nan_prefix():
    rng = np.random.default_rng(5)
    idx = pd.date_range("2025-01-01", periods=N_DAYS, freq="D")
    a = rng.normal(0.001, 0.02, N_DAYS)
    b = rng.normal(-0.002, 0.03, N_DAYS)
    b[:100] = np.nan  # shorter history
    rets = pd.DataFrame({"X:A": a, "X:B": b}, index=idx)
    cands = _cands(["X:A", "X:B", "X:NONE"], value_traded=[5e6, 3e7, 1e6])
    p = SelectionParams()
    f365 = candidate_features(rets, cands, 365, p)
    f252 = candidate_features(rets, cands, 252, p)
    assert f365.loc[0, "momentum"] == pytest.approx(a.mean() * 365)
    assert f252.loc[0, "momentum"] == pytest.approx(a.mean() * 252)
    assert f365.loc[0, "volatility"] == pytest.approx(a.std(ddof=1) * math.sqrt(365))
    assert f252.loc[0, "volatility"] == pytest.approx(a.std(ddof=1) * math.sqrt(252))
    bb = b[100:]
    assert f365.loc[1, "n_obs"] == N_DAYS - 100
    assert f365.loc[1, "momentum"] == pytest.approx(bb.mean() * 365)
    assert f365.loc[1, "efficiency"] == pytest.approx(efficiency_ratio(bb[-WINDOW:]))
    assert f365.loc[1, "entropy"] == pytest.approx(permutation_entropy(bb[-WINDOW:]))
    assert f365.loc[1, "hurst"] == pytest.approx(hurst_rs(bb))
    assert f365.loc[1, "cvar"] == pytest.approx(cvar_loss(bb))
    assert f365["liquidity"].tolist() == pytest.approx([0.5, 1.0, 0.1])
    assert f365.loc[2, "n_obs"] == 0 and np.isnan(f365.loc[2, ["momentum", "entropy", "hurst"]].astype(float)).all()


def test_cvar_of_a_short_is_the_loss_of_the_position():
    idx = pd.date_range("2025-01-01", periods=40, freq="D")
    r = np.full(40, 0.001)
    r[5], r[9] = 0.5, -0.2  # a +50 % day hurts the short; a -20 % day hurts the long
    rets = pd.DataFrame({"X:A": r}, index=idx)
    long = candidate_features(rets, _cands(["X:A"]), 365, SelectionParams()).loc[0, "cvar"]
    short = candidate_features(rets, _cands(["X:A"], direction="SHORT"), 365, SelectionParams()).loc[0, "cvar"]
    assert long == pytest.approx(cvar_loss(r)) and short == pytest.approx(cvar_loss(-np.minimum(r, 1.0)))
    assert short > long > 0  # the short's worst tail (-50 %) is larger than the long's (-20 %)


def test_candidates_contract_errors():
    rets = pd.DataFrame({"X:A": [0.01, 0.02]}, index=pd.date_range("2025-01-01", periods=2))
    with pytest.raises(ValueError, match="direction"):
        candidate_features(rets, _cands(["X:A"], direction="long"), 365, SelectionParams())
    with pytest.raises(ValueError, match="duplicate candidate key"):
        candidate_features(rets, _cands(["X:A", "X:A"]), 365, SelectionParams())
    with pytest.raises(ValueError, match="toxic"):
        candidate_features(rets, _cands(["X:A"]).drop(columns="toxic"), 365, SelectionParams())
    # the same symbol as a LONG and a SHORT atom is two candidates
    both = candidate_features(rets, _cands(["X:A", "X:A"], direction=["LONG", "SHORT"]), 365, SelectionParams())
    assert both["direction"].tolist() == ["LONG", "SHORT"]


# ---------------------------------------------------------------- alpha
def test_percentile_rank_policy():
    p = percentile_rank(pd.Series([3.0, 1.0, 2.0, 2.0, np.nan]))
    assert p.tolist() == pytest.approx([1.0, 0.25, 0.625, 0.625, 0.01])
    q = percentile_rank(pd.Series([3.0, 1.0, 2.0]), higher_is_better=False)
    assert q.tolist() == pytest.approx([1 / 3, 1.0, 2 / 3])
    assert percentile_rank(pd.Series(np.arange(200.0))).min() == pytest.approx(0.01)  # 1/200 floored


def _alpha_frame(direction: str) -> pd.DataFrame:
    mom = [-0.9, -0.4, 0.0, 0.4, 0.9]
    return pd.DataFrame({
        "symbol": [f"X:S{i}" for i in range(5)], "direction": direction,
        "momentum": mom, "recommend_all": mom, "recommend_ma": mom,
        "volatility": 0.5, "entropy": 0.9, "efficiency": 0.1, "hurst": 0.6, "liquidity": 1.0, "cvar": 0.05,
    })


def test_direction_aware_alpha():
    w = resolve_weights()
    short = alpha_scores(_alpha_frame("SHORT"), w)
    long = alpha_scores(_alpha_frame("LONG"), w)
    assert short.is_monotonic_decreasing and short.iloc[0] > short.iloc[-1]  # most bearish best
    assert long.is_monotonic_increasing and long.iloc[0] == long.min()        # ... and worst when LONG
    # best on the three signed features (p = 1); the other five tie at average rank 3/5 = 0.6
    assert short.iloc[0] == pytest.approx(0.6 ** (1.0 + 5 * 0.5))
    # mirrored features across directions score the same in a mixed sleeve
    mixed = pd.concat([_alpha_frame("LONG").iloc[[4]], _alpha_frame("SHORT").iloc[[0]]], ignore_index=True)
    a = alpha_scores(mixed, w)
    assert a.iloc[0] == pytest.approx(a.iloc[1])


def test_alpha_lower_is_better_and_hurst_higher_is_better():
    f = _alpha_frame("LONG").assign(momentum=0.0, recommend_all=0.0, recommend_ma=0.0)
    for col, better_low in (("volatility", True), ("entropy", True), ("cvar", True), ("hurst", False)):
        g = f.assign(**{col: [0.1, 0.2, 0.3, 0.4, 0.5]})
        a = alpha_scores(g, DEFAULT_WEIGHTS)
        assert (a.idxmax() == 0) == better_low, col


def test_dominant_signal_changes_ranking_and_rejects_unknown():
    f = pd.DataFrame({
        "symbol": ["X:MOM", "X:LIQ", "X:MID"], "direction": "LONG",
        "momentum": [1.0, 0.0, 0.5], "liquidity": [0.1, 1.0, 0.5],
        "recommend_all": 0.0, "recommend_ma": 0.0, "volatility": 0.5, "entropy": 0.9,
        "efficiency": 0.1, "hurst": 0.6, "cvar": 0.05,
    })
    default = alpha_scores(f, resolve_weights())
    liq = alpha_scores(f, resolve_weights(dominant_signal="liquidity"))
    assert default.idxmax() == 0 and liq.idxmax() == 1
    assert resolve_weights(dominant_signal="hurst")["hurst"] == 3.0
    assert resolve_weights({"momentum": 2.0})["momentum"] == 2.0
    with pytest.raises(ValueError, match="valid features: momentum"):
        SelectionParams(dominant_signal="sharpe")
    with pytest.raises(ValueError, match="unknown feature 'sharpe'"):
        SelectionParams(weights={"sharpe": 1.0})
    with pytest.raises(ValueError, match="min_assets"):
        SelectionParams(min_assets=30, max_assets=25)


# ---------------------------------------------------------------- crafted universes
def _factor(cluster: int) -> np.ndarray:
    """A cluster factor whose own Hurst exponent is near 0.5 (so members can land either side)."""
    for s in range(1000):
        f = np.random.default_rng([11, cluster, s]).standard_normal(N_DAYS)
        if abs(hurst_rs(f) - 0.5) < 0.015:
            return f
    raise AssertionError("no factor found")


def _series(name: str, cluster: int, eff: str, hurst: str) -> np.ndarray:
    """Returns with efficiency EFF[eff] on the last WINDOW days and raw Hurst in/out of the band.

    `eff` may end with "-" for a negative drift (bearish momentum)."""
    sign = -1.0 if eff.endswith("-") else 1.0
    eff = eff.rstrip("-")
    f = _factor(cluster)
    tag = [ord(ch) for ch in name]
    for t in range(1000):
        e = f + 0.5 * np.random.default_rng([7, cluster, *tag, t]).standard_normal(N_DAYS)
        h = hurst_rs(e)
        if (0.485 <= h <= 0.515) if hurst == "band" else (h < 0.46 or h > 0.54):
            break
    else:
        raise AssertionError("no series found")
    e = e - e[-WINDOW:].mean()  # a constant shift: Hurst (chunk-demeaned) and correlations unchanged
    c = brentq(lambda c: efficiency_ratio(e[-WINDOW:] + c) - EFF[eff], 0.0, 10.0, xtol=1e-14)
    return sign * (e + c) * 0.01


def universe(spec: list[tuple], start: str = "2025-01-01") -> tuple[pd.DataFrame, pd.DataFrame]:
    """spec rows: (symbol, cluster, eff, hurst, score[, overrides]) -- score in [-1, 1] drives both ratings."""
    idx = pd.date_range(start, periods=N_DAYS, freq="D")
    rets = pd.DataFrame({row[0]: _series(row[0], row[1], row[2], row[3]) for row in spec}, index=idx)
    rows = []
    for row in spec:
        cand = {"symbol": row[0], "direction": "LONG", "logic": "rating", "value_traded": 2e7,
                "recommend_all": row[4], "recommend_ma": row[4], "tick_size": 0.01, "lot_size": 0.001,
                "toxic": False}
        if len(row) > 5:
            cand.update(row[5])
        rows.append(cand)
    return rets, pd.DataFrame(rows)


def stages(res) -> dict[str, int]:
    return dict(zip(res.selection["symbol"], res.selection["stage"]))


def check_audit(res) -> None:
    """Funnel counts add up with the primary-reason veto counts; JSON-ready; stage counts match."""
    a = res.audit
    json.dumps(a)
    steps = {f["step"]: f["remaining"] for f in a["funnel"]}
    v = a["vetoes_by_reason"]
    assert [f["step"] for f in a["funnel"]] == ["candidates", "with_returns", "after_hard_vetoes",
                                                "after_stage1_thresholds", "selected"]
    assert steps["candidates"] == a["n_candidates"] == len(res.features)
    assert steps["with_returns"] == steps["candidates"] - v["no_returns"]
    hard = sum(v[r] for r in sel.HARD_REASONS if r != "no_returns")
    assert steps["after_hard_vetoes"] == steps["with_returns"] - hard == int((~res.features["hard_veto"]).sum())
    soft = sum(v[r] for r in sel.SOFT_REASONS)
    assert steps["after_stage1_thresholds"] == steps["after_hard_vetoes"] - soft
    assert steps["after_stage1_thresholds"] == int((res.features["veto"] == "").sum())
    assert steps["selected"] == a["n_selected"] == len(res.selection) == sum(a["selected_by_stage"].values())
    for s, n in a["selected_by_stage"].items():
        assert n == int((res.selection["stage"] == s).sum())
    assert res.selection["stage"].max() <= a["stage_reached"]
    assert not res.selection["symbol"].isin(res.features.loc[res.features["hard_veto"], "symbol"]).any()


def test_stage1_per_cluster_top_n_and_cap():
    spec = [(f"X:{c}{i}", k, "hi", "out", 0.9 - 0.2 * i - 0.05 * k) for k, c in enumerate("ABC") for i in range(3)]
    rets, cands = universe(spec)
    res = select(rets, cands, asset_class="crypto", params=SelectionParams(top_n=2, min_assets=4, max_assets=5))
    f = res.features.set_index("symbol")
    # the crafted clusters are recovered
    for c in "ABC":
        assert f.loc[[f"X:{c}{i}" for i in range(3)], "cluster"].nunique() == 1
    assert res.features["cluster"].nunique() == 3 == res.audit["n_clusters"]
    assert res.audit["stage_reached"] == 1
    # per cluster the best two by alpha are picked (6), the cap keeps the best five of them
    picks = pd.concat([g.nlargest(2, "alpha") for _, g in res.features.groupby("cluster")])
    expected = picks.nlargest(5, "alpha")["symbol"]
    assert set(res.selection["symbol"]) == set(expected)
    assert len(res.selection) == 5 and (res.selection["stage"] == 1).all()
    assert res.selection.groupby("cluster").size().max() <= 2
    assert not res.selection["symbol"].isin([f"X:{c}2" for c in "ABC"]).any()  # third of each cluster
    assert res.audit["thresholds"]["efficiency_min"] == 0.03
    check_audit(res)


def test_stage2_relaxed_thresholds():
    spec = [("X:A0", 0, "hi", "out", 0.5), ("X:A1", 0, "hi", "out", 0.4),
            ("X:B0", 1, "hi", "out", 0.5), ("X:B1", 1, "mid", "out", 0.9),
            ("X:C0", 2, "mid", "out", 0.5), ("X:C1", 2, "lo", "out", 0.9)]
    rets, cands = universe(spec)
    res = select(rets, cands, asset_class="crypto", params=SelectionParams(top_n=5, min_assets=4))
    assert res.audit["stage_reached"] == 2
    assert stages(res) == {"X:A0": 1, "X:A1": 1, "X:B0": 1, "X:B1": 2, "X:C0": 2}
    assert res.audit["thresholds"]["efficiency_min"] == pytest.approx(0.024)
    assert res.audit["thresholds"]["entropy_max"] == 1.0
    f = res.features.set_index("symbol")
    assert f.loc["X:B1", "veto"] == "efficiency_below_min" and f.loc["X:C1", "veto"] == "efficiency_below_min"
    check_audit(res)


def test_stage3_best_spectral_failure_per_empty_cluster():
    spec = [("X:A0", 0, "hi", "out", 0.5), ("X:A1", 0, "hi", "out", 0.4),
            ("X:A2", 0, "lo", "out", 1.0),                                      # A has survivors
            ("X:B0", 1, "mid", "out", 0.5),
            ("X:C0", 2, "lo", "out", 0.2), ("X:C1", 2, "lo", "out", 0.8),       # efficiency fails
            ("X:D0", 3, "hi", "band", 0.7), ("X:D1", 3, "lo", "band", -0.5),    # Hurst in the band
            ("X:D2", 3, "hi", "band", 1.0, {"toxic": True})]                    # best, but toxic
    rets, cands = universe(spec)
    res = select(rets, cands, asset_class="crypto", params=SelectionParams(top_n=5, min_assets=5))
    f = res.features.set_index("symbol")
    assert f.loc["X:D0", "veto"] == "hurst_random_walk" and 0.48 <= f.loc["X:D0", "hurst"] <= 0.52
    assert res.audit["stage_reached"] == 3
    best_c = f.loc[["X:C0", "X:C1"], "alpha"].idxmax()
    best_d = f.loc[["X:D0", "X:D1"], "alpha"].idxmax()
    assert best_c == "X:C1" and best_d == "X:D0"  # by construction (ratings)
    assert stages(res) == {"X:A0": 1, "X:A1": 1, "X:B0": 2, "X:C1": 3, "X:D0": 3}
    assert "X:D2" not in stages(res) and f.loc["X:D2", "alpha"] > f.loc["X:D0", "alpha"]
    assert f.loc["X:A2", "veto"] == "efficiency_below_min"  # a spectral failure, but cluster A is covered
    assert res.audit["thresholds"]["fallback_entropy_max"] == 0.999
    check_audit(res)


def test_stage3_fallback_respects_entropy_cap(monkeypatch):
    spec = [("X:A0", 0, "hi", "out", 0.5), ("X:A1", 0, "hi", "out", 0.4),
            ("X:C0", 2, "lo", "out", 0.2), ("X:C1", 2, "lo", "out", 0.8)]
    rets, cands = universe(spec)
    _patch_entropy(monkeypatch, {"X:C1": 0.9995})
    res = select(rets, cands, asset_class="crypto", params=SelectionParams(top_n=5, min_assets=4))
    # C1 is C's best but its entropy is above 0.999: C0 is the cluster's contribution
    assert stages(res) == {"X:A0": 1, "X:A1": 1, "X:C0": 3}
    assert res.audit["stage_reached"] == 4
    check_audit(res)


def test_stage3_skips_insufficient_history():
    spec = [("X:A0", 0, "hi", "out", 0.5), ("X:A1", 0, "hi", "out", 0.4), ("X:C0", 2, "lo", "out", 0.0)]
    rets, cands = universe(spec)
    rets["X:NEW"] = np.nan
    rets.iloc[-4:, rets.columns.get_loc("X:NEW")] = [0.01, -0.02, 0.03, 0.01]  # 4 returns: no entropy
    cands = pd.concat([cands, _cands(["X:NEW"], recommend_all=1.0, recommend_ma=1.0)], ignore_index=True)
    res = select(rets, cands, asset_class="crypto", params=SelectionParams(top_n=5, min_assets=5))
    f = res.features.set_index("symbol")
    assert f.loc["X:NEW", "veto"] == "insufficient_history" and f.loc["X:NEW", "n_obs"] == 4
    assert f.loc["X:NEW", "cluster"] != f.loc["X:C0", "cluster"]
    assert stages(res) == {"X:A0": 1, "X:A1": 1, "X:C0": 3}
    check_audit(res)


def test_stage4_top_up_by_alpha():
    spec = [("X:A0", 0, "hi", "out", 0.9), ("X:A1", 0, "hi", "out", 0.6), ("X:A2", 0, "mid", "out", -0.3),
            ("X:B0", 1, "hi", "out", 0.8), ("X:B1", 1, "mid", "out", 0.1), ("X:B2", 1, "hi", "out", -0.6),
            ("X:C0", 2, "lo", "out", 0.5), ("X:C1", 2, "lo", "out", -0.5)]
    rets, cands = universe(spec)
    res = select(rets, cands, asset_class="crypto",
                 params=SelectionParams(top_n=1, min_assets=5, weights=RATINGS_ONLY))
    f = res.features.set_index("symbol")
    top = {c: f.loc[[f"X:{c}{i}" for i in range(3)], "alpha"].idxmax() for c in "AB"}
    assert top == {"A": "X:A0", "B": "X:B0"}
    rest = f.loc[["X:A1", "X:A2", "X:B1", "X:B2"], "alpha"].nlargest(2).index.tolist()
    assert res.audit["stage_reached"] == 4
    got = stages(res)
    assert {s for s, k in got.items() if k == 1} == {"X:A0", "X:B0"}
    assert {s for s, k in got.items() if k == 3} == {f.loc[["X:C0", "X:C1"], "alpha"].idxmax()}
    assert {s for s, k in got.items() if k == 4} == set(rest)
    assert len(res.selection) == 5
    check_audit(res)


def _patch_entropy(monkeypatch, values: dict[str, float]) -> None:
    original = sel.candidate_features

    def patched(*args, **kwargs):
        out = original(*args, **kwargs)
        for sym, value in values.items():
            out.loc[out["symbol"] == sym, "entropy"] = value
        return out

    monkeypatch.setattr(sel, "candidate_features", patched)


def test_hard_vetoes_hold_when_the_book_is_short(monkeypatch):
    good = {"recommend_all": 1.0, "recommend_ma": 1.0}
    spec = [("X:A0", 0, "hi", "out", 0.5), ("X:A1", 0, "hi", "out", 0.4), ("X:A2", 0, "mid", "out", 0.3),
            ("X:B0", 1, "hi", "out", 0.2), ("X:C0", 2, "lo", "out", 0.1),
            # perfect names except for one hard veto each
            ("X:TOX", 0, "hi", "out", 1.0, {"toxic": True}),
            ("X:NOTICK", 1, "hi", "out", 1.0, {"tick_size": np.nan}),
            ("X:NOLOT", 1, "hi", "out", 1.0, {"lot_size": np.nan}),
            ("X:HOT", 2, "hi", "out", 1.0, good),
            ("X:HOTLO", 2, "lo", "out", 1.0, good)]
    rets, cands = universe(spec)
    cands = pd.concat([cands, _cands(["X:GONE"], recommend_all=1.0, recommend_ma=1.0)], ignore_index=True)
    _patch_entropy(monkeypatch, {"X:HOT": 0.9995, "X:HOTLO": 0.9995})
    res = select(rets, cands, asset_class="crypto", params=SelectionParams(top_n=15, min_assets=20))
    vetoed = {"X:TOX", "X:NOTICK", "X:NOLOT", "X:HOT", "X:HOTLO", "X:GONE"}
    assert res.audit["stage_reached"] == 4
    assert set(res.selection["symbol"]) == {"X:A0", "X:A1", "X:A2", "X:B0", "X:C0"}
    assert not res.selection["symbol"].isin(vetoed).any()
    v = res.audit["vetoes_by_reason"]
    assert (v["toxic"], v["missing_tick_size"], v["missing_lot_size"], v["entropy_above_hard_max"],
            v["no_returns"]) == (1, 1, 1, 2, 1)
    f = res.features.set_index("symbol")
    assert f.loc["X:HOTLO", "veto"] == "entropy_above_hard_max,entropy_above_max,efficiency_below_min"
    assert f.loc[list(vetoed), "hard_veto"].all() and f.loc[list(vetoed), "cluster"].isna().all()
    assert np.isnan(f.loc["X:GONE", "alpha"])
    check_audit(res)


def test_hard_entropy_veto_on_a_real_noise_series():
    """i.i.d. noise over a long window lands above 0.999 on its own (no patching)."""
    n = 30_000
    rng = np.random.default_rng(21)
    t = np.arange(n)
    idx = pd.date_range("1950-01-01", periods=n, freq="D")
    rets = pd.DataFrame({
        "X:NOISE": rng.normal(0.002, 0.01, n),
        "X:WAVE1": 0.002 + 0.01 * np.sin(t / 7.0) + 0.001 * rng.standard_normal(n),
        "X:WAVE2": 0.002 + 0.01 * np.sin(t / 5.0 + 1) + 0.001 * rng.standard_normal(n),
    }, index=idx)
    cands = _cands(list(rets.columns), recommend_all=[1.0, 0.0, 0.0])
    res = select(rets, cands, asset_class="crypto", params=SelectionParams(window=n, min_assets=2))
    f = res.features.set_index("symbol")
    assert f.loc["X:NOISE", "entropy"] > 0.999 and f.loc["X:NOISE", "hard_veto"]
    assert set(res.selection["symbol"]) == {"X:WAVE1", "X:WAVE2"}


def test_short_sleeve_selects_the_most_bearish():
    # bearish names: negative drift and ratings; bullish names: the mirror image
    spec = [(f"X:S{i}", 0, eff, "out", s)
            for i, (eff, s) in enumerate([("trend-", -0.9), ("trend-", -0.2), ("trend", 0.4), ("trend", 0.9)])]
    rets, cands = universe(spec)
    # momentum and ratings only (CVaR is measured on the asset's returns, not the position's)
    w = dict(RATINGS_ONLY, momentum=1.0)
    p = SelectionParams(top_n=2, min_assets=2, max_assets=2, weights=w)  # the cap keeps the best two
    short = select(rets, cands.assign(direction="SHORT"), asset_class="crypto", params=p)
    long = select(rets, cands, asset_class="crypto", params=p)
    assert set(short.selection["symbol"]) == {"X:S0", "X:S1"}
    assert set(long.selection["symbol"]) == {"X:S2", "X:S3"}
    assert (short.selection["direction"] == "SHORT").all()


def test_dominant_signal_sensitivity_through_select():
    spec = [("X:P0", 0, "hi", "out", 0.9, {"value_traded": 1e6}),
            ("X:P1", 0, "hi", "out", 0.0, {"value_traded": 1e7}),
            ("X:P2", 0, "hi", "out", -0.5, {"value_traded": 5e6}),
            ("X:Q0", 1, "hi", "out", 0.0)]
    rets, cands = universe(spec)
    # ratings + liquidity only: P0 = 1 * 1 * 0.25**0.5 = 0.5 beats P1 = 0.625**2 * 0.875**0.5 = 0.37;
    # liquidity dominant (3.0): P0 = 0.25**3 = 0.016 loses to P1 = 0.625**2 * 0.875**3 = 0.26
    w = {k: v for k, v in RATINGS_ONLY.items() if k != "liquidity"}
    base = select(rets, cands, asset_class="crypto", params=SelectionParams(top_n=1, min_assets=2, weights=w))
    liq = select(rets, cands, asset_class="crypto",
                 params=SelectionParams(top_n=1, min_assets=2, weights=w, dominant_signal="liquidity"))
    f = base.features.set_index("symbol")
    assert f.loc["X:P0", "alpha"] == pytest.approx(0.5)
    assert f.loc["X:P1", "alpha"] == pytest.approx(0.625**2 * 0.875**0.5)
    assert "X:P0" in set(base.selection["symbol"]) and "X:P1" not in set(base.selection["symbol"])
    assert "X:P1" in set(liq.selection["symbol"]) and "X:P0" not in set(liq.selection["symbol"])
    assert liq.audit["params"]["weights"]["liquidity"] == 3.0


def test_fewer_than_two_survivors_raises_with_funnel():
    spec = [("X:A0", 0, "hi", "out", 0.5), ("X:A1", 0, "hi", "out", 0.4, {"toxic": True}),
            ("X:B0", 1, "hi", "out", 0.4, {"tick_size": np.nan})]
    rets, cands = universe(spec)
    with pytest.raises(SelectionError) as err:
        select(rets, cands, asset_class="equities", params=SelectionParams(min_assets=2))
    msg = str(err.value)
    assert isinstance(err.value, GateError) and "\n" not in msg
    assert "funnel: candidates=3 -> with_returns=3 -> after_hard_vetoes=1" in msg
    assert "toxic=1" in msg and "missing_tick_size=1" in msg and "selection:" in msg
    assert "never relaxed" in msg and err.value.audit["n_selected"] == 1
    with pytest.raises(SelectionError, match="candidates=0"):
        select(rets, cands.iloc[:0], asset_class="crypto")


def test_cap_and_defaults_on_a_large_universe():
    spec = [(f"X:N{k}{i}", k, "hi", "out", float(np.sin(7 * k + i))) for k in range(4) for i in range(10)]
    rets, cands = universe(spec)
    res = select(rets, cands, asset_class="crypto")
    assert res.audit["stage_reached"] == 1 and len(res.selection) == 25
    assert res.selection["alpha"].min() >= res.features.loc[
        ~res.features["symbol"].isin(res.selection["symbol"]), "alpha"].max()
    assert list(res.selection.columns[:6]) == ["symbol", "direction", "logic", "cluster", "alpha", "stage"]
    for col in sel.FEATURES:
        assert col in res.selection.columns
    check_audit(res)
    eq = select(rets, cands, asset_class="equities")
    assert eq.audit["thresholds"]["entropy_max"] == 0.995
    assert eq.features["momentum"].to_numpy() == pytest.approx(res.features["momentum"].to_numpy() * 252 / 365)


def test_no_look_ahead_window_slice():
    spec = [("X:A0", 0, "hi", "out", 0.5), ("X:A1", 0, "hi", "out", 0.4),
            ("X:B0", 1, "mid", "out", 0.3), ("X:C0", 2, "lo", "out", 0.2)]
    rets, cands = universe(spec)
    k = 200
    future = pd.DataFrame(np.random.default_rng(1).normal(0, 0.5, (60, rets.shape[1])), columns=rets.columns,
                          index=pd.date_range(rets.index[-1] + pd.Timedelta(days=1), periods=60, freq="D"))
    extended = pd.concat([rets, future])
    extended.iloc[k:N_DAYS] *= -3.0  # change everything after the window
    p = SelectionParams(top_n=5, min_assets=3)
    a = select(rets.iloc[:k], cands, asset_class="crypto", params=p)
    b = select(extended.iloc[:k], cands, asset_class="crypto", params=p)
    pd.testing.assert_frame_equal(a.selection, b.selection)
    pd.testing.assert_frame_equal(a.features, b.features)
    assert a.audit == b.audit


def test_bad_asset_class():
    rets, cands = universe([("X:A0", 0, "hi", "out", 0.5), ("X:A1", 0, "hi", "out", 0.4)])
    with pytest.raises(ValueError, match="asset_class"):
        select(rets, cands, asset_class="fx")
