"""Strict-health aggregation (SPEC §2.1): statuses, returns definition, calendars never zero-filled."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from quantlib.sleeve.health import assess


def _panel(days: int = 40, start: str = "2026-01-01", freq: str = "D") -> pd.DataFrame:
    index = pd.date_range(start, periods=days, freq=freq, tz="UTC")
    rng = np.random.default_rng(3)
    cols = {s: 100 * np.cumprod(1 + rng.normal(0, 0.02, days)) for s in ("X:OK", "X:GAP", "X:STALE", "X:NEW",
                                                                           "X:FLAT", "X:SPIKE", "X:REG")}
    frame = pd.DataFrame(cols, index=index)
    frame.loc[index[20], "X:GAP"] = np.nan          # one missing bar inside the window
    frame.loc[index[-3]:, "X:STALE"] = np.nan       # delisted three bars before the end
    frame.loc[:index[29], "X:NEW"] = np.nan          # listed late: 10 bars
    frame["X:FLAT"] = 5.0
    frame.loc[index[10], "X:SPIKE"] = frame.loc[index[9], "X:SPIKE"] * 7.0   # +600 %
    return frame


def test_each_status_is_assigned_with_its_reason():
    close = _panel()
    result = assess(close, list(close.columns) + ["X:NONE"], lookback_days=40, min_history_days=20,
                    toxic_return=5.0, toxic={"X:REG"})
    status = result.health.set_index("symbol")["status"].to_dict()
    assert status == {"X:OK": "OK", "X:GAP": "GAPS", "X:STALE": "STALE", "X:NEW": "SHORT_HISTORY",
                      "X:FLAT": "ZERO_VARIANCE", "X:SPIKE": "TOXIC", "X:REG": "TOXIC", "X:NONE": "MISSING"}
    assert result.healthy == ["X:OK"]
    assert result.counts()["TOXIC"] == 2


def test_returns_are_close_over_previous_close_on_the_window():
    close = _panel()
    result = assess(close, ["X:OK"], lookback_days=30, min_history_days=5, toxic_return=5.0)
    window = close["X:OK"].iloc[-30:]
    expected = (window / window.shift(1) - 1).iloc[1:]
    assert result.returns.index[0] == close.index[-29]
    np.testing.assert_array_equal(result.returns["X:OK"].to_numpy(), expected.to_numpy())
    assert result.window == (close.index[-30], close.index[-1])


def test_weekday_calendar_is_not_padded_with_weekends():
    close = _panel(days=60, freq="B")[["X:OK", "X:GAP"]]
    result = assess(close, ["X:OK", "X:GAP"], lookback_days=60, min_history_days=20, toxic_return=5.0)
    assert (result.returns.index.day_of_week < 5).all()
    assert not (result.returns == 0).all(axis=1).any()  # no zero-filled day
    assert result.health.set_index("symbol").at["X:GAP", "status"] == "GAPS"


def test_late_listing_with_enough_history_is_kept_with_leading_nan():
    close = _panel()
    result = assess(close, ["X:NEW", "X:OK"], lookback_days=40, min_history_days=5, toxic_return=5.0)
    assert result.healthy == ["X:NEW", "X:OK"]
    new = result.returns["X:NEW"]
    assert new.isna().sum() == 30 and new.notna().sum() == 9


def test_empty_panel_is_an_error():
    with pytest.raises(ValueError, match="no bars"):
        assess(pd.DataFrame(dtype=float), ["X:A"], lookback_days=10, min_history_days=2, toxic_return=5.0)


# ------------------------------------------------------------------ aggregate's inputs (bad input)
def _data_run(tmp_path, exports: dict):
    import json

    from quantlib.core.runs import Run

    run_dir = tmp_path / "runs" / "data-1"
    (run_dir / "export").mkdir(parents=True)
    (run_dir / "manifest.json").write_text(json.dumps({"run_id": "data-1", "profile": "demo", "phase": "data",
                                                       "status": "PASS", "created_at": "2026-11-26T00:00:00"}))
    for name, candidates in exports.items():
        (run_dir / "export" / f"{name}.json").write_text(json.dumps({"scanner": name, "candidates": candidates}))
    return Run.open(tmp_path / "runs", "data-1")


def test_an_empty_export_is_only_an_empty_comparison_and_a_missing_data_run_names_the_fix(tmp_path):
    """Today's export is recorded beside the point-in-time universe, never used as it: empty is fine."""
    from quantlib.core.errors import DataError
    from quantlib.core.runs import locate_data_run
    from quantlib.stages.sleeve import CANDIDATE_FIELDS, read_candidates

    run = _data_run(tmp_path, {"rating_all_short": []})
    assert locate_data_run(tmp_path / "runs", ["rating_all_short"], None).id == "data-1"
    empty = read_candidates(run, ["rating_all_short"])
    assert empty.empty and list(empty.columns) == CANDIDATE_FIELDS
    with pytest.raises(DataError, match=r"no passed data run .* exports \['rating_ma_long'\]"):
        locate_data_run(tmp_path / "runs", ["rating_ma_long"], None)


def test_candidates_union_scanners_and_reject_an_untyped_direction(tmp_path):
    from quantlib.stages.sleeve import read_candidates

    row = {"symbol": "X:A", "direction": "LONG", "logic": "rating_all", "value_traded": 1e7,
           "recommend_all": 0.2, "recommend_ma": 0.1}
    run = _data_run(tmp_path, {"a": [row], "b": [row, {**row, "symbol": "X:B", "direction": "SHORT"}],
                               "bad": [{**row, "direction": "short"}]})
    got = read_candidates(run, ["a", "b"])
    assert got[["symbol", "direction"]].values.tolist() == [["X:A", "LONG"], ["X:B", "SHORT"]]  # deduplicated
    with pytest.raises(ValueError, match="invalid direction"):
        read_candidates(run, ["bad"])


def test_a_missing_features_matrix_names_the_backfill_stage(tmp_path):
    from quantlib.core.errors import DataError
    from quantlib.data.lakehouse import Lakehouse
    from quantlib.sleeve.inputs import _features_for

    with pytest.raises(DataError, match="features_matrix.parquet; run the data phase's backfill stage"):
        _features_for(Lakehouse(tmp_path / "lake"), ["X:A"])
