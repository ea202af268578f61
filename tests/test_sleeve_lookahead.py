"""No look-ahead in a sleeve's decisions (SPEC §0 point-in-time): changing returns and features after
the end of the training window never changes selection, clusters, statistics or weights."""
from __future__ import annotations

import numpy as np
import pandas as pd

from quantlib.analysis import antifragility
from quantlib.profiles import load_profile
from quantlib.sleeveflow import decide_window

from conftest import art


def _perturb_after(frame: pd.DataFrame, when, rng, columns) -> pd.DataFrame:
    out = frame.copy()
    later = out.index > when if "ts" not in out.columns else out["ts"] > when
    for col in columns:
        out.loc[later, col] = rng.normal(0, 0.5, int(later.sum()))
    return out


def test_decisions_at_t_ignore_every_later_return_and_feature(long_sleeve):
    _, run = long_sleeve
    returns, candidates = art(run, "artifacts/returns.parquet"), art(run, "artifacts/candidates.parquet")
    features = art(run, "artifacts/features.parquet")
    profile = load_profile("demo_crypto_long", env={"FW_SELECTION__MIN_ASSETS": "5"}).profile
    end = returns.index[-40]  # a decision date with 39 later bars
    rng = np.random.default_rng(11)
    later_returns = _perturb_after(returns, end, rng, returns.columns)
    later_features = _perturb_after(features, end, rng, ["recommend_all", "recommend_ma"])
    assert not later_returns.equals(returns) and not later_features.equals(features)

    base = decide_window(returns, candidates, features, profile, end)
    moved = decide_window(later_returns, candidates, later_features, profile, end)
    assert base.synthetic.index[-1] == end
    pd.testing.assert_frame_equal(base.selection.selection, moved.selection.selection)
    assert base.clusters == moved.clusters and base.regime == moved.regime
    pd.testing.assert_frame_equal(antifragility(base.synthetic, 365), antifragility(moved.synthetic, 365))
    pd.testing.assert_frame_equal(base.weights, moved.weights)
    # and the check has teeth: moving the decision date onto the perturbed rows changes the decision
    shifted = decide_window(later_returns, candidates, later_features, profile, returns.index[-1])
    assert not shifted.synthetic.equals(base.synthetic)
