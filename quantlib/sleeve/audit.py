"""The atomic audit gate of a sleeve run (SPEC §2.6): every verdict is computed, never assumed.

Checks (code: what it verifies):
  ARTIFACTS       every output of every completed earlier stage exists and hashes as in the manifest
  RETURNS         the returns matrix is non-empty (>= 2 assets, >= 2 dates) and finite where present
  SELECTION       the selection holds >= 2 atoms and its audit counts add up
  STABLE_SUM      each risk profile's weights exist, are finite, >= 0 and sum to 1 (1e-9), gate recorded passed
  SIGN_TEST_PRE / SIGN_TEST_POST   the sign tests passed (required when a sign-test gate flag is on)
  CALENDAR        crypto returns contain weekend rows; equities returns none
Result: a `GateResult` (gate `audit`); it passes when every required check passed.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from quantlib.core import storage
from quantlib.core.gates import Check, GateResult
from quantlib.core.runs import Run

WEIGHT_SUM_TOLERANCE = 1e-9


def check_artifacts(run: Run, stage_names: list[str]) -> Check:
    """Every output of the named stages, as recorded in the manifest on disk, exists with its hash."""
    manifest = Run.at(run.dir).manifest  # the file as written, not this process's copy
    bad = []
    count = 0
    for name in stage_names:
        record = manifest.get("stages", {}).get(name, {})
        if record.get("status") != "completed":
            bad.append(f"stage {name} is {record.get('status', 'missing')}")
            continue
        for rel, digest in record.get("outputs", {}).items():
            count += 1
            path = run.path(rel)
            if not path.exists():
                bad.append(f"{rel} missing")
            elif storage.sha256_file(path) != digest:
                bad.append(f"{rel} changed since its stage wrote it")
    return Check("ARTIFACTS", not bad, "; ".join(bad) or f"{count} artifacts of {len(stage_names)} stages hash as recorded")


def check_returns(returns: pd.DataFrame) -> Check:
    values = returns.to_numpy(dtype=float)
    ok = returns.shape[0] >= 2 and returns.shape[1] >= 2 and bool(np.isfinite(values[~np.isnan(values)]).all())
    return Check("RETURNS", ok, f"{returns.shape[0]} dates x {returns.shape[1]} assets")


def check_selection(selection: pd.DataFrame, audit: dict) -> Check:
    funnel = {step["step"]: step["remaining"] for step in audit.get("funnel", [])}
    n = len(selection)
    ok = n >= 2 and audit.get("n_selected") == n
    return Check("SELECTION", ok, f"{n} selected at stage {audit.get('stage_reached')}; funnel {funnel}")


def check_weights(weights: pd.DataFrame, optimization: dict, profiles: Sequence[str] = ()) -> list[Check]:
    """One STABLE_SUM check per risk profile in `weights`, and a failed one for each of `profiles` (the
    sleeve's risk profiles) without any weight (an empty weights table must not pass)."""
    present = set(weights["profile"])
    out = [Check("STABLE_SUM", False, "no weights for this risk profile of the sleeve", subject=p)
           for p in profiles if p not in present]
    for profile, frame in weights.groupby("profile", sort=False):
        w = frame["weight"].to_numpy(dtype=float)
        gate = optimization.get("profiles", {}).get(profile, {}).get("gate_passed") is True
        ok = bool(np.isfinite(w).all() and (w >= 0).all() and abs(w.sum() - 1.0) <= WEIGHT_SUM_TOLERANCE and gate)
        out.append(Check("STABLE_SUM", ok, f"sum {w.sum():.12f}, min {w.min():.3g}, "
                                           f"gate {'passed' if gate else 'not recorded as passed'}", subject=profile))
    return out


def check_sign_test(result: GateResult, code: str, required: bool) -> Check:
    return Check(code, result.passed, result.check("SIGNS").detail, required=required)


def check_calendar(returns: pd.DataFrame, asset_class: str) -> Check:
    weekend = int((pd.DatetimeIndex(returns.index).day_of_week >= 5).sum())
    if asset_class == "crypto":
        return Check("CALENDAR", weekend > 0, f"{weekend} weekend rows (crypto trades 24x7)")
    return Check("CALENDAR", weekend == 0, f"{weekend} weekend rows (equities: must be 0, never zero-filled)")


def audit_sleeve(run: Run, earlier_stages: list[str], *, returns: pd.DataFrame, selection: pd.DataFrame,
                 selection_audit: dict, weights: pd.DataFrame, optimization: dict, sign_test_pre: GateResult,
                 sign_test_post: GateResult) -> GateResult:
    """Every check on a sleeve run's artifacts (read by the caller); the caller writes and enforces it."""
    profile = run.profile
    gate = profile.features.directional_sign_test_gate_atomic or profile.features.directional_sign_test_gate
    checks = [
        check_artifacts(run, earlier_stages),
        check_returns(returns),
        check_selection(selection, selection_audit),
        *check_weights(weights, optimization, [str(p) for p in profile.optimizer.profiles]),
        check_sign_test(sign_test_pre, "SIGN_TEST_PRE", gate),
        check_sign_test(sign_test_post, "SIGN_TEST_POST", gate),
        check_calendar(returns, profile.sleeve.asset_class),
    ]
    return GateResult("audit", checks, {"run_id": run.id, "profile": profile.name})
