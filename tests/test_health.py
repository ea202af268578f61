"""Strict-health aggregation (SPEC §2.1): statuses, returns definition, calendars never zero-filled."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from quantlib.health import assess


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
