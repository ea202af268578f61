"""Pre-optimization analysis (quantlib.sleeve.analysis): antifragility, regime, regime caps, clusters."""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from quantlib.sleeve.analysis import (ANTIFRAGILITY_COLUMNS, antifragility, atom_clusters, regime,
                               regime_cluster_cap, regime_label)
from quantlib.portfolio.stats import hurst_rs

HAND = pd.DataFrame({"a": [0.1, -0.5, 0.2], "b": [-0.1, -0.1, 0.4], "c": [0.0, 0.05, -0.05]},
                    index=pd.date_range("2026-01-01", periods=3, name="date"))


def _pop_skew(x):
    d = np.asarray(x) - np.mean(x)
    return np.mean(d ** 3) / np.mean(d ** 2) ** 1.5


def _pop_excess_kurt(x):
    d = np.asarray(x) - np.mean(x)
    return np.mean(d ** 4) / np.mean(d ** 2) ** 2 - 3.0


# ---------------------------------------------------------------- antifragility

def test_antifragility_hand_case():
    t = antifragility(HAND, 252)
    assert list(t.columns) == ANTIFRAGILITY_COLUMNS and t.index.name == "atom_id"
    assert list(t.index) == ["a", "b", "c"]
    # skew sign: a has a large loss (left tail), b a large gain (right tail), c is symmetric
    assert t.loc["a", "skew"] < 0 < t.loc["b", "skew"]
    assert t.loc["a", "skew"] == pytest.approx(_pop_skew(HAND["a"]))
    assert t.loc["b", "skew"] == pytest.approx(1 / math.sqrt(2))  # two equal + one outlier, bias=True
    assert t.loc["c", "skew"] == pytest.approx(0.0, abs=1e-12)
    # population (bias=True) excess kurtosis of any 3 distinct-valued points is 1.5 - 3
    assert t["kurtosis"].tolist() == pytest.approx([-1.5, -1.5, -1.5])
    assert t.loc["a", "vol"] == pytest.approx(np.std([0.1, -0.5, 0.2], ddof=1) * math.sqrt(252))
    # linear quantiles on 3 points: q95 at position 1.9, q05 at position 0.1
    assert t["tail_gain"].tolist() == pytest.approx([0.2, 0.4, 0.05])
    assert t["var95"].tolist() == pytest.approx([0.44, 0.1, 0.045])
    assert t["cvar95"].tolist() == pytest.approx([0.5, 0.1, 0.05])
    assert t["tail_ratio"].tolist() == pytest.approx([0.19 / 0.44, 0.35 / 0.1, 1.0])
    # wealth a: 1.1, 0.55, 0.66 -> -0.5; b: 0.9, 0.81 -> -0.19 (from the initial 1.0); c: 1.05 -> 0.9975
    assert t["max_drawdown"].tolist() == pytest.approx([-0.5, -0.19, -0.05])


def test_antifragility_moments_equal_scipy():
    """skew / excess kurtosis are scipy.stats' (bias=True, fisher=True), computed without importing it."""
    from scipy import stats as sps

    rng = np.random.default_rng(7)
    returns = pd.DataFrame({"t": rng.standard_t(3, 500) * 0.02, "lognormal": rng.lognormal(0, 0.5, 500) - 1.1,
                            "short": [0.01, -0.03, 0.02, 0.0]  + [0.0] * 496})
    t = antifragility(returns, 252)
    for atom in returns:
        r = returns[atom].to_numpy()
        assert t.loc[atom, "skew"] == pytest.approx(sps.skew(r, bias=True), rel=1e-12)
        assert t.loc[atom, "kurtosis"] == pytest.approx(sps.kurtosis(r, fisher=True, bias=True), rel=1e-12)


def test_antifragility_significance_and_minmax():
    sig = 3 / 252  # N < A
    t = antifragility(HAND, 252)
    assert t["significance"].tolist() == pytest.approx([sig] * 3)
    # b has both the largest skew and the largest tail gain -> 1 + 1
    assert t.loc["b", "antifragility"] == pytest.approx(2 * sig)
    # a: lowest skew (0) and tail gain (0.2 - 0.05) / (0.4 - 0.05)
    assert t.loc["a", "antifragility"] == pytest.approx(3 / 7 * sig)
    # c: lowest tail gain (0) and skew (0 - skew_a) / (skew_b - skew_a)
    sa = _pop_skew(HAND["a"])
    assert t.loc["c", "antifragility"] == pytest.approx((0 - sa) / (1 / math.sqrt(2) - sa) * sig)
    # N > A: significance capped at 1
    t2 = antifragility(HAND, 2)
    assert t2["significance"].tolist() == [1.0, 1.0, 1.0]
    assert t2.loc["b", "antifragility"] == pytest.approx(2.0)


def test_antifragility_constant_column_maps_to_zero():
    # identical atoms: skew and tail gain are constant across atoms -> minmax 0 -> antifragility 0
    same = pd.DataFrame({"x": HAND["b"], "y": HAND["b"]})
    assert antifragility(same, 2)["antifragility"].tolist() == [0.0, 0.0]
    # a flat atom has undefined skew/kurtosis (NaN) and scores 0, not NaN
    flat = HAND.assign(f=0.0)
    t = antifragility(flat, 2)
    assert math.isnan(t.loc["f", "skew"]) and t.loc["f", "antifragility"] == pytest.approx(0.0)


def test_tail_gain_is_strictly_above_q95():
    # 21 points: q95 sits exactly on the 20th sorted value (0.09); only 0.10 is strictly above it
    grid = pd.DataFrame({"g": np.arange(21) / 100 - 0.1, "t": [0.0] * 19 + [0.1, 0.1]})
    t = antifragility(grid, 252)
    assert t.loc["g", "tail_gain"] == pytest.approx(0.10)
    # ties at the maximum: nothing strictly above q95 -> mean of r >= q95
    assert t.loc["t", "tail_gain"] == pytest.approx(0.1)


def test_antifragility_rejects_nan():
    with pytest.raises(ValueError, match="NaN"):
        antifragility(HAND.assign(d=[0.1, np.nan, 0.0]), 252)


# ---------------------------------------------------------------- regime

def _scaled(z: np.ndarray, std: float) -> np.ndarray:
    z = z - z.mean()
    return z / z.std(ddof=1) * std


def test_regime_calm_series_is_quiet():
    rng = np.random.default_rng(11)
    x = rng.normal(0.0, 0.01, (400, 3))
    x[-10:] *= 0.5  # the last two weeks are calmer than usual
    doc = regime(pd.DataFrame(x))
    assert doc["vol_ratio"] < 0.7
    assert doc["score"] < 0.7 and doc["label"] == "QUIET"
    assert doc["n_days"] == 400
    json.dumps(doc, allow_nan=False)


def test_regime_vol_spike_four_times():
    rng = np.random.default_rng(5)
    calm = _scaled(rng.normal(size=4990), 0.01)
    spike = _scaled(rng.normal(size=10), 0.04)  # exactly 4x the std of the calm part
    r = np.concatenate([calm, spike])
    doc = regime(pd.DataFrame({"u": r, "v": r}))  # basket == r
    # both parts have mean 0, so the full sample variance is ((4989 + 9 * 16) * 0.01^2) / 4999
    expected = 0.04 / math.sqrt((4989 + 9 * 16) * 0.01 ** 2 / 4999)
    assert doc["vol_ratio"] == pytest.approx(expected, rel=1e-9)
    assert doc["vol_ratio"] == pytest.approx(4.0, abs=0.1)
    assert doc["label"] in ("TURBULENT", "CRISIS") and doc["score"] >= 1.2


def test_regime_score_term_by_term():
    rng = np.random.default_rng(2)
    x = rng.standard_t(3, size=(64, 2)) * 0.01
    x[-10:] *= 2.0
    doc = regime(pd.DataFrame(x, columns=["p", "q"]))
    rb = x.mean(axis=1)
    vol_ratio = np.std(rb[-10:], ddof=1) / np.std(rb, ddof=1)
    a = np.abs(rb)
    clustering = np.corrcoef(a[1:], a[:-1])[0, 1]
    fat_tail = min(1.0, abs(_pop_excess_kurt(rb)) / 10)
    h = hurst_rs(rb)
    trend = 2 * abs(h - 0.5)
    assert doc["vol_ratio"] == pytest.approx(vol_ratio)
    assert doc["clustering"] == pytest.approx(clustering)
    assert doc["fat_tail"] == pytest.approx(fat_tail)
    assert doc["hurst"] == pytest.approx(h) and doc["trend"] == pytest.approx(trend)
    score = 0.45 * vol_ratio + 0.2 * clustering + 0.2 * fat_tail + 0.15 * trend
    assert doc["score"] == pytest.approx(score)
    assert doc["label"] == regime_label(score)
    assert set(doc) == {"score", "label", "vol_ratio", "clustering", "fat_tail", "hurst", "trend", "n_days"}
    assert all(type(doc[k]) is float for k in doc if k not in ("label", "n_days"))


def test_regime_short_series_hurst_undefined_is_null():
    doc = regime(pd.DataFrame({"a": [0.01, -0.02, 0.03, 0.0, 0.01]}))
    assert doc["hurst"] is None and doc["trend"] == 0.0
    json.dumps(doc, allow_nan=False)


def test_regime_label_thresholds():
    assert regime_label(1.8) == "CRISIS"
    assert regime_label(1.79) == "TURBULENT" and regime_label(1.2) == "TURBULENT"
    assert regime_label(1.19) == "NORMAL" and regime_label(0.7) == "NORMAL"
    assert regime_label(0.69) == "QUIET"


# ---------------------------------------------------------------- caps

def test_regime_cluster_cap():
    assert regime_cluster_cap("NORMAL") == 0.25
    assert regime_cluster_cap("QUIET") == 0.25
    assert regime_cluster_cap("TURBULENT") == pytest.approx(0.20)
    assert regime_cluster_cap("CRISIS") == pytest.approx(0.15)
    # a tighter base cap is never loosened by the regime
    assert regime_cluster_cap("NORMAL", base_cap=0.1) == pytest.approx(0.1)
    assert regime_cluster_cap("TURBULENT", base_cap=0.1) == pytest.approx(0.1)
    assert regime_cluster_cap("CRISIS", base_cap=0.5) == pytest.approx(0.15)
    with pytest.raises(ValueError):
        regime_cluster_cap("PANIC")


def test_window_caps_are_the_optimizers_floored_caps():
    """The regime cap is not floored; the optimizer floors it (1/n_clusters) and the atom cap (1/n)
    in `effective_caps`, and `window_caps` reports exactly the caps every profile's info records."""
    from quantlib.core.profiles import load_profile
    from quantlib.sleeve.window import analyze_window, optimize_window, window_caps

    base = load_profile("demo").profile
    rng = np.random.default_rng(3)
    synth = pd.DataFrame(rng.normal(0.0005, 0.01, (200, 12)), columns=[f"a{i}" for i in range(12)])
    synth.iloc[-10:] *= 6.0                                  # a volatility burst: CRISIS regime
    for atom_cap, cluster_cap in [(0.25, 0.25), (0.01, 0.01), (0.3, 1.0)]:
        opt = base.optimizer.model_copy(update={"atom_cap": atom_cap, "cluster_cap": cluster_cap})
        profile = base.model_copy(update={"optimizer": opt})
        clusters, state = analyze_window(synth, profile)
        assert state["label"] == "CRISIS" and "atom_cap" not in state
        assert state["cluster_cap"] == min(cluster_cap, 0.15)           # the regime's cap, unfloored
        u, c = window_caps(clusters, state, profile)
        assert u == max(atom_cap, 1 / 12) and c >= max(state["cluster_cap"], 1 / clusters["n_clusters"])
        _, infos = optimize_window(synth, clusters, state, profile, methods=["equal_weight", "min_variance"])
        assert all((i["atom_cap"], i["cluster_cap"]) == (u, c) for i in infos.values())


# ---------------------------------------------------------------- clusters

def test_atom_clusters_two_blocks_json_ready():
    rng = np.random.default_rng(8)
    n = 250
    f1, f2 = rng.normal(0, 0.02, n), rng.normal(0, 0.02, n)
    cols = {}
    for i in range(3):
        cols[f"BTC_L{i}"] = f1 + rng.normal(0, 0.004, n)
        cols[f"SPX_L{i}"] = f2 + rng.normal(0, 0.004, n)
    doc = atom_clusters(pd.DataFrame(cols))
    assert doc["n_clusters"] == 2 and list(doc["clusters"]) == ["1", "2"]
    groups = sorted(sorted(v) for v in doc["clusters"].values())
    assert groups == [["BTC_L0", "BTC_L1", "BTC_L2"], ["SPX_L0", "SPX_L1", "SPX_L2"]]
    assert doc["labels"]["BTC_L0"] == doc["labels"]["BTC_L2"] != doc["labels"]["SPX_L1"]
    assert len(doc["linkage"]) == 5 and all(len(row) == 4 for row in doc["linkage"])
    assert doc["threshold"] == 0.45
    text = json.dumps(doc, allow_nan=False)  # raises on numpy scalars or NaN
    assert json.loads(text) == doc

    def walk(o):
        if isinstance(o, dict):
            for k, v in o.items():
                assert type(k) is str
                walk(v)
        elif isinstance(o, list):
            for v in o:
                walk(v)
        else:
            assert type(o) in (str, int, float), type(o)

    walk(doc)
