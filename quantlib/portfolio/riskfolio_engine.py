"""The riskfolio engine: riskfolio-lib behind the same interface as the native one.

- min variance / max Sharpe: ``Portfolio.optimization(model="Classic", rm="MV",
  obj="MinRisk"|"Sharpe")`` with ``upperlng`` = atom cap and ``ainequality``/``binequality`` =
  cluster caps;
- risk parity: ``rp_optimization(model="Classic", rm="MV", b=None)``;
- HRP: ``HCPortfolio(model="HRP", codependence="pearson", rm="MV")`` with the Ledoit-Wolf covariance
  as ``custom_cov``, the linkage passed explicitly and the native engine's leaf order setting.

Differences from the native engine, and why: riskfolio's convex solutions are Clarabel solutions at
solver tolerance (tightened to 1e-10, `RISKFOLIO_CLARABEL`; ~1e-7 from the native KKT point, ERC
risk contributions equal to ~1e-5 relative) while the native ones are exact to round-off; riskfolio
is given mu and cov rescaled to unit mean variance (weights are scale invariant) because at daily
scale Clarabel declares feasible Sharpe problems infeasible; a riskfolio ERC answer whose risk
contributions are not equal (it returns one on a singular covariance, where the native Newton
fails) is treated as a solver failure, so both engines then take the same gate retry.

riskfolio (and with it cvxpy) is a heavy optional import: it is imported inside the functions.
"""
from __future__ import annotations

import contextlib
import io
import warnings
from typing import Any

import numpy as np
import pandas as pd

from quantlib.core.enums import Linkage, RiskMethod
from quantlib.portfolio.native import HRP_OPTIMAL_LEAF_ORDER
from quantlib.portfolio.problem import Problem, SolverFailure

#: Clarabel tolerances for the riskfolio engine (defaults are 1e-8): at 1e-10 its convex solutions
#: agree with the exact native ones to ~1e-7 instead of ~1e-5 at 200 atoms, for ~10-40% more time.
RISKFOLIO_CLARABEL = {"tol_gap_abs": 1e-10, "tol_gap_rel": 1e-10, "tol_feas": 1e-10}


@contextlib.contextmanager
def _quiet():
    """Silence riskfolio's prints and cvxpy's warnings."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


def _rf_weights(out: Any, what: str) -> np.ndarray:
    if out is None:
        raise SolverFailure(f"riskfolio {what} returned no solution")
    return np.asarray(out, dtype=float).ravel()


def _riskfolio_portfolio(pb: Problem, constrained: bool) -> tuple[Any, float]:
    """riskfolio Portfolio on the problem's mean/covariance, rescaled to unit mean variance.

    Rescaling returns by s (mu*s, cov*s^2, rf*s) leaves min-variance, max-Sharpe and risk-parity
    weights unchanged, but daily-scale inputs (variances ~1e-4, excess means ~1e-5) make Clarabel
    report feasible Sharpe problems as infeasible. Returns (portfolio, s).
    """
    import riskfolio as rp

    s = 1.0 / float(np.sqrt(np.mean(np.diag(pb.cov))))
    port = rp.Portfolio(returns=pb.returns)
    port.mu = pd.DataFrame(pb.mu[None, :] * s, columns=pb.atoms)
    port.cov = pd.DataFrame(pb.cov * (s * s), index=pb.atoms, columns=pb.atoms)
    # riskfolio indexes sol_params by every solver it falls back to
    port.sol_params = {name: (dict(RISKFOLIO_CLARABEL) if name == "CLARABEL" else {}) for name in port.solvers}
    if constrained:
        port.upperlng = pb.u
        if pb.gmat.shape[0]:
            port.ainequality = pb.gmat.copy()
            port.binequality = np.full((pb.gmat.shape[0], 1), pb.c)
    return port, s


def riskfolio_raw(pb: Problem, method: RiskMethod, linkage: Linkage | str) -> np.ndarray:
    """Raw riskfolio weights (atom order) of `method`; SolverFailure when riskfolio has no usable answer."""
    import riskfolio as rp

    with _quiet():
        try:
            if method == RiskMethod.HRP:
                hc = rp.HCPortfolio(returns=pb.returns)
                out = hc.optimization(model="HRP", codependence="pearson", rm="MV", rf=0,
                                      method_cov="custom_cov",
                                      custom_cov=pd.DataFrame(pb.cov, index=pb.atoms, columns=pb.atoms),
                                      linkage=str(linkage), leaf_order=HRP_OPTIMAL_LEAF_ORDER)
            elif method == RiskMethod.RISK_PARITY:
                port, scale = _riskfolio_portfolio(pb, constrained=False)
                out = port.rp_optimization(model="Classic", rm="MV", rf=pb.risk_free * scale, b=None, hist=True)
            else:
                port, scale = _riskfolio_portfolio(pb, constrained=True)
                obj = "MinRisk" if method == RiskMethod.MIN_VARIANCE else "Sharpe"
                out = port.optimization(model="Classic", rm="MV", obj=obj, rf=pb.risk_free * scale, hist=True)
        except SolverFailure:
            raise
        except Exception as exc:  # riskfolio/cvxpy failures surface as assorted exceptions
            raise SolverFailure(f"riskfolio {method} raised {type(exc).__name__}: {exc}") from exc
    raw = _rf_weights(out, method)
    if method == RiskMethod.RISK_PARITY:
        # riskfolio returns whatever the solver stopped at; on a singular covariance that is not an
        # ERC portfolio (the native Newton fails there instead), so verify the risk contributions
        rc = raw * (pb.cov @ raw)
        if not (np.all(np.isfinite(rc)) and rc.min() > 0 and rc.max() - rc.min() <= 1e-4 * rc.mean()):
            raise SolverFailure("riskfolio risk_parity returned unequal risk contributions")
    return raw


__all__ = ["RISKFOLIO_CLARABEL", "riskfolio_raw"]
