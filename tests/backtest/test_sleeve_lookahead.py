"""No look-ahead in a sleeve's decisions (SPEC §0 point-in-time): changing returns and screener rows
after the end of the training window never changes the universe, selection, clusters, statistics or weights."""
from __future__ import annotations

import numpy as np
import pandas as pd

from quantlib.sleeve.analysis import antifragility
from quantlib.core.profiles import load_profile
from quantlib.data.scanners import Scanner
from quantlib.sleeve.window import decide_window
from quantlib.sleeve.universe import candidates_at

from conftest import art


def _perturb_after(frame: pd.DataFrame, when, rng, columns) -> pd.DataFrame:
    out = frame.copy()
    later = out.index > when if "ts" not in out.columns else out["ts"] > when
    for col in columns:
        out.loc[later, col] = rng.normal(0, 0.5, int(later.sum()))
    return out


def test_decisions_at_t_ignore_every_later_return_and_screener_row(long_sleeve):
    _, run = long_sleeve
    returns, screener = art(run, "artifacts/returns.parquet"), art(run, "artifacts/screener.parquet")
    scanners = [Scanner.model_validate(s) for s in art(run, "artifacts/universe.json")["scanners"]]
    profile = load_profile("demo_crypto_long", env={"FW_SELECTION__MIN_ASSETS": "5"}).profile
    end = returns.index[-40]  # a decision date with 39 later bars
    rng = np.random.default_rng(11)
    later_returns = _perturb_after(returns, end, rng, returns.columns)
    later_screener = screener.copy()
    later = later_screener["date"] > end
    later_screener.loc[later, "recommend_all"] = rng.uniform(-1, 1, int(later.sum()))
    later_screener.loc[later, "value_traded"] *= rng.uniform(0.2, 5.0, int(later.sum()))
    assert not later_returns.equals(returns) and not later_screener.equals(screener)

    def decide(r, s, when):
        pool, _ = candidates_at(r, s, scanners, [when], window=profile.sleeve.train_days,
                                min_history_days=profile.sleeve.min_history_days, toxic_return=5.0)
        return pool, decide_window(r, pool.drop(columns="date"), profile, when)

    pool, base = decide(returns, screener, end)
    moved_pool, moved = decide(later_returns, later_screener, end)
    pd.testing.assert_frame_equal(pool, moved_pool)
    assert base.synthetic.index[-1] == end
    pd.testing.assert_frame_equal(base.selection.selection, moved.selection.selection)
    assert base.clusters == moved.clusters and base.regime == moved.regime
    pd.testing.assert_frame_equal(antifragility(base.synthetic, 365), antifragility(moved.synthetic, 365))
    pd.testing.assert_frame_equal(base.weights, moved.weights)
    # and the check has teeth: moving the decision date onto the perturbed rows changes the decision
    _, shifted = decide(later_returns, later_screener, returns.index[-30])
    assert not shifted.synthetic.equals(base.synthetic)
