"""The look-ahead audit (SPEC §0 point-in-time, LESSONS L-B1): a feature, not only a test.

Replays a sleeve run's walk-forward decisions twice, once on its own data and once with every
return, benchmark return and features row dated after a cutoff replaced (returns by noise, ratings
sign-flipped), and proves that every decision up to the cutoff is unchanged: each window's eligible
pool, its selection and regime, its target weights (the trades) and the out-of-sample returns up to
the cutoff. A pipeline that peeks at the bar it trades (or any later one) fails.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

from . import storage
from .runs import Run, utc_now


def perturb_after(returns: pd.DataFrame, features: pd.DataFrame, benchmark: pd.Series, cutoff: pd.Timestamp,
                  seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame, pd.Series]:
    """Copies with everything dated after `cutoff` changed (NaN pattern of returns kept)."""
    rng = np.random.default_rng(seed)
    r = returns.copy()
    later = r.index > cutoff
    noise = rng.normal(0.0, 0.04, size=(int(later.sum()), r.shape[1]))
    r.loc[later] = np.where(r.loc[later].isna(), np.nan, noise)
    f = features.copy()
    fl = f["ts"] > cutoff
    for col in ("recommend_all", "recommend_ma", "recommend_other"):
        if col in f.columns:
            f.loc[fl, col] = -f.loc[fl, col]
    b = benchmark.copy()
    b.loc[b.index > cutoff] = rng.normal(0.0, 0.04, int((b.index > cutoff).sum()))
    return r, f, b


def _same(name: str, a: pd.DataFrame, b: pd.DataFrame) -> dict:
    try:
        pd.testing.assert_frame_equal(a.reset_index(drop=True), b.reset_index(drop=True), check_exact=True)
        return {"check": name, "passed": True, "detail": f"{len(a)} rows identical"}
    except AssertionError as exc:
        return {"check": name, "passed": False, "detail": str(exc).splitlines()[0][:300]}


def audit(returns: pd.DataFrame, candidates: pd.DataFrame, features: pd.DataFrame, benchmark: pd.Series,
          profile, cutoff: pd.Timestamp | None = None, seed: int = 0,
          run_backtest: Callable | None = None) -> dict:
    """Compare the decisions up to `cutoff` (default: the middle window's decision date) on the real
    and on the perturbed data. Uses the reference simulator only (parity is the validation's job)."""
    from . import backtest

    run_backtest = run_backtest or backtest.run
    quick = profile.model_copy(update={"backtest": profile.backtest.model_copy(update={"simulators": ["reference"]})})
    cfg = backtest.settings(quick)
    plan = backtest.windows(returns.index, cfg.train_days, cfg.test_days, profile.name)
    cutoff = pd.Timestamp(cutoff) if cutoff is not None else plan[len(plan) // 2].decision
    if cutoff.tzinfo is None and returns.index.tz is not None:
        cutoff = cutoff.tz_localize(returns.index.tz)
    base = run_backtest(returns, candidates, features, benchmark, quick)
    r2, f2, b2 = perturb_after(returns, features, benchmark, cutoff, seed)
    moved = run_backtest(r2, candidates, f2, b2, quick)
    upto = lambda frame, col: frame[frame[col] <= cutoff]  # noqa: E731
    checks = [
        _same("eligibility", upto(base.eligibility, "decision"), upto(moved.eligibility, "decision")),
        _same("selection_and_regime", upto(base.windows, "decision"), upto(moved.windows, "decision")),
        _same("weights_and_trades", upto(base.holdings, "decision"), upto(moved.holdings, "decision")),
        _same("returns_to_cutoff", base.returns[base.returns.index <= cutoff].reset_index(),
              moved.returns[moved.returns.index <= cutoff].reset_index()),
    ]
    windows_checked = int((base.windows["decision"] <= cutoff).sum())
    changed_after = not base.holdings.equals(moved.holdings)
    return {"passed": all(c["passed"] for c in checks) and windows_checked > 0, "cutoff": cutoff,
            "windows_checked": windows_checked, "windows_total": len(plan),
            "perturbation_changed_later_decisions": changed_after, "checks": checks}


def audit_run(run: Run, cutoff: str | None = None, seed: int = 0) -> dict:
    """The audit on a sleeve run's own artifacts; writes `backtest/lookahead_audit.json` in the run."""
    art = lambda rel: storage.read_parquet(run.path(f"artifacts/{rel}"))  # noqa: E731
    result = audit(art("returns.parquet"), art("candidates.parquet"), art("features.parquet"),
                   art("benchmark.parquet")["benchmark"], run.profile, cutoff, seed)
    result.update(run_id=run.id, generated_at=utc_now())
    storage.write_json(run.path("backtest/lookahead_audit.json"), result)
    return result
