"""The gate part of `run_book.py verify`: each gate file of a run checked for self-consistency and,
where a pure function exists, recomputed from the run's artifacts and compared.

Self-consistent: the core.gates shape (`gate`, `passed`, `checks` of {code, passed, detail, required,
subject}) and a stored `passed` equal to the verdict of its checks. Recomputed (the functions the stages
call): a sleeve's `sign_test_pre_opt` (`signtest.pre_opt` on the training window), `sign_test`
(`signtest.post_opt`) and `audit` (`audit_sleeve`, whose ARTIFACTS check re-hashes the run); a meta's
`completeness` and `meta_sign_test_gate` (on its sleeve runs where they are now) and `meta_report` (its
sections from the run's artifacts and the recomputed gates); its weights are recomputed from its sleeves'
streams. The walk-forward parity gate and the look-ahead audit would need the simulators: self-consistency
only. A recomputed gate matches when its verdict and the (code, subject, passed, required) of every
check equal the stored ones; passing checks of a code the stored file does not know (a gate written
before that check existed) are noted, not failed.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from quantlib.core import registry, storage
from quantlib.core.gates import GateResult
from quantlib.core.runs import Run
from quantlib.meta.allocation import meta_weights
from quantlib.meta.gates import completeness_gate, sign_test_gate
from quantlib.meta.report import report_gate, report_sections
from quantlib.meta.sleeves import SleeveRef
from quantlib.meta.streams import aggregate_streams, infer_annualization, load_streams
from quantlib.sleeve import signtest
from quantlib.sleeve.audit import audit_sleeve
from quantlib.sleeve.window import training_window

CHECK_KEYS = {"code": str, "passed": bool, "detail": str, "required": bool}
WEIGHT_TOLERANCE = 1e-9
NOT_RECOMPUTED = {"parity": "not recomputed (needs both simulators; rerun the sleeve to reproduce it)",
                  "lookahead_audit": "not recomputed (rerun `run_book.py audit-lookahead`)"}


@dataclass(frozen=True)
class Item:
    """One row of the verification table; `group` folds OK rows of a kind into one line."""

    status: str  # OK | CHANGED | MISSING | MISMATCH | UNRECORDED | INFO
    item: str
    detail: str
    group: str = ""


# ---------------------------------------------------------------------------------- reading a run

def read(run: Run, name: str, **fields: str) -> Any:
    """Artifact `name` of the run's phase (parquet or JSON), read-only."""
    artifact = registry.artifact(run.manifest["phase"], name)
    path = run.path(artifact.resolve(**fields))
    return storage.read_parquet(path) if artifact.format == "parquet" else storage.read_json(path)


def meta_sleeves(run: Run) -> list[tuple[SleeveRef, bool]]:
    """(sleeve, pinned) of a meta run as they are now: a nested sleeve in this run's `sleeves/<id>/`
    (where it was run, even if the run directory was moved), a pinned run where the meta read it."""
    out = []
    for s in read(run, "sleeves")["sleeves"]:
        pinned = bool(s.get("pinned"))
        where = Path(s["run_dir"]) if pinned and s.get("run_dir") else run.dir / "sleeves" / s["id"]
        out.append((SleeveRef(s["id"], where, s.get("kind", "sleeve")), pinned))
    return out


# ------------------------------------------------------------------------------ self-consistency

def shape_problems(doc: Any) -> list[str]:
    """What makes `doc` not a self-consistent gate file (empty: it is one)."""
    if not isinstance(doc, dict):
        return ["not a JSON object"]
    problems = [f"no {key!r}" for key in ("gate", "passed", "checks") if key not in doc]
    if problems:
        return problems
    if not isinstance(doc["checks"], list):
        return ["'checks' is not a list"]
    for i, check in enumerate(doc["checks"]):
        if not isinstance(check, dict):
            problems.append(f"check {i} is not an object")
            continue
        problems += [f"check {i} {key!r} is not a {kind.__name__}" for key, kind in CHECK_KEYS.items()
                     if not isinstance(check.get(key), kind)]
        if check.get("subject") is not None and not isinstance(check["subject"], str):
            problems.append(f"check {i} 'subject' is not a string or null")
    if problems:
        return problems
    computed = GateResult.from_dict(doc).passed
    if doc["passed"] is not computed:
        problems.append(f"stored passed={doc['passed']!r} but its checks give passed={computed!r}")
    return problems


def _verdict(result: GateResult) -> str:
    return "PASS" if result.passed else ("FAIL" if result.checked else "not checked")


def compare_gate(stored: dict, fresh: GateResult) -> tuple[bool, str]:
    """(same, detail): the recomputed gate against the stored file (verdict and every check's
    code, subject, passed, required)."""
    old = GateResult.from_dict(stored)
    key = lambda c: (c.code, c.subject, c.passed, c.required)  # noqa: E731
    before, after = Counter(map(key, old.checks)), Counter(map(key, fresh.checks))
    only_old, only_new = before - after, after - before
    known = {c.code for c in old.checks}
    newer = [k for k in only_new.elements() if k[2] and k[0] not in known]
    surprising = [k for k in only_new.elements() if not (k[2] and k[0] not in known)]
    same = old.passed == fresh.passed and old.checked == fresh.checked and not only_old and not surprising
    if same:
        note = f"; adds passing {', '.join(sorted({k[0] for k in newer}))} (the stored gate predates it)" if newer else ""
        return True, f"recomputed from the run's artifacts: same verdict ({_verdict(fresh)}) and {len(old.checks)} checks{note}"
    parts = [f"stored {_verdict(old)}, recomputed {_verdict(fresh)}"]
    if fresh.failed:
        parts.append("recomputed fails " + "; ".join(f"{c.label()}: {c.detail[:240]}" for c in fresh.failed[:3]))
    label = lambda k: f"{k[0]}:{k[1]}={'pass' if k[2] else 'fail'}" if k[1] else f"{k[0]}={'pass' if k[2] else 'fail'}"  # noqa: E731
    if only_old:
        parts.append("only in the stored file: " + ", ".join(label(k) for k in list(only_old.elements())[:5]))
    if surprising:
        parts.append("only recomputed: " + ", ".join(label(k) for k in surprising[:5]))
    return False, "; ".join(parts)


# ------------------------------------------------------------------------------------- recompute

def _sign_test_pre(run: Run, _: dict) -> GateResult:
    train = training_window(read(run, "returns"), run.profile.sleeve.train_days)
    return signtest.pre_opt(read(run, "atoms"), train, read(run, "synthetic_returns"), read(run, "selection"))


def _sign_test_post(run: Run, _: dict) -> GateResult:
    return signtest.post_opt(read(run, "atoms"), read(run, "weights"), read(run, "flattened"))


def _audit(run: Run, _: dict) -> GateResult:
    earlier = [s.name for s in registry.stages("sleeve")[:registry.find_stage("sleeve", "report")[0] - 1]]
    return audit_sleeve(run, earlier, returns=read(run, "returns"), selection=read(run, "selection"),
                        selection_audit=read(run, "selection_audit"), weights=read(run, "weights"),
                        optimization=read(run, "optimization"),
                        sign_test_pre=GateResult.from_dict(read(run, "sign_test_pre_opt")),
                        sign_test_post=GateResult.from_dict(read(run, "sign_test")))


def _refs(run: Run) -> list[SleeveRef]:
    return [ref for ref, _ in meta_sleeves(run)]


def _completeness(run: Run, memo: dict) -> GateResult:
    cfg = run.profile.meta
    memo["completeness"] = completeness_gate(_refs(run), cfg.allocation.risk_profile, cfg.single_sleeve)
    return GateResult.from_dict(memo["completeness"])


def _meta_sign_tests(run: Run, memo: dict) -> GateResult:
    memo["meta_sign_test_gate"] = sign_test_gate(_refs(run))
    return GateResult.from_dict(memo["meta_sign_test_gate"])


def _meta_report(run: Run, memo: dict) -> GateResult:
    """The report gate as the report stage computes it, on the recomputed completeness and sign tests."""
    cfg = run.profile.meta
    matrix = read(run, "sleeve_returns")
    sections = report_sections(
        completeness=memo.get("completeness") or _completeness(run, memo).to_dict(),
        sign_tests=memo.get("meta_sign_test_gate") or _meta_sign_tests(run, memo).to_dict(),
        weights=read(run, "meta_weights")["weight"], allocation=cfg.allocation.model_dump(mode="json"),
        aggregation=read(run, "aggregation"), sleeve_returns=matrix, oos=read(run, "meta_returns")["meta"],
        weights_history=read(run, "meta_weights_history"), flat=read(run, "meta_flattened"),
        cap_check=read(run, "exposures")["cap_check"], annualization=infer_annualization(matrix.index))
    n = len(read(run, "sleeves")["sleeves"])
    return report_gate(sections, multi_sleeve=not cfg.single_sleeve, n_sleeves=n, info={"run_id": run.id})


RECOMPUTE: dict[tuple[str, str], Callable[[Run, dict], GateResult]] = {
    ("sleeve", "sign_test_pre_opt"): _sign_test_pre,
    ("sleeve", "sign_test"): _sign_test_post,
    ("sleeve", "audit"): _audit,
    ("meta", "completeness"): _completeness,
    ("meta", "meta_sign_test_gate"): _meta_sign_tests,
    ("meta", "meta_report"): _meta_report,
}


def _failure(exc: Exception) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


def gate_items(run: Run, prefix: str) -> Iterator[Item]:
    """A row per gate file the run has: self-consistency and, where possible, the recomputed verdict."""
    phase = run.manifest.get("phase", "")
    stages = run.manifest.get("stages") or {}
    memo: dict = {}
    declared = [(s.name, a) for s in registry.stages(phase) for a in s.gates]
    declared += [(None, a) for a in registry.COMMAND_ARTIFACTS.get(phase, ())]
    for stage, artifact in declared:
        for rel in artifact.expand(run.profile):
            path = run.path(rel)
            if not path.is_file():
                continue  # a recorded gate file that is gone is reported with the files
            item = f"{prefix}{rel}"
            try:
                doc = storage.read_json(path)
            except Exception as exc:  # noqa: BLE001 -- a corrupt file is a finding, not a crash
                yield Item("MISMATCH", item, f"gate file unreadable: {_failure(exc)}")
                continue
            problems = shape_problems(doc)
            if problems:
                yield Item("MISMATCH", item, "gate file not self-consistent: " + "; ".join(problems))
                continue
            head = f"gate {doc['gate']} {_verdict(GateResult.from_dict(doc))}, self-consistent"
            recompute = RECOMPUTE.get((phase, artifact.name))
            if recompute is None or (stages.get(stage) or {}).get("status") != "completed":
                why = NOT_RECOMPUTED.get(artifact.name, "not recomputed (its stage did not complete)")
                yield Item("OK", item, f"{head}; {why}", f"{prefix}gates")
                continue
            try:
                fresh = recompute(run, memo)
            except Exception as exc:  # noqa: BLE001 -- whatever stops the recomputation is the finding
                yield Item("MISMATCH", item, f"{head}; cannot recompute it from the run's artifacts: {_failure(exc)}")
                continue
            same, detail = compare_gate(doc, fresh)
            yield Item("OK" if same else "MISMATCH", item, f"{head}; {detail}", f"{prefix}gates")
    if phase == "meta" and (stages.get("allocate") or {}).get("status") == "completed":
        yield _meta_weights_item(run, prefix)


def _meta_weights_item(run: Run, prefix: str) -> Item:
    """The meta's weights recomputed from its sleeves' out-of-sample streams as they are now."""
    alloc = run.profile.meta.allocation
    item = f"{prefix}{registry.path('meta', 'meta_weights')}"
    try:
        matrix, _ = aggregate_streams(load_streams(_refs(run), alloc.risk_profile))
        fresh = meta_weights(matrix, alloc.method, alloc.min_weight, alloc.max_weight)
        stored, joined = read(run, "meta_weights")["weight"], read(run, "sleeve_returns")
    except Exception as exc:  # noqa: BLE001
        return Item("MISMATCH", item, f"cannot recompute the weights from the sleeves' streams: {_failure(exc)}")
    shown = lambda w: ", ".join(f"{k} {v:.4f}" for k, v in w.items())  # noqa: E731
    same_matrix = matrix.shape == joined.shape and list(matrix.columns) == list(joined.columns) and \
        bool(np.allclose(matrix.to_numpy(float), joined.to_numpy(float), rtol=0, atol=1e-12, equal_nan=True))
    same_weights = list(fresh.index) == list(stored.index) and \
        bool(np.all(np.abs(fresh.to_numpy(float) - stored.to_numpy(float)) <= WEIGHT_TOLERANCE))
    if same_matrix and same_weights:
        return Item("OK", item, f"recomputed from the sleeves' streams: same weights ({shown(stored)})", f"{prefix}gates")
    what = "" if same_matrix else f"; the joined sleeve returns differ from {registry.path('meta', 'sleeve_returns')}"
    return Item("MISMATCH", item, f"stored weights {shown(stored)}; recomputed from the sleeves' streams as they are "
                                  f"now: {shown(pd.Series(fresh))} ({len(matrix)} common rows){what}")
