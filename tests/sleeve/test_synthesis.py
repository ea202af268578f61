"""Synthesis, flattening and the Directional Correction Sign Test (SPEC §2.3)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from quantlib.sleeve import signtest
from quantlib.sleeve.synthesis import build_atoms, contributions, flatten, synthetic_returns


def _selection() -> pd.DataFrame:
    return pd.DataFrame({"symbol": ["X:AAA", "X:BBB", "X:CCC"], "logic": ["rating_all"] * 3,
                         "direction": ["LONG", "SHORT", "SHORT"]})


def _raw() -> pd.DataFrame:
    index = pd.date_range("2026-01-01", periods=4, freq="D", tz="UTC")
    return pd.DataFrame({"X:AAA": [0.01, -0.02, 0.03, 0.0], "X:BBB": [0.02, 1.5, -0.5, 0.1],
                         "X:CCC": [-0.01, 0.04, -0.03, 2.0]}, index=index)


def test_short_inversion_is_exact_and_caps_a_150_percent_day_at_minus_100():
    atoms = build_atoms(_selection())
    syn = synthetic_returns(_raw(), atoms)
    bbb = atoms.loc[atoms["symbol"] == "X:BBB", "atom_id"].item()
    aaa = atoms.loc[atoms["symbol"] == "X:AAA", "atom_id"].item()
    assert syn[bbb].tolist() == [-0.02, -1.0, 0.5, -0.1]  # +150 % day -> the short loses 100 %
    assert syn[aaa].tolist() == _raw()["X:AAA"].tolist()
    assert syn.min().min() >= -1.0


def test_atoms_carry_a_typed_direction_and_reject_anything_else():
    atoms = build_atoms(_selection())
    assert atoms["direction"].tolist() == ["LONG", "SHORT", "SHORT"]
    bad = _selection().assign(direction=["LONG", "short", None])
    with pytest.raises(ValueError, match="invalid direction"):
        build_atoms(bad)


def test_flatten_reapplies_the_sign_and_conserves_weight():
    atoms = build_atoms(_selection())
    w = pd.DataFrame({"profile": "hrp", "atom_id": atoms["atom_id"], "weight": [0.5, 0.3, 0.2]})
    flat = flatten(w, atoms).set_index("symbol")
    assert flat["net_weight"].to_dict() == {"X:AAA": 0.5, "X:BBB": -0.3, "X:CCC": -0.2}
    assert flat["gross_weight"].sum() == pytest.approx(1.0)
    c = contributions(w, atoms)
    assert c["contribution"].sum() == pytest.approx(flat["net_weight"].sum())


def test_flatten_nets_long_and_short_atoms_of_one_symbol():
    sel = pd.DataFrame({"symbol": ["X:AAA", "X:AAA"], "logic": ["trend", "rating"], "direction": ["LONG", "SHORT"]})
    atoms = build_atoms(sel)
    w = pd.DataFrame({"profile": "p", "atom_id": atoms["atom_id"], "weight": [0.7, 0.3]})
    row = flatten(w, atoms).iloc[0]
    assert row["net_weight"] == pytest.approx(0.4) and row["gross_weight"] == pytest.approx(1.0)


def test_pre_opt_sign_test_passes_on_the_real_synthesis():
    sel = _selection()
    atoms = build_atoms(sel)
    result = signtest.pre_opt(atoms, _raw(), synthetic_returns(_raw(), atoms), sel)
    assert result.passed and result.info["errors"] == 0 and result.gate == "sign_test_pre_opt"


def test_pre_opt_catches_a_broken_synthesis():
    sel = _selection()
    atoms = build_atoms(sel)
    broken = synthetic_returns(_raw(), atoms)
    bbb = atoms.loc[atoms["symbol"] == "X:BBB", "atom_id"].item()
    broken[bbb] = -_raw()["X:BBB"]  # inverted but not capped: the +150 % day becomes -150 %
    result = signtest.pre_opt(atoms, _raw(), broken, sel)
    assert not result.passed
    assert [(c.code, c.subject) for c in result.failed if c.code != "SIGNS"] == [("INVERSION_MISMATCH", bbb)]
    with pytest.raises(signtest.SignTestError, match="INVERSION_MISMATCH"):
        signtest.enforce(result, gate=True, where="synthesize")
    signtest.enforce(result, gate=False, where="synthesize")  # gate off: recorded, not raised


def test_pre_opt_catches_a_direction_lost_to_long_and_a_missing_column():
    sel = _selection()
    lost = build_atoms(sel.assign(direction="LONG"))  # the SHORT sleeve silently became LONG (LESSONS L-X1)
    result = signtest.pre_opt(lost, _raw(), synthetic_returns(_raw(), lost), sel)
    assert {c.code for c in result.checks if c.code != "SIGNS"} == {"DIRECTION_MISMATCH"}
    atoms = build_atoms(sel)
    result = signtest.pre_opt(atoms, _raw().drop(columns="X:CCC"), synthetic_returns(_raw(), atoms), sel)
    assert "MISSING_PHYSICAL" in {c.code for c in result.checks if c.code != "SIGNS"}
    empty = signtest.pre_opt(atoms.iloc[:0], _raw(), synthetic_returns(_raw(), atoms).iloc[:, :0])
    assert "NO_ATOMS" in {c.code for c in empty.checks if c.code != "SIGNS"}


def test_post_opt_passes_and_flags_zero_weights_as_warnings():
    atoms = build_atoms(_selection())
    w = pd.DataFrame({"profile": "mv", "atom_id": atoms["atom_id"], "weight": [0.6, 0.4, 0.0]})
    result = signtest.post_opt(atoms, w, flatten(w, atoms))
    assert result.passed and result.info["warnings"] == 1 and len(result.warnings) == 1
    assert result.warnings[0].code == "ZERO_WEIGHT"


def test_post_opt_catches_a_flattener_that_drops_the_sign():
    atoms = build_atoms(_selection())
    w = pd.DataFrame({"profile": "hrp", "atom_id": atoms["atom_id"], "weight": [0.5, 0.3, 0.2]})
    dropped = flatten(w, atoms).assign(net_weight=lambda f: f["net_weight"].abs())  # the L-X2 defect
    result = signtest.post_opt(atoms, w, dropped)
    assert not result.passed
    assert {(c.code, c.subject) for c in result.checks if c.code != "SIGNS"} == {("FLATTEN_MISMATCH", "X:BBB"),
                                                                    ("FLATTEN_MISMATCH", "X:CCC")}


def test_post_opt_catches_negative_and_nonfinite_optimizer_weights():
    atoms = build_atoms(_selection())
    w = pd.DataFrame({"profile": "ms", "atom_id": atoms["atom_id"], "weight": [1.2, -0.2, np.nan]})
    result = signtest.post_opt(atoms, w, flatten(w.fillna(0.0), atoms))
    codes = {c.code for c in result.failed if c.code != "SIGNS"}
    assert {"NEGATIVE_WEIGHT", "NONFINITE_WEIGHT"} <= codes
    # a negative optimizer weight on a SHORT atom would flip it long: the flattened net is > 0
    assert "SHORT_NOT_NEGATIVE" in codes
