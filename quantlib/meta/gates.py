"""The meta's two gates, run before any aggregation (SPEC §3.2-3.3, LESSONS L-M3).

- `sign_test_gate`: every sleeve's pre- and post-optimization sign tests passed (a nested meta: its
  own `meta_sign_test_gate` passed).
- `completeness_gate`: each sleeve has a run (manifest with a run_id), status PASS, every required
  artifact present and readable, every artifact its manifest records still hashing as recorded (a
  pinned run edited after it finished is caught here), a non-empty out-of-sample stream for the risk
  profile; >= 2 sleeves (exactly 1 when `single_sleeve`).

Both return a `quantlib.core.gates.GateResult` as its dict (``{"gate", "passed", "checks": [{code,
passed, detail, required, subject}], "info"}``) with `subject` the sleeve id (None for checks about
the whole meta). They never raise for a missing or corrupt file: the failed check names the file;
`quantlib.core.gates.enforce` turns a failed gate into a GateError.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from quantlib.core import registry, storage
from quantlib.core.errors import DataError
from quantlib.core.gates import Check, GateResult, verdict
from quantlib.core.integrity import output_problems
from quantlib.core.runs import MANIFEST
from quantlib.meta.sleeves import KINDS, REQUIRED_COLUMNS, SleeveRef, value

#: Registry names of the artifacts a finished sleeve run must have (besides its manifest).
REQUIRED_SLEEVE_ARTIFACTS: tuple[str, ...] = ("sign_test_pre_opt", "sign_test", "audit", "flattened", "atoms",
                                              "wf_returns")
#: Registry names of the artifacts a finished nested meta run must have (besides its manifest).
REQUIRED_META_ARTIFACTS: tuple[str, ...] = ("meta_sign_test_gate", "meta_returns", "meta_flattened")

#: The sign-test gate files of a sleeve run / a nested meta run: (registry name, check code).
SLEEVE_SIGN_TESTS: tuple[tuple[str, str], ...] = (("sign_test_pre_opt", "SIGN_TEST_PRE"), ("sign_test", "SIGN_TEST_POST"))
META_SIGN_TESTS: tuple[tuple[str, str], ...] = (("meta_sign_test_gate", "META_SIGN_TEST"),)

COMPLETENESS = "completeness"
SIGN_TESTS = "meta_sign_test_gate"
_PER_SLEEVE = ("HAS_RUN", "RUN_PASSED", "ARTIFACTS", "HASHES", "STREAM")


def required_artifacts(ref: SleeveRef) -> tuple[str, ...]:
    """Registry names (of the run's phase) a sleeve's run must have, its manifest aside."""
    return REQUIRED_META_ARTIFACTS if ref.kind == "meta" else REQUIRED_SLEEVE_ARTIFACTS


# ------------------------------------------------------------------------------- completeness

def completeness_gate(sleeves: list[SleeveRef], risk_profile: str, single_sleeve: bool = False) -> dict:
    """Completeness gate (SPEC §3.3, L-M3) over resolved sleeves; never raises for bad files.

    Per sleeve (subject = sleeve id): HAS_RUN (run dir and a manifest with a run_id), RUN_PASSED
    (manifest status PASS), ARTIFACTS (the manifest and every required artifact exist, are readable
    and have their columns), HASHES (every output the manifest records -- the required artifacts
    among them -- exists and hashes as recorded; a nested meta's own sleeve runs too), STREAM (the
    risk-profile column -- "meta" for a nested meta -- exists with >= 1 non-NaN row). Overall (subject None): SLEEVE_COUNT (>= 2, or exactly 1 when
    `single_sleeve`) and UNIQUE_IDS.
    """
    checks: list[Check] = []
    for ref in sleeves:
        checks.extend(_sleeve_completeness(ref, risk_profile))
    n = len(sleeves)
    if single_sleeve:
        checks.append(Check("SLEEVE_COUNT", n == 1, f"{n} sleeve(s); a single_sleeve meta must have exactly 1"))
    else:
        checks.append(Check("SLEEVE_COUNT", n >= 2, f"{n} sleeve(s); a multi-sleeve meta needs >= 2 (declare "
                                                    "single_sleeve: true for a one-sleeve meta)"))
    ids = [ref.id for ref in sleeves]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    checks.append(Check("UNIQUE_IDS", not dup, f"duplicated sleeve ids {dup}" if dup else "sleeve ids unique"))
    info = {"risk_profile": value(risk_profile), "single_sleeve": bool(single_sleeve)}
    return GateResult(COMPLETENESS, tuple(checks), info).to_dict()


def _sleeve_completeness(ref: SleeveRef, risk_profile: str) -> list[Check]:
    sid = ref.id
    if ref.kind not in KINDS:
        return [Check(code, False, f"unknown sleeve kind {ref.kind!r}; expected one of {KINDS}", subject=sid)
                for code in _PER_SLEEVE]
    if ref.run_dir is None:
        return [Check(code, False, f"sleeve {sid} has no run directory (never ran or missing run_id)", subject=sid)
                for code in _PER_SLEEVE]
    out: list[Check] = []

    # HAS_RUN / RUN_PASSED
    manifest_path = Path(ref.run_dir) / MANIFEST
    manifest: dict | None = None
    try:
        doc = storage.read_json(manifest_path)
        if not isinstance(doc, dict):
            raise DataError(f"manifest {manifest_path} is not a JSON object")
        manifest = doc
    except DataError as exc:
        out.append(Check("HAS_RUN", False, str(exc), subject=sid))
        out.append(Check("RUN_PASSED", False, f"no readable manifest {manifest_path}", subject=sid))
    else:
        run_id = manifest.get("run_id")
        has_id = isinstance(run_id, str) and bool(run_id.strip())
        out.append(Check("HAS_RUN", has_id, f"run_id {run_id}" if has_id else f"{manifest_path} has no run_id",
                         subject=sid))
        status = manifest.get("status")
        out.append(Check("RUN_PASSED", status == "PASS", f"{manifest_path} status {status!r} (must be 'PASS')",
                         subject=sid))

    # ARTIFACTS
    problems: list[str] = []
    required = [(None, manifest_path)] + [(name, ref.path(name)) for name in required_artifacts(ref)]
    for name, path in required:
        if not path.exists():
            problems.append(f"missing {path}")
            continue
        try:
            is_json = name is None or registry.artifact(ref.phase, name).format == "json"
            obj = storage.read_json(path) if is_json else storage.read_parquet(path)
        except DataError as exc:
            problems.append(str(exc))
            continue
        if name is None:  # the manifest: readable is enough here (HAS_RUN / RUN_PASSED check its content)
            continue
        need = REQUIRED_COLUMNS.get((ref.phase, name), ())
        if need and isinstance(obj, pd.DataFrame):
            have = set(obj.columns) | set(obj.index.names)
            lacking = [c for c in need if c not in have]
            if lacking:
                problems.append(f"{path} lacks columns {lacking}")
        if is_json and not isinstance(obj, dict):
            problems.append(f"{path} is not a JSON object")
    out.append(Check("ARTIFACTS", not problems,
                     "; ".join(problems) if problems else f"{len(required)} required artifacts readable", subject=sid))
    out.append(_hashes_check(ref, manifest))

    # STREAM
    name, column = ref.stream(risk_profile)
    path = ref.path(name)
    try:
        frame = storage.read_parquet(path)
    except DataError as exc:
        out.append(Check("STREAM", False, str(exc), subject=sid))
        return out
    if column not in frame.columns:
        out.append(Check("STREAM", False, f"{path} has no column {column!r} (columns {list(frame.columns)})",
                         subject=sid))
        return out
    values = pd.to_numeric(frame[column], errors="coerce")
    n_ok = int(np.isfinite(values.to_numpy(dtype=float)).sum())
    out.append(Check("STREAM", n_ok >= 1, f"{path} column {column!r}: {n_ok} non-NaN row(s) of {len(values)}",
                     subject=sid))
    return out


def _hashes_check(ref: SleeveRef, manifest: dict | None) -> Check:
    """HASHES: the sleeve run's recorded outputs (its required artifacts among them) hash as its
    manifest says; for a nested meta, the outputs of its own sleeve runs too."""
    run_dir = Path(ref.run_dir)
    if manifest is None:
        return Check("HASHES", False, f"no readable manifest {run_dir / MANIFEST}: no recorded hashes", subject=ref.id)
    count, problems = output_problems(run_dir, manifest, [registry.path(ref.phase, n) for n in required_artifacts(ref)])
    if ref.kind == "meta":
        for child in sorted((run_dir / "sleeves").glob(f"*/{MANIFEST}")):
            try:
                n, found = output_problems(child.parent, storage.read_json(child))
            except DataError as exc:
                n, found = 0, [str(exc)]
            count += n
            problems += [f"sleeves/{child.parent.name}/{p}" for p in found]
    if problems:
        return Check("HASHES", False, f"{run_dir}: " + "; ".join(problems), subject=ref.id)
    return Check("HASHES", True, f"{count} recorded artifacts hash as in {run_dir / MANIFEST}", subject=ref.id)


# ------------------------------------------------------------------------------------ sign tests

def sign_test_gate(sleeves: list[SleeveRef]) -> dict:
    """Sign-test gate (SPEC §3.2): every sleeve's sign tests passed; missing/corrupt file = failed check.

    A sleeve: SIGN_TEST_PRE (its `sign_test_pre_opt`) and SIGN_TEST_POST (its `sign_test`) passed; a
    nested meta: META_SIGN_TEST (its `meta_sign_test_gate`) passed. A file's verdict is
    `quantlib.core.gates.verdict` for a GateResult file, else its ``passed`` being true. No sleeves =
    failed.
    """
    checks: list[Check] = []
    if not sleeves:
        checks.append(Check("SLEEVE_COUNT", False, "no sleeves to sign-test"))
    for ref in sleeves:
        for name, code in META_SIGN_TESTS if ref.kind == "meta" else SLEEVE_SIGN_TESTS:
            if ref.run_dir is None:
                rel = registry.path(ref.phase, name)
                checks.append(Check(code, False, f"sleeve {ref.id} has no run directory: no {rel}", subject=ref.id))
                continue
            checks.append(_sign_test_check(ref, name, code))
    return GateResult(SIGN_TESTS, tuple(checks)).to_dict()


def _sign_test_check(ref: SleeveRef, name: str, code: str) -> Check:
    path = ref.path(name)
    try:
        doc = storage.read_json(path)
    except DataError as exc:
        return Check(code, False, str(exc), subject=ref.id)
    if not isinstance(doc, dict):
        return Check(code, False, f"{path} is not a JSON object", subject=ref.id)
    gate = verdict(doc)
    if gate is not None:  # a GateResult file: its verdict is computed from its checks
        ok = gate
        detail = f"{path}: passed={ok!r}"
        info = doc.get("info") or {}
        if "errors" in info or "warnings" in info:  # a sign test's counts
            detail += f", {info.get('errors')} error(s), {info.get('warnings')} warning(s)"
        if not ok:
            failed = GateResult.from_dict(doc).failed
            label = "nested failures" if ref.kind == "meta" else "failed checks"
            if failed:
                detail += f"; {label}: " + ", ".join(c.label() for c in failed[:5])
        return Check(code, ok, detail, subject=ref.id)
    ok = doc.get("passed") is True  # a sign-test file of the earlier shape {passed, errors, warnings, findings}
    detail = f"{path}: passed={doc.get('passed')!r}"
    if "errors" in doc or "warnings" in doc:
        detail += f", {doc.get('errors')} error(s), {doc.get('warnings')} warning(s)"
    errors = [f for f in doc.get("findings", []) or [] if isinstance(f, dict) and f.get("level") == "error"]
    if errors and not ok:
        detail += "; first: " + "; ".join(f"{f.get('code')} {f.get('atom')}" for f in errors[:3])
    return Check(code, ok, detail, subject=ref.id)
