"""quantlib.portfolio.optimize: native engine == riskfolio engine, invariants, hand cases, Stable Sum Gate."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from quantlib.core.enums import Engine, RiskMethod
from quantlib.core.errors import GateError, OptimizationError
from quantlib.portfolio import optimize as opt
from quantlib.portfolio.caps import apply_caps, effective_caps
from quantlib.portfolio.covariance import ledoit_wolf
from quantlib.portfolio.optimize import optimize, optimize_gated, stable_sum_gate
from quantlib.portfolio.problem import Problem
from quantlib.portfolio.qp import QP

METHODS = list(RiskMethod)       # members; other tests pass the plain strings
ENGINES = list(Engine)
CONVEX = ("min_variance", "max_sharpe", "risk_parity")


def factor_returns(n: int, days: int = 500, seed: int = 11) -> pd.DataFrame:
    """Seeded synthetic daily returns: 3 factors + idiosyncratic noise of varying size + drift."""
    rng = np.random.default_rng(seed)
    f = rng.normal(0.0, 0.008, (days, 3))
    b = rng.normal(0.6, 0.5, (n, 3))
    eps = rng.normal(0.0, 1.0, (days, n)) * rng.uniform(0.006, 0.025, n)
    return pd.DataFrame(f @ b.T + eps + rng.normal(0.0004, 0.0004, n), columns=[f"S{i:02d}" for i in range(n)])


@pytest.fixture(scope="module")
def synth() -> pd.DataFrame:
    return factor_returns(25)


@pytest.fixture(scope="module")
def sp500() -> pd.DataFrame:
    from skfolio.datasets import load_sp500_dataset

    prices = load_sp500_dataset()
    return prices.pct_change().iloc[-1000:].dropna()


@pytest.fixture(scope="module")
def clusters(synth) -> pd.Series:
    return pd.Series(np.arange(synth.shape[1]) % 4, index=synth.columns)


def _data(request, name: str) -> pd.DataFrame:
    return request.getfixturevalue(name)


def _check_feasible(w: pd.Series, atom_cap: float, clusters: pd.Series | None = None,
                    cluster_cap: float = 1.0) -> None:
    assert np.all(np.isfinite(w)) and (w >= 0).all()
    assert abs(w.sum() - 1.0) <= 1e-12
    assert w.max() <= atom_cap + 1e-12
    if clusters is not None:
        assert w.groupby(clusters.reindex(w.index)).sum().max() <= cluster_cap + 1e-12


# ------------------------------------------------------------------------------------ covariance

@pytest.mark.parametrize("shape", [(500, 25, 0.001), (60, 100, 0.0), (30, 1, 0.0), (1200, 3, 0.0),
                                   (400, 8, 5.0)])     # means >> sd: the centered code path
def test_ledoit_wolf_equals_sklearn(shape):
    from sklearn.covariance import LedoitWolf

    t, n, offset = shape
    rng = np.random.default_rng(t + n)
    x = rng.normal(0, 0.01, (t, n)) @ rng.normal(0, 1, (n, n)) * 0.3 + offset
    cov, delta = ledoit_wolf(x)
    ref = LedoitWolf(assume_centered=False).fit(x)
    assert abs(delta - ref.shrinkage_) <= 1e-12
    np.testing.assert_allclose(cov, ref.covariance_, rtol=1e-12, atol=1e-18)
    if n > 1:
        assert 0 < delta < 1


# ------------------------------------------------------------------------------ engine agreement

@pytest.mark.parametrize("data", ["synth", "sp500"])
@pytest.mark.parametrize("linkage", ["ward", "single"])
def test_hrp_native_equals_riskfolio_exactly(request, data, linkage):
    rets = _data(request, data)
    nat = optimize(rets, "hrp", "native", linkage=linkage, atom_cap=1.0)
    rf = optimize(rets, "hrp", "riskfolio", linkage=linkage, atom_cap=1.0)
    assert np.abs(nat - rf).max() <= 1e-12
    assert nat.index.equals(rets.columns)


def test_hrp_linkage_matters_and_is_passed(synth):
    ward = optimize(synth, "hrp", linkage="ward", atom_cap=1.0)
    single = optimize(synth, "hrp", linkage="single", atom_cap=1.0)
    assert np.abs(ward - single).max() > 1e-4


@pytest.mark.parametrize("linkage", ["ward", "single"])
def test_hrp_matches_skfolio(sp500, linkage):
    from skfolio.cluster import HierarchicalClustering, LinkageMethod
    from skfolio.distance import PearsonDistance
    from skfolio.moments import LedoitWolf
    from skfolio.optimization import HierarchicalRiskParity
    from skfolio.prior import EmpiricalPrior
    from skfolio.seriation import HierarchicalSeriation

    model = HierarchicalRiskParity(
        prior_estimator=EmpiricalPrior(covariance_estimator=LedoitWolf()),
        distance_estimator=PearsonDistance(),
        seriation_estimator=HierarchicalSeriation(
            hierarchical_clustering_estimator=HierarchicalClustering(linkage_method=LinkageMethod(linkage)),
            optimal_ordering=False),
        distance_from_prior=False,
    ).fit(sp500)
    ours = optimize(sp500, "hrp", linkage=linkage, atom_cap=1.0)
    assert np.abs(ours.to_numpy() - model.weights_).max() <= 1e-12


@pytest.mark.parametrize("data", ["synth", "sp500"])
@pytest.mark.parametrize("method", CONVEX)
def test_convex_native_equals_riskfolio(request, data, method):
    rets = _data(request, data)
    nat = optimize(rets, method, "native")
    rf = optimize(rets, method, "riskfolio")
    assert np.abs(nat - rf).max() <= 1e-5


@pytest.mark.parametrize("method", METHODS)
def test_engines_agree_with_cluster_and_atom_caps(synth, clusters, method):
    kw = {"clusters": clusters, "cluster_cap": 0.3, "atom_cap": 0.07}
    nat = optimize(synth, method, "native", **kw)
    rf = optimize(synth, method, "riskfolio", **kw)
    _check_feasible(nat, 0.07, clusters, 0.3)
    _check_feasible(rf, 0.07, clusters, 0.3)
    assert np.abs(nat - rf).max() <= (1e-12 if method in ("hrp", "equal_weight") else 1e-5)


@pytest.mark.parametrize("method", ["min_variance", "max_sharpe"])
def test_engines_agree_when_caps_add_up_to_one(synth, clusters, method):
    # cluster_cap 0.1 is raised to 1/4: every cluster must sit exactly at its cap
    nat = optimize(synth, method, "native", clusters=clusters, cluster_cap=0.1, atom_cap=0.06)
    rf = optimize(synth, method, "riskfolio", clusters=clusters, cluster_cap=0.1, atom_cap=0.06)
    sums = nat.groupby(clusters).sum()
    np.testing.assert_allclose(sums, 0.25, atol=1e-12)
    assert np.abs(nat - rf).max() <= 1e-5


# --------------------------------------------------------------------------- native exactness

def _reference_qp(pb, method: str) -> np.ndarray:
    """High-precision cvxpy/Clarabel solution of the same constrained problem."""
    import cvxpy as cp

    p = pb.cov / np.mean(np.diag(pb.cov))
    tol = {"tol_gap_abs": 1e-12, "tol_gap_rel": 1e-12, "tol_feas": 1e-12, "max_iter": 500}
    if method == "min_variance":
        w = cp.Variable(pb.n)
        cons = [cp.sum(w) == 1, w >= 0, w <= pb.u] + ([pb.gmat @ w <= pb.c] if pb.gmat.shape[0] else [])
        cp.Problem(cp.Minimize(cp.quad_form(w, cp.psd_wrap(p))), cons).solve(solver="CLARABEL", **tol)
        return w.value
    y, k = cp.Variable(pb.n), cp.Variable()
    e = pb.excess / np.abs(pb.excess).max()
    cons = [e @ y == 1, y >= 0, y <= pb.u * k, cp.sum(y) == k]
    cons += [pb.gmat @ y <= pb.c * k] if pb.gmat.shape[0] else []
    cp.Problem(cp.Minimize(cp.quad_form(y, cp.psd_wrap(p))), cons).solve(solver="CLARABEL", **tol)
    return y.value / k.value


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("method", ["min_variance", "max_sharpe"])
def test_native_convex_is_exact_and_fallback_agrees(monkeypatch, method, seed):
    rets = factor_returns(60, days=300, seed=seed)
    rng = np.random.default_rng(seed)
    cl = pd.Series(rng.integers(0, 4, rets.shape[1]), index=rets.columns)
    kw = {"clusters": cl, "cluster_cap": 0.35, "atom_cap": 0.06}
    pb = Problem(rets, cl, 0.35, 0.06, 0.0, None, "test")
    active_set = optimize(rets, method, **kw)
    assert np.abs(active_set.to_numpy() - _reference_qp(pb, method)).max() <= 1e-7
    # the interior-point fallback (used when the active set degenerates) gives the same answer
    monkeypatch.setattr(QP, "solve", lambda self, *a, **k: None)
    interior = optimize(rets, method, **kw)
    assert np.abs(active_set - interior).max() <= 1e-7


@pytest.mark.parametrize("method", ["min_variance", "max_sharpe"])
def test_forced_caps_with_locked_clusters(monkeypatch, method):
    # 6 clusters, atom cap 0.05: the three small clusters (3, 3 and 1 atoms) can hold at most
    # 0.35 together, so the cluster cap is raised to 0.65 / 3 and every atom of a small cluster
    # is pinned at 0.05 -- the degenerate case both native solvers must handle
    rets = factor_returns(30, days=600, seed=498)
    cl = pd.Series(np.repeat([0, 1, 2, 3, 4, 5], [8, 3, 9, 3, 1, 6]), index=rets.columns)
    kw = {"clusters": cl, "cluster_cap": 0.08, "atom_cap": 0.05}
    pb = Problem(rets, cl, 0.08, 0.05, 0.0, None, "test")
    assert pb.forced and pb.c == pytest.approx(0.65 / 3, abs=1e-15)
    w = optimize(rets, method, **kw)
    np.testing.assert_allclose(w[cl.isin([1, 3, 4])], 0.05, atol=1e-12)
    np.testing.assert_allclose(w.groupby(cl).sum()[[0, 2, 5]], 0.65 / 3, atol=1e-12)
    assert np.abs(w.to_numpy() - _reference_qp(pb, method)).max() <= 1e-7
    assert np.abs(w - optimize(rets, method, "riskfolio", **kw)).max() <= 1e-5
    monkeypatch.setattr(QP, "solve", lambda self, *a, **k: None)
    assert np.abs(w - optimize(rets, method, **kw)).max() <= 1e-7


# ----------------------------------------------------------------------------------- invariants

@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("method", METHODS)
def test_weights_are_feasible(sp500, engine, method):
    cl = pd.Series(np.arange(sp500.shape[1]) % 3, index=sp500.columns)
    w = optimize(sp500, method, engine, clusters=cl, cluster_cap=0.4, atom_cap=0.1)
    _check_feasible(w, 0.1, cl, 0.4)
    assert w.name == "weight" and w.index.equals(sp500.columns)


@pytest.mark.parametrize("method", METHODS)
def test_caps_below_one_over_n_are_raised(synth, method):
    w = optimize(synth, method, atom_cap=0.01)          # 25 atoms: the cap becomes 1/25
    np.testing.assert_allclose(w, 1.0 / 25, atol=1e-12)


def test_equal_weight_is_exact_and_never_leaves_cash(synth, clusters):
    w = optimize(synth, "equal_weight")
    assert (w == 1.0 / 25).all() and abs(w.sum() - 1) < 1e-15
    w = optimize(synth, "equal_weight", clusters=clusters, cluster_cap=0.22, atom_cap=0.05)
    _check_feasible(w, 0.05, clusters, 0.25)            # cap raised to 1/4 clusters


def test_effective_caps():
    assert effective_caps(10, None, 0.5, 0.05) == (0.1, 1.0)
    assert effective_caps(4, np.array([2, 2]), 0.2, 0.3) == (0.3, 0.5)
    # 9 atoms in one cluster, 1 in the other, atom cap 0.1: clusters can hold at most
    # min(c, 0.9) + min(c, 0.1) -> the cluster cap must be raised to 0.9 to stay feasible
    u, c = effective_caps(10, np.array([9, 1]), 0.5, 0.1)
    assert u == 0.1 and c == pytest.approx(0.9, abs=1e-15)


@pytest.mark.parametrize("engine", ENGINES)
def test_infeasible_cluster_cap_is_raised_in_the_solvers(synth, engine):
    rets = synth.iloc[:, :10]
    cl = pd.Series([1] * 9 + [2], index=rets.columns)
    # capacity min(c, 9 * 0.15) + min(c, 0.15) >= 1 needs c >= 0.85: both caps bind
    for method in ("min_variance", "max_sharpe", "hrp"):
        w = optimize(rets, method, engine, clusters=cl, cluster_cap=0.5, atom_cap=0.15)
        assert w.iloc[-1] == pytest.approx(0.15, abs=1e-9)
        assert w.iloc[:9].sum() == pytest.approx(0.85, abs=1e-9)
        _check_feasible(w, 0.15, cl, 0.85)


def test_apply_caps_clips_and_redistributes_proportionally():
    w = pd.Series([0.5, 0.3, 0.2], index=list("abc"))
    out = apply_caps(w, atom_cap=0.4)
    np.testing.assert_allclose(out, [0.4, 0.36, 0.24], atol=1e-15)
    feasible = pd.Series([0.3, 0.3, 0.4], index=list("abc"))
    assert apply_caps(feasible, atom_cap=0.4).equals(feasible)
    # cluster level first: cluster {a, b} = 0.8 > 0.6 -> 0.6 (a:b kept 5:3), c gets the 0.2
    out = apply_caps(w, pd.Series([1, 1, 2], index=list("abc")), cluster_cap=0.6, atom_cap=1.0)
    np.testing.assert_allclose(out, [0.375, 0.225, 0.4], atol=1e-15)


def test_risk_contributions_are_equal(synth, sp500):
    for rets in (synth, sp500):
        for engine in ENGINES:
            w = optimize(rets, "risk_parity", engine, atom_cap=1.0).to_numpy()
            cov, _ = ledoit_wolf(rets.to_numpy())
            rc = w * (cov @ w)
            tol = 1e-10 if engine == "native" else 1e-4      # riskfolio: exponential-cone solver accuracy
            assert (rc.max() - rc.min()) / rc.mean() < tol


def test_min_variance_beats_equal_weight_and_random_portfolios(synth, clusters):
    kw = {"clusters": clusters, "cluster_cap": 0.3, "atom_cap": 0.08}
    cov, _ = ledoit_wolf(synth.to_numpy())
    w = optimize(synth, "min_variance", **kw).to_numpy()
    var = w @ cov @ w
    assert var < np.full(25, 1 / 25) @ cov @ np.full(25, 1 / 25)
    rng = np.random.default_rng(0)
    for _ in range(300):
        r = apply_caps(pd.Series(rng.dirichlet(np.full(25, 0.5)), index=synth.columns), **kw).to_numpy()
        assert var <= r @ cov @ r + 1e-18


def test_max_sharpe_beats_random_feasible_portfolios(synth):
    cov, _ = ledoit_wolf(synth.to_numpy())
    mu = synth.mean().to_numpy()
    w = optimize(synth, "max_sharpe", atom_cap=0.2).to_numpy()
    best = mu @ w / np.sqrt(w @ cov @ w)
    rng = np.random.default_rng(1)
    for _ in range(300):
        r = apply_caps(pd.Series(rng.dirichlet(np.full(25, 0.3)), index=synth.columns), atom_cap=0.2).to_numpy()
        assert mu @ r / np.sqrt(r @ cov @ r) <= best + 1e-12


# ---------------------------------------------------------------------------------- hand cases

def _uncorrelated_pair(sig1: float, sig2: float, m1: float = 0.0, m2: float = 0.0) -> pd.DataFrame:
    """Two return series with exactly zero sample covariance, given sd and mean."""
    base = np.array([1.0, -1.0, 1.0, -1.0])
    other = np.array([1.0, 1.0, -1.0, -1.0])
    s1, s2 = np.tile(base, 50), np.tile(other, 50)       # orthogonal, centered, unit biased sd
    return pd.DataFrame({"a": m1 + sig1 * s1, "b": m2 + sig2 * s2})


@pytest.mark.parametrize("engine", ENGINES)
def test_two_uncorrelated_assets(engine):
    s1, s2 = 0.01, 0.02
    rets = _uncorrelated_pair(s1, s2, 0.001, 0.0005)
    kw = {"atom_cap": 1.0, "shrinkage": 0.0}
    tol = 1e-12 if engine == "native" else 1e-5               # riskfolio: solver tolerance
    v1, v2 = s1 ** 2, s2 ** 2
    mv = optimize(rets, "min_variance", engine, **kw)
    assert mv["a"] == pytest.approx(v2 / (v1 + v2), abs=tol)  # 0.8
    erc = optimize(rets, "risk_parity", engine, **kw)
    assert erc["a"] == pytest.approx(s2 / (s1 + s2), abs=tol)  # 2/3
    hrp = optimize(rets, "hrp", engine, **kw)
    assert hrp["a"] == pytest.approx(v2 / (v1 + v2), abs=1e-12)
    ms = optimize(rets, "max_sharpe", engine, **kw)          # w ~ mu / sigma^2 when uncorrelated
    t1, t2 = 0.001 / v1, 0.0005 / v2
    assert ms["a"] == pytest.approx(t1 / (t1 + t2), abs=tol)  # 8/9


def test_single_atom_gets_everything(synth):
    for method in METHODS:
        w = optimize(synth[["S00"]], method)
        assert w.tolist() == [1.0]


@pytest.mark.parametrize("engine", ENGINES)
def test_max_sharpe_without_positive_excess_mean_falls_back_to_min_variance(synth, engine):
    losing = synth - 0.01                                   # every atom has a negative mean
    w, info = optimize_gated(losing, "max_sharpe", engine)
    assert info["fallback"] == "min_variance" and info["method"] == "max_sharpe"
    assert np.abs(w - optimize(losing, "min_variance", engine)).max() <= 1e-12
    w2, info2 = optimize_gated(synth, "max_sharpe", engine, risk_free=0.05)   # rf above every mean
    assert info2["fallback"] == "min_variance"
    ok, info3 = optimize_gated(synth, "max_sharpe", engine)
    assert info3["fallback"] is None and np.abs(ok - w2).max() > 1e-3


# --------------------------------------------------------------------------- Stable Sum Gate

def test_stable_sum_gate():
    assert stable_sum_gate(np.array([0.2, 0.8]))
    assert stable_sum_gate(np.array([0.5, -1e-13, 0.5]))        # within the -1e-12 tolerance
    assert not stable_sum_gate(np.array([0.5, -1e-9, 0.5]))
    assert not stable_sum_gate(np.array([0.5, np.nan]))
    assert not stable_sum_gate(np.array([0.5, np.inf]))
    assert not stable_sum_gate(np.array([4e-7, 5e-7]))           # sum 9e-7 <= 1e-6
    assert stable_sum_gate(np.array([6e-7, 5e-7]))
    assert not stable_sum_gate(np.array([]))


def test_optimize_gated_info_without_retry(synth):
    w, info = optimize_gated(synth, "min_variance", profile_name="demo")
    assert info["method"] == "min_variance" and info["engine"] == "native"
    assert info["attempts"] == 1 and info["retried"] is False and info["gate_passed"] is True
    assert info["shrinkage"] == pytest.approx(ledoit_wolf(synth.to_numpy())[1], abs=1e-15)
    assert np.abs(w - optimize(synth, "min_variance")).max() == 0


@pytest.mark.parametrize("engine", ENGINES)
def test_gate_retries_once_on_singular_covariance(synth, engine):
    rets = synth.iloc[:, :6].copy()
    rets["hedge"] = -rets["S00"]               # perfectly hedged pair: singular sample covariance
    with pytest.raises(OptimizationError):
        optimize(rets, "risk_parity", engine, shrinkage=0.0)   # no ERC portfolio exists
    w, info = optimize_gated(rets, "risk_parity", engine, profile_name="hedged", shrinkage=0.0)
    assert info["retried"] is True and info["attempts"] == 2
    assert info["shrinkage"] == opt.RETRY_SHRINKAGE
    np.testing.assert_allclose(w, 1 / 7, atol=1e-12 if engine == "native" else 1e-6)  # ERC of c*I


def test_gate_retry_after_nan_then_failure_names_profile(synth, monkeypatch):
    real = opt._solve
    calls: list[float | None] = []

    def nan_first(pb, method, engine, linkage):
        calls.append(pb._forced_shrinkage)
        return np.full(pb.n, np.nan) if len(calls) == 1 else real(pb, method, engine, linkage)

    monkeypatch.setattr(opt, "_solve", nan_first)
    w, info = optimize_gated(synth, "hrp", profile_name="p")
    assert info["retried"] is True and calls == [None, opt.RETRY_SHRINKAGE]
    _check_feasible(w, 0.25)

    monkeypatch.setattr(opt, "_solve", lambda pb, *a: -np.ones(pb.n))
    with pytest.raises(OptimizationError) as exc:
        optimize_gated(synth, "max_sharpe", "riskfolio", profile_name="crypto_core")
    msg = str(exc.value)
    assert "crypto_core" in msg and "max_sharpe" in msg and "riskfolio" in msg and "\n" not in msg
    assert isinstance(exc.value, GateError)
    with pytest.raises(OptimizationError, match="Stable Sum Gate"):
        optimize(synth, "hrp")


# ---------------------------------------------------------------------------------- validation

def test_method_engine_linkage_are_enums_or_their_strings(synth):
    from quantlib.core.enums import Linkage

    w, info = optimize_gated(synth, RiskMethod.HRP, Engine.NATIVE, linkage=Linkage.SINGLE, profile_name="p")
    assert np.array_equal(w, optimize(synth, "hrp", "native", linkage="single"))
    assert type(info["method"]) is str and info["method"] == "hrp" and type(info["engine"]) is str
    for bad, what, allowed in [({"method": "minvar"}, "method", RiskMethod),
                               ({"engine": "cvxpy"}, "engine", Engine),
                               ({"linkage": "wards"}, "HRP linkage", Linkage)]:
        kw = {"method": "hrp", "engine": "native", "linkage": "ward", **bad}
        with pytest.raises(OptimizationError) as exc:
            optimize(synth, kw["method"], kw["engine"], linkage=kw["linkage"])
        assert f"unknown {what} {next(iter(bad.values()))!r}" in str(exc.value)
        assert "use one of " + ", ".join(m.value for m in allowed) in str(exc.value)
    # the linkage only matters (and is only checked) for HRP
    optimize(synth, "min_variance", linkage="wards")


def test_degenerate_columns_are_named_not_dropped(synth):
    bad = synth.copy()
    bad["FLAT"] = 0.001
    with pytest.raises(OptimizationError, match="FLAT"):
        optimize(bad, "hrp")
    bad = synth.copy()
    bad.iloc[3, 2] = np.nan
    with pytest.raises(OptimizationError, match="S02"):
        optimize_gated(bad, "min_variance", profile_name="x")
    with pytest.raises(OptimizationError, match="min_varience"):
        optimize(synth, "min_varience")
    with pytest.raises(OptimizationError, match="S24"):
        optimize(synth, "min_variance", clusters=pd.Series(1, index=synth.columns[:-1]))
    labels = pd.Series(1.0, index=synth.columns)
    labels["S07"] = np.nan
    with pytest.raises(OptimizationError, match="S07"):
        optimize(synth, "hrp", clusters=labels)


def test_solves_run_with_single_threaded_blas(synth, monkeypatch):
    import scipy.linalg  # noqa: F401  (scipy ships its own OpenBLAS next to numpy's)
    from threadpoolctl import threadpool_info

    real, seen = opt._solve, []

    def spy(*args):
        seen.append({(p["filepath"], p["num_threads"]) for p in threadpool_info()})
        return real(*args)

    monkeypatch.setattr(opt, "_solve", spy)
    optimize(synth, "min_variance")
    assert seen and all(n == 1 for _, n in seen[0])
    assert len({p for p, _ in seen[0]}) >= 2


def test_import_is_light():
    code = ("import sys, quantlib.portfolio.optimize; "
            "print(sorted(m for m in ('scipy', 'riskfolio', 'cvxpy', 'sklearn') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
