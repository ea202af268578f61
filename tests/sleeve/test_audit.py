"""The sleeve's atomic audit gate (quantlib.sleeve.audit.audit_sleeve) on hand-built inputs.

A small run is created in tmp_path (its manifest records hand-written stage outputs and their hashes);
returns, selection, weights, optimization info and the two sign-test results are built in each test.
Covered, each passing and failing: ARTIFACTS (stage not completed or absent, output missing or changed,
the manifest read from disk), RETURNS (too few dates or assets, non-finite values; NaN allowed),
SELECTION (too few atoms, audit count mismatch), STABLE_SUM per risk profile (sum, sign, NaN, the
Stable Sum Gate not recorded, a risk profile without weights), SIGN_TEST_PRE / SIGN_TEST_POST
(required only with a sign-test gate flag on) and CALENDAR (crypto needs weekend rows, equities none).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from quantlib.core import storage
from quantlib.core.gates import Check, GateResult
from quantlib.core.profiles import load_profile
from quantlib.core.runs import Run
from quantlib.sleeve.audit import audit_sleeve

PROFILES = ("hrp", "min_variance")  # the risk profiles of the test sleeves
CRYPTO_DAYS = pd.date_range("2026-01-02", periods=4, freq="D", tz="UTC")  # Fri, Sat, Sun, Mon
WEEKDAYS = pd.date_range("2026-01-05", periods=4, freq="D", tz="UTC")  # Mon .. Thu


def make_run(tmp_path, profile: str = "demo_crypto_long", **env: str) -> Run:
    env = {"FW_OPTIMIZER__PROFILES": f"[{', '.join(PROFILES)}]", **env}
    return Run.create(tmp_path / "runs", load_profile(profile, env=env), "sleeve", tmp_path, run_id="sleeve-1")


def record_stage(run: Run, name: str, status: str = "completed", **outputs: bytes) -> None:
    """Write `outputs` (file stem under artifacts/ -> bytes) and record them, hashed, in the manifest on disk."""
    hashes = {}
    for stem, data in outputs.items():
        rel = f"artifacts/{stem}.bin"
        storage.write_bytes(run.path(rel), data)
        hashes[rel] = storage.sha256_file(run.path(rel))
    run.manifest["stages"][name] = {"status": status, "outputs": hashes}
    run.save()


def signs(gate: str, errors: int = 0) -> GateResult:
    """A sign-test result as signtest builds it: the SIGNS summary and one check per error."""
    checks = [Check("SIGNS", errors == 0, f"{errors} error(s), 0 warning(s)")]
    checks += [Check("INVERSION_MISMATCH", False, "max |R_syn - expected| = 1", subject=f"X:A{i}/r/LONG")
               for i in range(errors)]
    return GateResult(gate, checks, {"errors": errors, "warnings": 0})


def inputs(index: pd.DatetimeIndex = CRYPTO_DAYS, **changes) -> dict:
    """The keyword inputs of a sleeve whose every check passes; `changes` replaces some of them."""
    atoms = ["X:AAA/r/LONG", "X:BBB/r/LONG"]
    weights = pd.DataFrame({"profile": np.repeat(PROFILES, 2), "atom_id": atoms * 2, "weight": [0.6, 0.4, 0.25, 0.75]})
    good = {
        "returns": pd.DataFrame({"X:AAA": [0.01, -0.02, np.nan, 0.03], "X:BBB": [0.0, 0.01, 0.02, -0.01]}, index=index),
        "selection": pd.DataFrame({"symbol": ["X:AAA", "X:BBB"], "logic": "r", "direction": "LONG"}),
        "selection_audit": {"n_selected": 2, "stage_reached": 1,
                            "funnel": [{"step": "candidates", "remaining": 5}, {"step": "selected", "remaining": 2}]},
        "weights": weights,
        "optimization": {"profiles": {p: {"gate_passed": True} for p in PROFILES}},
        "sign_test_pre": signs("sign_test_pre_opt"),
        "sign_test_post": signs("sign_test_post_opt"),
    }
    return {**good, **changes}


@pytest.fixture
def run(tmp_path) -> Run:
    """A crypto sleeve run with two completed earlier stages."""
    run = make_run(tmp_path)
    record_stage(run, "aggregate", returns=b"returns bytes", benchmark=b"benchmark bytes")
    record_stage(run, "select", selection=b"selection bytes")
    return run


EARLIER = ["aggregate", "select"]


def failed(result: GateResult) -> list[tuple[str, str | None]]:
    return [(c.code, c.subject) for c in result.failed]


# ------------------------------------------------------------------ the whole gate
def test_a_clean_sleeve_passes_every_check_in_order(run):
    result = audit_sleeve(run, EARLIER, **inputs())
    assert result.gate == "audit" and result.passed and result.failed == [] and result.warnings == []
    assert [c.label() for c in result.checks] == ["ARTIFACTS", "RETURNS", "SELECTION", "STABLE_SUM:hrp",
                                                  "STABLE_SUM:min_variance", "SIGN_TEST_PRE", "SIGN_TEST_POST",
                                                  "CALENDAR"]
    assert result.info == {"run_id": "sleeve-1", "profile": "demo_crypto_long"}
    assert result.check("ARTIFACTS").detail == "3 artifacts of 2 stages hash as recorded"
    assert result.check("RETURNS").detail == "4 dates x 2 assets"
    assert result.check("SELECTION").detail == ("2 selected at stage 1; funnel {'candidates': 5, 'selected': 2}")
    assert result.check("STABLE_SUM", "hrp").detail == "sum 1.000000000000, min 0.4, gate passed"
    assert result.check("CALENDAR").detail == "2 weekend rows (crypto trades 24x7)"
    assert GateResult.from_dict(result.to_dict()) == result  # the file shape round-trips


# ------------------------------------------------------------------ ARTIFACTS
def test_a_stage_that_did_not_complete_or_never_ran_fails_artifacts(run):
    record_stage(run, "select", status="failed", selection=b"selection bytes")
    result = audit_sleeve(run, [*EARLIER, "synthesize"], **inputs())
    assert failed(result) == [("ARTIFACTS", None)]
    assert result.check("ARTIFACTS").detail == "stage select is failed; stage synthesize is missing"


def test_a_missing_or_changed_output_fails_artifacts_naming_the_file(run):
    run.path("artifacts/returns.bin").unlink()
    run.path("artifacts/benchmark.bin").write_bytes(b"edited after its stage")
    result = audit_sleeve(run, EARLIER, **inputs())
    assert failed(result) == [("ARTIFACTS", None)]
    assert result.check("ARTIFACTS").detail == ("artifacts/returns.bin missing; "
                                                "artifacts/benchmark.bin changed since its stage wrote it")


def test_artifacts_reads_the_manifest_on_disk_not_the_callers_copy(run):
    run.manifest["stages"]["select"]["status"] = "failed"  # in memory only, never saved
    assert audit_sleeve(run, EARLIER, **inputs()).check("ARTIFACTS").passed
    stale = Run.at(run.dir)
    record_stage(run, "select", status="running")  # on disk; `stale` still holds "completed"
    assert stale.manifest["stages"]["select"]["status"] == "completed"
    check = audit_sleeve(stale, EARLIER, **inputs()).check("ARTIFACTS")
    assert not check.passed and check.detail == "stage select is running"


# ------------------------------------------------------------------ RETURNS
@pytest.mark.parametrize("returns, detail", [
    (pd.DataFrame({"X:AAA": [0.01], "X:BBB": [0.02]}, index=CRYPTO_DAYS[:1]), "1 dates x 2 assets"),
    (pd.DataFrame({"X:AAA": [0.01, 0.02, 0.0, 0.01]}, index=CRYPTO_DAYS), "4 dates x 1 assets"),
    (pd.DataFrame({"X:AAA": [0.01, np.inf, 0.0, 0.01], "X:BBB": 0.0}, index=CRYPTO_DAYS), "4 dates x 2 assets"),
    (pd.DataFrame({"X:AAA": [0.01, -np.inf, 0.0, 0.01], "X:BBB": 0.0}, index=CRYPTO_DAYS), "4 dates x 2 assets"),
], ids=["one-date", "one-asset", "inf", "-inf"])
def test_returns_too_small_or_not_finite_fail(run, returns, detail):
    result = audit_sleeve(run, EARLIER, **inputs(returns=returns))
    assert ("RETURNS", None) in failed(result)
    assert result.check("RETURNS").detail == detail


# ------------------------------------------------------------------ SELECTION
def test_a_selection_of_one_atom_fails(run):
    one = inputs()["selection"].head(1)
    result = audit_sleeve(run, EARLIER, **inputs(selection=one, selection_audit={"n_selected": 1, "stage_reached": 3}))
    assert failed(result) == [("SELECTION", None)]
    assert result.check("SELECTION").detail == "1 selected at stage 3; funnel {}"


@pytest.mark.parametrize("audit", [{"n_selected": 3, "stage_reached": 1}, {"stage_reached": 1}],
                         ids=["count-differs", "count-absent"])
def test_a_selection_audit_that_does_not_count_the_selection_fails(run, audit):
    result = audit_sleeve(run, EARLIER, **inputs(selection_audit=audit))
    assert failed(result) == [("SELECTION", None)]


# ------------------------------------------------------------------ STABLE_SUM
@pytest.mark.parametrize("hrp, detail", [
    ([0.6, 0.3], "sum 0.900000000000, min 0.3, gate passed"),
    ([1.2, -0.2], "sum 1.000000000000, min -0.2, gate passed"),
    ([0.6, np.nan], "sum nan, min nan, gate passed"),
    ([0.6, 0.4 + 2e-9], "sum 1.000000002000, min 0.4, gate passed"),
], ids=["sum", "negative", "nan", "beyond-tolerance"])
def test_a_risk_profile_whose_weights_break_the_stable_sum_fails_alone(run, hrp, detail):
    weights = inputs()["weights"].copy()
    weights.loc[weights["profile"] == "hrp", "weight"] = hrp
    result = audit_sleeve(run, EARLIER, **inputs(weights=weights))
    assert failed(result) == [("STABLE_SUM", "hrp")]
    assert result.check("STABLE_SUM", "hrp").detail == detail
    assert result.check("STABLE_SUM", "min_variance").passed


def test_weights_within_the_tolerance_pass(run):
    weights = inputs()["weights"].copy()
    weights.loc[weights["profile"] == "hrp", "weight"] = [0.6, 0.4 + 5e-10]
    assert audit_sleeve(run, EARLIER, **inputs(weights=weights)).passed


@pytest.mark.parametrize("info", [{"gate_passed": False}, {}, {"gate_passed": "true"}],
                         ids=["false", "absent", "not-a-bool"])
def test_a_stable_sum_gate_not_recorded_as_passed_fails(run, info):
    optimization = {"profiles": {"hrp": {"gate_passed": True}, "min_variance": info}}
    result = audit_sleeve(run, EARLIER, **inputs(optimization=optimization))
    assert failed(result) == [("STABLE_SUM", "min_variance")]
    assert result.check("STABLE_SUM", "min_variance").detail.endswith("gate not recorded as passed")


def test_a_risk_profile_without_weights_fails(run):
    weights = inputs()["weights"]
    result = audit_sleeve(run, EARLIER, **inputs(weights=weights[weights["profile"] == "hrp"]))
    assert failed(result) == [("STABLE_SUM", "min_variance")]
    assert "no weights" in result.check("STABLE_SUM", "min_variance").detail
    empty = audit_sleeve(run, EARLIER, **inputs(weights=weights.iloc[:0]))
    assert failed(empty) == [("STABLE_SUM", "hrp"), ("STABLE_SUM", "min_variance")]


# ------------------------------------------------------------------ SIGN_TEST_PRE / SIGN_TEST_POST
def test_a_failed_sign_test_is_a_warning_while_the_gate_flags_are_off(run):
    result = audit_sleeve(run, EARLIER, **inputs(sign_test_pre=signs("sign_test_pre_opt", errors=2)))
    assert result.passed and result.failed == []
    assert [(c.code, c.detail) for c in result.warnings] == [("SIGN_TEST_PRE", "2 error(s), 0 warning(s)")]
    assert result.check("SIGN_TEST_POST").passed and not result.check("SIGN_TEST_POST").required


@pytest.mark.parametrize("flag", ["FW_FEATURES__DIRECTIONAL_SIGN_TEST_GATE",
                                  "FW_FEATURES__DIRECTIONAL_SIGN_TEST_GATE_ATOMIC"])
def test_either_gate_flag_makes_the_sign_tests_required(tmp_path, flag):
    run = make_run(tmp_path, **{flag: "true"})
    record_stage(run, "aggregate", returns=b"r")
    ok = audit_sleeve(run, ["aggregate"], **inputs())
    assert ok.passed and ok.check("SIGN_TEST_PRE").required and ok.check("SIGN_TEST_POST").required
    result = audit_sleeve(run, ["aggregate"], **inputs(sign_test_post=signs("sign_test_post_opt", errors=1)))
    assert not result.passed and failed(result) == [("SIGN_TEST_POST", None)]
    assert result.check("SIGN_TEST_POST").detail == "1 error(s), 0 warning(s)"


# ------------------------------------------------------------------ CALENDAR
def test_crypto_returns_without_weekend_rows_fail(run):
    result = audit_sleeve(run, EARLIER, **inputs(index=WEEKDAYS))
    assert failed(result) == [("CALENDAR", None)]
    assert result.check("CALENDAR").detail == "0 weekend rows (crypto trades 24x7)"


def test_equities_returns_must_have_no_weekend_row(tmp_path):
    run = make_run(tmp_path, "demo_equities_long")
    record_stage(run, "aggregate", returns=b"r")
    assert audit_sleeve(run, ["aggregate"], **inputs(index=WEEKDAYS)).passed
    result = audit_sleeve(run, ["aggregate"], **inputs(index=CRYPTO_DAYS))
    assert failed(result) == [("CALENDAR", None)]
    assert result.check("CALENDAR").detail == "2 weekend rows (equities: must be 0, never zero-filled)"
    assert result.info["profile"] == "demo_equities_long"
