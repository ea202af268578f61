"""Directional Correction Sign Test (SPEC §2.3): pre-optimization and post-optimization checks.

Every check asserts positively (LESSONS L-X2): a SHORT atom must be *seen* inverted before the
optimizer and *seen* contributing a negative weight after flattening; nothing defaults to LONG.
Result: a `GateResult` (gate `sign_test_pre_opt` / `sign_test_post_opt`): one check per finding (an
error is required, a warning is not; `subject` is the atom) and a `SIGNS` summary check (no errors).
Error codes: NO_ATOMS, BAD_DIRECTION, DIRECTION_MISMATCH, MISSING_PHYSICAL, MISSING_SYNTHETIC, INVERSION_MISMATCH,
NONFINITE_WEIGHT, NEGATIVE_WEIGHT, UNKNOWN_ATOM, SHORT_NOT_NEGATIVE, FLATTEN_MISMATCH.
Warning codes: ZERO_WEIGHT (an atom the optimizer left out: its sign cannot be observed).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from quantlib.core.errors import GateError
from quantlib.core.gates import Check, GateResult
from quantlib.core.enums import Direction
from quantlib.sleeve.synthesis import SHORT_LOSS_CAP

FLATTEN_TOLERANCE = 1e-12


class SignTestError(GateError):
    """The sign test failed with the atomic gate on."""


class _Findings:
    def __init__(self) -> None:
        self.items: list[dict] = []

    def add(self, level: str, code: str, atom: str, message: str) -> None:
        self.items.append({"level": level, "code": code, "atom": atom, "message": message})

    def result(self, stage: str) -> GateResult:
        errors = sum(f["level"] == "error" for f in self.items)
        warnings = sum(f["level"] == "warning" for f in self.items)
        checks = [Check("SIGNS", errors == 0, f"{errors} error(s), {warnings} warning(s)")]
        checks += [Check(f["code"], False, f["message"], required=f["level"] == "error", subject=f["atom"])
                   for f in self.items]
        return GateResult(f"sign_test_{stage}", checks, {"stage": stage, "errors": errors, "warnings": warnings})


def _valid_atoms(atoms: pd.DataFrame, found: _Findings) -> pd.DataFrame:
    if atoms.empty:
        found.add("error", "NO_ATOMS", "", "no atoms: the sleeve has nothing to trade")
    ok = atoms["direction"].isin([d.value for d in Direction])
    for atom in atoms.loc[~ok, "atom_id"]:
        found.add("error", "BAD_DIRECTION", atom, "direction is neither LONG nor SHORT")
    return atoms[ok]


def pre_opt(atoms: pd.DataFrame, raw: pd.DataFrame, synthetic: pd.DataFrame,
            selection: pd.DataFrame | None = None) -> GateResult:
    """Before optimization: each atom keeps the direction it was selected with, its physical column
    exists and max |R_syn - expected| == 0 exactly."""
    found = _Findings()
    if selection is not None:
        chosen = {(r.symbol, r.logic): r.direction for r in selection.itertuples(index=False)}
        for row in atoms.itertuples(index=False):
            if chosen.get((row.symbol, row.logic)) != row.direction:
                found.add("error", "DIRECTION_MISMATCH", row.atom_id,
                          f"atom is {row.direction} but was selected as {chosen.get((row.symbol, row.logic))}")
    for row in _valid_atoms(atoms, found).itertuples(index=False):
        if row.symbol not in raw.columns:
            found.add("error", "MISSING_PHYSICAL", row.atom_id, f"no raw returns column {row.symbol}")
            continue
        if row.atom_id not in synthetic.columns:
            found.add("error", "MISSING_SYNTHETIC", row.atom_id, "no synthetic returns column")
            continue
        r = raw.loc[synthetic.index, row.symbol].to_numpy(dtype=np.float64)
        expected = r if row.direction == Direction.LONG.value else -np.minimum(r, SHORT_LOSS_CAP)
        got = synthetic[row.atom_id].to_numpy(dtype=np.float64)
        same_nan = np.array_equal(np.isnan(expected), np.isnan(got))
        diff = np.nanmax(np.abs(got - expected)) if np.isfinite(expected).any() else 0.0
        if not same_nan or diff != 0.0:
            found.add("error", "INVERSION_MISMATCH", row.atom_id,
                      f"{row.direction}: max |R_syn - expected| = {diff:.3g} (must be exactly 0)")
    return found.result("pre_opt")


def post_opt(atoms: pd.DataFrame, weights: pd.DataFrame, flattened: pd.DataFrame) -> GateResult:
    """After optimization: optimizer weights >= 0 (synthetic-long streams); the flattener's net weights
    equal sum(sign * w) recomputed from the typed atom table (a NaN net, or a non-zero row for a symbol
    no atom weight explains, is a mismatch); and every symbol held only through SHORT atoms with
    positive weight has a negative net weight (a flattener that drops the sign fails both).

    `weights`: profile, atom_id, weight. `flattened`: profile, symbol, net_weight (the flattener's output).
    """
    found = _Findings()
    atoms = _valid_atoms(atoms, found)
    by_atom = atoms.set_index("atom_id")
    expected_net: dict[tuple[str, str], float] = {}
    only_short: dict[tuple[str, str], bool] = {}
    unverifiable: set[tuple[str, str]] = set()  # (profile, symbol) with a non-finite weight (already an error)
    for row in weights.itertuples(index=False):
        w = float(row.weight)
        if row.atom_id not in by_atom.index:
            found.add("error", "UNKNOWN_ATOM", row.atom_id, f"profile {row.profile}: weight for an atom not in atoms.parquet")
            continue
        if not np.isfinite(w):
            found.add("error", "NONFINITE_WEIGHT", row.atom_id, f"profile {row.profile}: weight {w}")
            unverifiable.add((row.profile, by_atom.loc[row.atom_id, "symbol"]))
            continue
        if w < 0:
            found.add("error", "NEGATIVE_WEIGHT", row.atom_id,
                      f"profile {row.profile}: optimizer weight {w:.3g} < 0 (optimizers see synthetic-long streams)")
        atom = by_atom.loc[row.atom_id]
        sign = -1.0 if atom["direction"] == Direction.SHORT.value else 1.0
        key = (row.profile, atom["symbol"])
        expected_net[key] = expected_net.get(key, 0.0) + sign * w
        only_short[key] = only_short.get(key, True) and sign < 0
        if w == 0:
            found.add("warning", "ZERO_WEIGHT", row.atom_id, f"profile {row.profile}: weight 0, sign not observable")
    got = {(r.profile, r.symbol): float(r.net_weight) for r in flattened.itertuples(index=False)}
    for key, net in expected_net.items():
        profile, symbol = key
        actual = got.get(key)
        if actual is None or not abs(actual - net) <= FLATTEN_TOLERANCE:  # a NaN net never matches
            found.add("error", "FLATTEN_MISMATCH", symbol,
                      f"profile {profile}: flattened net {actual} != sum(sign * w) = {net:.12g}")
            continue
        if only_short[key] and net != 0 and not actual < 0:
            found.add("error", "SHORT_NOT_NEGATIVE", symbol,
                      f"profile {profile}: SHORT-only symbol has net weight {actual:.6g} (must be < 0)")
    for (profile, symbol), actual in got.items():  # a position that no atom weight explains
        if (profile, symbol) not in expected_net and (profile, symbol) not in unverifiable and actual != 0:  # NaN too
            found.add("error", "FLATTEN_MISMATCH", symbol,
                      f"profile {profile}: flattened net {actual} for a symbol without an atom weight")
    return found.result("post_opt")


def enforce(result: GateResult, gate: bool, where: str) -> None:
    """With the atomic gate on, raise SignTestError on any error (first finding in the message)."""
    if gate and not result.passed:
        first = next(c for c in result.failed if c.subject is not None)
        raise SignTestError(f"{where}: directional sign test failed with {result.info['errors']} error(s), first "
                            f"{first.code} on {first.subject}: {first.detail}; fix the synthesis/flattening "
                            f"(features.directional_sign_test_gate_atomic is on)")
