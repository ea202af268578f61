"""The atomic audit gate of a sleeve run (SPEC §2.6): every verdict is computed, never assumed.

Checks (code: what it verifies):
  ARTIFACTS       every output of every completed earlier stage exists and hashes as in the manifest
  RETURNS         the returns matrix is non-empty (>= 2 assets, >= 2 dates) and finite where present
  SELECTION       the selection holds >= 2 atoms and its audit counts add up
  STABLE_SUM      each risk profile's weights are finite, >= 0 and sum to 1 (1e-9), gate recorded passed
  SIGN_TEST_PRE / SIGN_TEST_POST   the sign tests passed (required when a sign-test gate flag is on)
  CALENDAR        crypto returns contain weekend rows; equities returns none
Result: {passed, checks: [{code, passed, required, detail}]}; `passed` = every required check passed.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from quantlib.core import storage
from quantlib.core.runs import Run

WEIGHT_SUM_TOLERANCE = 1e-9


def _check(code: str, passed: bool, detail: str, required: bool = True) -> dict:
    return {"code": code, "passed": bool(passed), "required": required, "detail": detail}


def check_artifacts(run: Run, stage_names: list[str]) -> dict:
    manifest = storage.read_json(run.dir / "manifest.json")
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
    return _check("ARTIFACTS", not bad, "; ".join(bad) or f"{count} artifacts of {len(stage_names)} stages hash as recorded")


def check_returns(returns: pd.DataFrame) -> dict:
    values = returns.to_numpy(dtype=float)
    ok = returns.shape[0] >= 2 and returns.shape[1] >= 2 and bool(np.isfinite(values[~np.isnan(values)]).all())
    return _check("RETURNS", ok, f"{returns.shape[0]} dates x {returns.shape[1]} assets")


def check_selection(selection: pd.DataFrame, audit: dict) -> dict:
    funnel = {step["step"]: step["remaining"] for step in audit.get("funnel", [])}
    n = len(selection)
    ok = n >= 2 and audit.get("n_selected") == n
    return _check("SELECTION", ok, f"{n} selected at stage {audit.get('stage_reached')}; funnel {funnel}")


def check_weights(weights: pd.DataFrame, optimization: dict) -> list[dict]:
    out = []
    for profile, frame in weights.groupby("profile", sort=False):
        w = frame["weight"].to_numpy(dtype=float)
        gate = optimization.get("profiles", {}).get(profile, {}).get("gate_passed") is True
        ok = bool(np.isfinite(w).all() and (w >= 0).all() and abs(w.sum() - 1.0) <= WEIGHT_SUM_TOLERANCE and gate)
        out.append(_check(f"STABLE_SUM:{profile}", ok,
                          f"sum {w.sum():.12f}, min {w.min():.3g}, gate {'passed' if gate else 'not recorded as passed'}"))
    return out


def check_sign_test(result: dict, code: str, required: bool) -> dict:
    return _check(code, result.get("passed") is True,
                  f"{result.get('errors')} error(s), {result.get('warnings')} warning(s)", required=required)


def check_calendar(returns: pd.DataFrame, asset_class: str) -> dict:
    weekend = int((pd.DatetimeIndex(returns.index).day_of_week >= 5).sum())
    if asset_class == "crypto":
        return _check("CALENDAR", weekend > 0, f"{weekend} weekend rows (crypto trades 24x7)")
    return _check("CALENDAR", weekend == 0, f"{weekend} weekend rows (equities: must be 0, never zero-filled)")


def audit_sleeve(run: Run, earlier_stages: list[str]) -> dict:
    """Run every check on a sleeve run's artifacts; the caller writes audit.json and enforces it."""
    profile = run.profile
    art = lambda rel: run.path(f"artifacts/{rel}")  # noqa: E731
    gate = profile.features.directional_sign_test_gate_atomic or profile.features.directional_sign_test_gate
    returns = storage.read_parquet(art("returns.parquet"))
    checks = [
        check_artifacts(run, earlier_stages),
        check_returns(returns),
        check_selection(storage.read_parquet(art("selection.parquet")), storage.read_json(art("selection_audit.json"))),
        *check_weights(storage.read_parquet(art("weights.parquet")), storage.read_json(art("optimization.json"))),
        check_sign_test(storage.read_json(art("sign_test_pre_opt.json")), "SIGN_TEST_PRE", gate),
        check_sign_test(storage.read_json(art("sign_test.json")), "SIGN_TEST_POST", gate),
        check_calendar(returns, profile.sleeve.asset_class),
    ]
    passed = all(c["passed"] for c in checks if c["required"])
    return {"run_id": run.id, "profile": profile.name, "passed": passed, "checks": checks}
