"""Exact comparison of a replay with its record: the first difference, named by field and row."""
from __future__ import annotations

import numpy as np
import pandas as pd

from quantlib.backtest.equality import MISSING, frame_difference, json_difference, same_value


def _weights() -> pd.DataFrame:
    return pd.DataFrame({"profile": ["hrp", "hrp", "min_variance"], "atom_id": ["A", "B", "A"],
                         "weight": [0.25, 0.75, np.nan], "cluster": [0, 1, 0]})


def test_equal_frames_have_no_difference_and_nan_equals_nan():
    assert frame_difference("w.parquet", _weights(), _weights()) is None


def test_a_one_ulp_change_is_found_at_its_row_with_its_keys_and_every_digit():
    replayed = _weights()
    replayed.loc[1, "weight"] = np.nextafter(0.75, 1.0)
    d = frame_difference("w.parquet", _weights(), replayed, keys=["profile", "atom_id"])
    assert (d.artifact, d.field, d.row) == ("w.parquet", "weight", "1 (profile=hrp, atom_id=B)")
    assert d.recorded == 0.75 and d.replayed == np.nextafter(0.75, 1.0)
    assert str(d) == "w.parquet: weight, row 1 (profile=hrp, atom_id=B): recorded 0.75, replayed 0.7500000000000001"


def test_the_lowest_row_wins_over_the_leftmost_column():
    replayed = _weights()
    replayed.loc[2, "profile"] = "max_sharpe"
    replayed.loc[0, "cluster"] = 5
    d = frame_difference("w", _weights(), replayed)
    assert (d.field, d.row, d.recorded, d.replayed) == ("cluster", "0", 0, 5)


def test_nan_against_a_number_differs():
    replayed = _weights()
    replayed.loc[2, "weight"] = 0.0
    d = frame_difference("w", _weights(), replayed)
    assert d.field == "weight" and d.row == "2" and np.isnan(d.recorded) and d.replayed == 0.0


def test_columns_rows_index_and_dtypes_are_compared_before_values():
    base = _weights()
    assert frame_difference("w", base, base[["profile", "weight", "atom_id", "cluster"]]).field == "columns[1]"
    assert frame_difference("w", base, base.iloc[:2]).field == "rows"
    d = frame_difference("w", base, base.assign(cluster=base["cluster"].astype(float)))
    assert (d.field, d.recorded, d.replayed) == ("cluster (dtype)", "int64", "float64")
    d = frame_difference("w", base, base.set_axis([0, 1, 3]))
    assert (d.field, d.row, d.recorded, d.replayed) == ("index", "2", 2, 3)
    assert frame_difference("w", base.rename_axis("date"), base).field == "index"
    assert frame_difference("w", None, base).field == "file"


def test_a_named_index_labels_the_row():
    dates = pd.date_range("2026-01-01", periods=3, freq="D", tz="UTC", name="date")
    recorded = pd.DataFrame({"hrp": [0.1, 0.2, 0.3]}, index=dates)
    d = frame_difference("r.parquet", recorded, recorded.assign(hrp=[0.1, 0.2, 0.30000000000000004]))
    assert d.row == "2 (date=2026-01-03 00:00:00+00:00)"


def test_json_documents_differ_at_the_first_key_path_and_by_type():
    doc = {"engine": "native", "profiles": {"hrp": {"shrinkage": 0.05, "attempts": 1}}, "labels": [0, 1]}
    assert json_difference("o.json", doc, {"labels": [0, 1], "engine": "native",
                                           "profiles": {"hrp": {"attempts": 1, "shrinkage": 0.05}}}) is None
    d = json_difference("o.json", doc, {**doc, "profiles": {"hrp": {"shrinkage": 0.05, "attempts": 1.0}}})
    assert (d.field, d.recorded, d.replayed) == ("profiles.hrp.attempts", 1, 1.0)
    d = json_difference("o.json", doc, {**doc, "labels": [0, 2]})
    assert (d.field, d.recorded, d.replayed) == ("labels[1]", 1, 2)
    d = json_difference("o.json", doc, {**doc, "labels": [0, 1, 1]})
    assert (d.field, d.recorded, d.replayed) == ("labels (length)", 2, 3)
    d = json_difference("o.json", doc, {k: v for k, v in doc.items() if k != "engine"})
    assert (d.field, d.recorded, d.replayed) == ("engine", "native", MISSING)


def test_cell_values_missing_and_arrays():
    assert same_value(None, np.nan) and same_value(pd.NaT, None) and not same_value(np.nan, 0.0)
    assert same_value(np.array([1, 2]), [1, 2]) and not same_value(np.array([1, 2]), [1, 3])
    assert same_value(3, 3.0) and not same_value("a", "b")
