"""The Directional Correction Sign Test (quantlib.sleeve.signtest) on hand-built atom tables.

`pre_opt`: a LONG atom must equal its raw returns and a SHORT atom -min(raw, 1) exactly (a LONG atom
whose stream was negated fails, a SHORT one that was not inverted or not capped fails), NaN where raw
is NaN, directions as selected and typed, physical and synthetic columns present.
`post_opt`: optimizer weights finite and >= 0, flattened net weights equal sum(sign * w) per
(profile, symbol) -- a LONG sleeve holding a negative net fails, SHORT is the mirror -- and every
SHORT-only symbol is net negative; a zero weight is a warning, never an error.
The result shape: gate name, a SIGNS summary check counting errors and warnings, one check per
finding (`subject` the atom or symbol, required for errors only), `info` counts; and `enforce`.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from quantlib.core.gates import GateResult
from quantlib.sleeve import signtest

DAYS = pd.date_range("2026-01-01", periods=3, freq="D", tz="UTC")
RAW = pd.DataFrame({"X:AAA": [0.01, -0.02, 0.03], "X:BBB": [0.02, 1.5, -0.5]}, index=DAYS)
LONG_A, SHORT_B, SHORT_A = "X:AAA/r/LONG", "X:BBB/r/SHORT", "X:AAA/r/SHORT"


def atoms(*rows: tuple[str, str, str]) -> pd.DataFrame:
    """(atom_id, symbol, direction) rows; every atom has logic "r"."""
    return pd.DataFrame([{"atom_id": a, "symbol": s, "logic": "r", "direction": d} for a, s, d in rows],
                        columns=["atom_id", "symbol", "logic", "direction"])


LONG_ATOMS = atoms((LONG_A, "X:AAA", "LONG"))
SHORT_ATOMS = atoms((SHORT_B, "X:BBB", "SHORT"))


def findings(result: GateResult) -> list[tuple[str, str | None, bool]]:
    """(code, subject, required) of every check but the SIGNS summary."""
    return [(c.code, c.subject, c.required) for c in result.checks if c.code != "SIGNS"]


def weights(profile: str = "hrp", **by_atom: float) -> pd.DataFrame:
    return pd.DataFrame({"profile": profile, "atom_id": list(by_atom), "weight": list(by_atom.values())})


def flat(profile: str = "hrp", **by_symbol: float) -> pd.DataFrame:
    return pd.DataFrame({"profile": profile, "symbol": list(by_symbol), "net_weight": list(by_symbol.values())})


# ------------------------------------------------------------------ pre_opt: LONG
def test_a_long_atom_equal_to_its_raw_returns_passes():
    result = signtest.pre_opt(LONG_ATOMS, RAW, RAW[["X:AAA"]].set_axis([LONG_A], axis=1))
    assert result.gate == "sign_test_pre_opt" and result.passed
    assert [(c.code, c.passed, c.detail) for c in result.checks] == [("SIGNS", True, "0 error(s), 0 warning(s)")]
    assert result.info == {"stage": "pre_opt", "errors": 0, "warnings": 0}


def test_a_long_atom_with_a_negated_stream_fails():
    negated = pd.DataFrame({LONG_A: -RAW["X:AAA"]})
    result = signtest.pre_opt(LONG_ATOMS, RAW, negated)
    assert not result.passed and result.info["errors"] == 1
    assert findings(result) == [("INVERSION_MISMATCH", LONG_A, True)]
    # the largest |R_syn - R_raw| is |-0.03 - 0.03|
    assert result.check("INVERSION_MISMATCH").detail == "LONG: max |R_syn - expected| = 0.06 (must be exactly 0)"
    assert result.check("SIGNS").detail == "1 error(s), 0 warning(s)" and not result.check("SIGNS").passed


def test_the_inversion_must_be_exact_not_close():
    off = pd.DataFrame({LONG_A: RAW["X:AAA"] + np.array([0.0, 1e-15, 0.0])})
    assert findings(signtest.pre_opt(LONG_ATOMS, RAW, off)) == [("INVERSION_MISMATCH", LONG_A, True)]


def test_nan_must_sit_where_the_raw_returns_are_nan():
    raw = RAW.assign(**{"X:AAA": [0.01, np.nan, 0.03]})
    same = pd.DataFrame({LONG_A: raw["X:AAA"]})
    assert signtest.pre_opt(LONG_ATOMS, raw, same).passed
    filled = pd.DataFrame({LONG_A: raw["X:AAA"].fillna(0.0)})  # zero-filled instead of "no observation"
    assert findings(signtest.pre_opt(LONG_ATOMS, raw, filled)) == [("INVERSION_MISMATCH", LONG_A, True)]
    invented = pd.DataFrame({LONG_A: RAW["X:AAA"].where(RAW.index != DAYS[0])})
    assert findings(signtest.pre_opt(LONG_ATOMS, RAW, invented)) == [("INVERSION_MISMATCH", LONG_A, True)]


def test_only_the_synthetic_dates_are_compared():
    later = pd.DataFrame({LONG_A: RAW["X:AAA"].iloc[1:]})  # the training window is a suffix of the raw rows
    assert signtest.pre_opt(LONG_ATOMS, RAW, later).passed


# ------------------------------------------------------------------ pre_opt: SHORT mirrors LONG
def test_a_short_atom_is_the_negated_raw_capped_at_a_100_percent_loss():
    expected = pd.DataFrame({SHORT_B: [-0.02, -1.0, 0.5]}, index=DAYS)  # +150 % day -> -100 %
    assert signtest.pre_opt(SHORT_ATOMS, RAW, expected).passed


@pytest.mark.parametrize("stream, diff", [
    (RAW["X:BBB"], "2.5"),  # not inverted at all: the largest gap is |1.5 - (-1.0)|
    (-RAW["X:BBB"], "0.5"),  # inverted but not capped: |-1.5 - (-1.0)|
], ids=["not-inverted", "not-capped"])
def test_a_short_atom_not_inverted_or_not_capped_fails(stream, diff):
    result = signtest.pre_opt(SHORT_ATOMS, RAW, pd.DataFrame({SHORT_B: stream}))
    assert findings(result) == [("INVERSION_MISMATCH", SHORT_B, True)]
    assert result.check("INVERSION_MISMATCH").detail == f"SHORT: max |R_syn - expected| = {diff} (must be exactly 0)"


def test_a_short_atom_fed_the_long_stream_fails_and_a_long_atom_fed_the_short_stream_fails():
    both = atoms((LONG_A, "X:AAA", "LONG"), (SHORT_B, "X:BBB", "SHORT"))
    swapped = pd.DataFrame({LONG_A: -RAW["X:AAA"], SHORT_B: RAW["X:BBB"]})
    result = signtest.pre_opt(both, RAW, swapped)
    assert findings(result) == [("INVERSION_MISMATCH", LONG_A, True), ("INVERSION_MISMATCH", SHORT_B, True)]
    assert result.info["errors"] == 2 and result.check("SIGNS").detail == "2 error(s), 0 warning(s)"


# ------------------------------------------------------------------ pre_opt: directions and columns
def test_an_atom_whose_direction_differs_from_its_selection_fails():
    selection = pd.DataFrame({"symbol": ["X:AAA"], "logic": ["r"], "direction": ["SHORT"]})
    stream = pd.DataFrame({LONG_A: RAW["X:AAA"]})  # consistent with the (wrong) LONG atom
    result = signtest.pre_opt(LONG_ATOMS, RAW, stream, selection)
    assert findings(result) == [("DIRECTION_MISMATCH", LONG_A, True)]
    assert result.check("DIRECTION_MISMATCH").detail == "atom is LONG but was selected as SHORT"
    unselected = signtest.pre_opt(LONG_ATOMS, RAW, stream, selection.iloc[:0])
    assert unselected.check("DIRECTION_MISMATCH").detail == "atom is LONG but was selected as None"
    assert signtest.pre_opt(LONG_ATOMS, RAW, stream, selection.assign(direction="LONG")).passed


@pytest.mark.parametrize("direction", ["long", "", None, "BOTH"])
def test_an_untyped_direction_is_an_error_never_defaulted_to_long(direction):
    bad = atoms(("X:AAA/r/?", "X:AAA", direction))
    result = signtest.pre_opt(bad, RAW, pd.DataFrame({"X:AAA/r/?": RAW["X:AAA"]}))
    assert findings(result) == [("BAD_DIRECTION", "X:AAA/r/?", True)]  # and it is not checked as LONG
    assert result.check("BAD_DIRECTION").detail == "direction is neither LONG nor SHORT"


def test_missing_physical_or_synthetic_columns_fail():
    both = atoms((LONG_A, "X:AAA", "LONG"), (SHORT_B, "X:BBB", "SHORT"))
    result = signtest.pre_opt(both, RAW.drop(columns="X:BBB"), pd.DataFrame({SHORT_B: [0.0, 0.0, 0.0]}, index=DAYS))
    assert findings(result) == [("MISSING_SYNTHETIC", LONG_A, True), ("MISSING_PHYSICAL", SHORT_B, True)]
    assert result.check("MISSING_PHYSICAL").detail == "no raw returns column X:BBB"
    assert result.check("MISSING_SYNTHETIC").detail == "no synthetic returns column"


def test_no_atoms_is_an_error():
    result = signtest.pre_opt(atoms(), RAW, pd.DataFrame(index=DAYS))
    assert not result.passed and findings(result) == [("NO_ATOMS", "", True)]


# ------------------------------------------------------------------ post_opt: LONG
def test_a_long_sleeve_with_positive_weights_and_a_matching_flattening_passes():
    result = signtest.post_opt(LONG_ATOMS, weights(**{LONG_A: 1.0}), flat(**{"X:AAA": 1.0}))
    assert result.gate == "sign_test_post_opt" and result.passed and findings(result) == []
    assert result.info == {"stage": "post_opt", "errors": 0, "warnings": 0}


def test_a_long_atom_with_a_negative_weight_fails():
    result = signtest.post_opt(LONG_ATOMS, weights(**{LONG_A: -0.5}), flat(**{"X:AAA": -0.5}))
    assert not result.passed and findings(result) == [("NEGATIVE_WEIGHT", LONG_A, True)]
    assert result.check("NEGATIVE_WEIGHT").detail == ("profile hrp: optimizer weight -0.5 < 0 "
                                                      "(optimizers see synthetic-long streams)")


def test_a_long_symbol_flattened_to_a_negative_net_fails():
    result = signtest.post_opt(LONG_ATOMS, weights(**{LONG_A: 1.0}), flat(**{"X:AAA": -1.0}))
    assert findings(result) == [("FLATTEN_MISMATCH", "X:AAA", True)]
    assert result.check("FLATTEN_MISMATCH").detail == "profile hrp: flattened net -1.0 != sum(sign * w) = 1"


def test_the_flattened_net_must_match_within_the_tolerance():
    ok = signtest.post_opt(LONG_ATOMS, weights(**{LONG_A: 1.0}), flat(**{"X:AAA": 1.0 + 5e-13}))
    assert ok.passed
    off = signtest.post_opt(LONG_ATOMS, weights(**{LONG_A: 1.0}), flat(**{"X:AAA": 1.0 + 1e-11}))
    assert findings(off) == [("FLATTEN_MISMATCH", "X:AAA", True)]


def test_a_symbol_missing_from_the_flattening_fails():
    result = signtest.post_opt(LONG_ATOMS, weights(**{LONG_A: 1.0}), flat())
    assert findings(result) == [("FLATTEN_MISMATCH", "X:AAA", True)]
    assert result.check("FLATTEN_MISMATCH").detail == "profile hrp: flattened net None != sum(sign * w) = 1"


def test_a_nan_flattened_net_weight_fails():
    result = signtest.post_opt(LONG_ATOMS, weights(**{LONG_A: 1.0}), flat(**{"X:AAA": np.nan}))
    assert not result.passed and findings(result) == [("FLATTEN_MISMATCH", "X:AAA", True)]


def test_a_flattened_position_no_atom_weight_explains_fails():
    result = signtest.post_opt(LONG_ATOMS, weights(**{LONG_A: 1.0}), flat(**{"X:AAA": 1.0, "X:ZZZ": 0.2}))
    assert not result.passed and findings(result) == [("FLATTEN_MISMATCH", "X:ZZZ", True)]
    assert "X:ZZZ" not in set(LONG_ATOMS["symbol"])
    zero = signtest.post_opt(LONG_ATOMS, weights(**{LONG_A: 1.0}), flat(**{"X:AAA": 1.0, "X:ZZZ": 0.0}))
    assert zero.passed  # a zero row holds nothing


# ------------------------------------------------------------------ post_opt: SHORT mirrors LONG
def test_a_short_atom_flattened_to_a_negative_net_passes():
    assert signtest.post_opt(SHORT_ATOMS, weights(**{SHORT_B: 1.0}), flat(**{"X:BBB": -1.0})).passed


def test_a_short_atom_whose_sign_the_flattener_dropped_fails():
    result = signtest.post_opt(SHORT_ATOMS, weights(**{SHORT_B: 1.0}), flat(**{"X:BBB": 1.0}))
    assert findings(result) == [("FLATTEN_MISMATCH", "X:BBB", True)]
    assert result.check("FLATTEN_MISMATCH").detail == "profile hrp: flattened net 1.0 != sum(sign * w) = -1"


def test_a_negative_weight_on_a_short_atom_turns_it_long_and_fails_twice():
    result = signtest.post_opt(SHORT_ATOMS, weights(**{SHORT_B: -0.25}), flat(**{"X:BBB": 0.25}))
    assert findings(result) == [("NEGATIVE_WEIGHT", SHORT_B, True), ("SHORT_NOT_NEGATIVE", "X:BBB", True)]
    assert result.check("SHORT_NOT_NEGATIVE").detail == "profile hrp: SHORT-only symbol has net weight 0.25 (must be < 0)"


def test_long_and_short_atoms_of_one_symbol_net_out_per_profile():
    both = atoms((LONG_A, "X:AAA", "LONG"), (SHORT_A, "X:AAA", "SHORT"))
    w = pd.concat([weights("hrp", **{LONG_A: 0.3, SHORT_A: 0.7}), weights("mv", **{LONG_A: 0.6, SHORT_A: 0.4})])
    f = pd.concat([flat("hrp", **{"X:AAA": -0.4}), flat("mv", **{"X:AAA": 0.2})])  # not SHORT-only: may be > 0
    assert signtest.post_opt(both, w, f).passed
    swapped = pd.concat([flat("hrp", **{"X:AAA": 0.2}), flat("mv", **{"X:AAA": -0.4})])  # profiles crossed
    assert findings(signtest.post_opt(both, w, swapped)) == [("FLATTEN_MISMATCH", "X:AAA", True)] * 2


# ------------------------------------------------------------------ post_opt: other errors, warnings
def test_a_zero_weight_is_a_warning_that_never_fails_the_gate():
    both = atoms((LONG_A, "X:AAA", "LONG"), (SHORT_B, "X:BBB", "SHORT"))
    result = signtest.post_opt(both, weights(**{LONG_A: 1.0, SHORT_B: 0.0}), flat(**{"X:AAA": 1.0, "X:BBB": 0.0}))
    assert result.passed and result.failed == []
    assert findings(result) == [("ZERO_WEIGHT", SHORT_B, False)]
    assert [c.code for c in result.warnings] == ["ZERO_WEIGHT"]
    assert result.info == {"stage": "post_opt", "errors": 0, "warnings": 1}
    assert result.check("SIGNS").detail == "0 error(s), 1 warning(s)"
    assert result.check("ZERO_WEIGHT").detail == "profile hrp: weight 0, sign not observable"
    signtest.enforce(result, gate=True, where="optimize")  # warnings never raise


def test_warnings_and_errors_are_counted_apart():
    both = atoms((LONG_A, "X:AAA", "LONG"), (SHORT_B, "X:BBB", "SHORT"))
    result = signtest.post_opt(both, weights(**{LONG_A: 1.0, SHORT_B: 0.0}), flat(**{"X:AAA": 0.5, "X:BBB": 0.0}))
    assert not result.passed and result.info == {"stage": "post_opt", "errors": 1, "warnings": 1}
    assert [c.code for c in result.failed] == ["SIGNS", "FLATTEN_MISMATCH"]
    assert [c.code for c in result.warnings] == ["ZERO_WEIGHT"]
    assert result.check("SIGNS").detail == "1 error(s), 1 warning(s)"


def test_unknown_atoms_and_non_finite_weights_fail():
    w = weights(**{LONG_A: np.nan, "X:CCC/r/LONG": 1.0})
    result = signtest.post_opt(LONG_ATOMS, w, flat(**{"X:AAA": np.nan, "X:CCC": 1.0}))
    # the NaN weight's symbol is reported once (its weight), the unknown atom's position as unexplained
    assert [(c, s) for c, s, _ in findings(result)] == [("NONFINITE_WEIGHT", LONG_A), ("UNKNOWN_ATOM", "X:CCC/r/LONG"),
                                                        ("FLATTEN_MISMATCH", "X:CCC")]
    assert result.check("UNKNOWN_ATOM").detail == "profile hrp: weight for an atom not in atoms.parquet"
    assert result.check("NONFINITE_WEIGHT").detail == "profile hrp: weight nan"


def test_a_weight_for_an_atom_with_an_untyped_direction_is_refused():
    bad = atoms((LONG_A, "X:AAA", "long"))
    result = signtest.post_opt(bad, weights(**{LONG_A: 1.0}), flat(**{"X:AAA": 1.0}))
    # no valid atom explains the flattened X:AAA position either
    assert [(c, s) for c, s, _ in findings(result)] == [("BAD_DIRECTION", LONG_A), ("UNKNOWN_ATOM", LONG_A),
                                                        ("FLATTEN_MISMATCH", "X:AAA")]


# ------------------------------------------------------------------ enforce
def test_enforce_raises_with_the_first_finding_only_when_the_atomic_gate_is_on():
    result = signtest.pre_opt(LONG_ATOMS, RAW, pd.DataFrame({LONG_A: -RAW["X:AAA"]}))
    signtest.enforce(result, gate=False, where="synthesize")  # recorded, not raised
    with pytest.raises(signtest.SignTestError) as err:
        signtest.enforce(result, gate=True, where="synthesize")
    message = str(err.value)
    assert message.startswith("synthesize: directional sign test failed with 1 error(s), first INVERSION_MISMATCH "
                              f"on {LONG_A}: LONG: max |R_syn - expected| = 0.06")
    assert "features.directional_sign_test_gate_atomic is on" in message
    passed = signtest.pre_opt(LONG_ATOMS, RAW, pd.DataFrame({LONG_A: RAW["X:AAA"]}))
    signtest.enforce(passed, gate=True, where="synthesize")


def test_the_result_round_trips_through_its_file_shape():
    result = signtest.post_opt(SHORT_ATOMS, weights(**{SHORT_B: 1.0}), flat(**{"X:BBB": 1.0}))
    doc = result.to_dict()
    assert doc["gate"] == "sign_test_post_opt" and doc["passed"] is False and doc["info"]["errors"] == 1
    assert GateResult.from_dict(doc) == result
