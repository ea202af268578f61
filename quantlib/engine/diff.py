"""Diff two runs by meaning: what changed between run A and run B, and by how much.

`compare` answers "same bytes?"; `diff` answers "what is different?", section by section:
- **profile**: the resolved-profile keys that differ (dotted keys; lists compared whole);
- **data inputs**: the data run, the as-of dates (the data run's source clock, the sleeve's last bar)
  and the recorded input file hashes (a data run's id inside a file label is masked, so two data runs'
  exports of one scanner are the same input whose hash changed);
- **gates**: PASS / FAIL / not checked per gate of the phase, and the checks whose outcome changed;
- **weights**: per risk profile the atoms (weights.parquet) and physical names (flattened.parquet);
  for a meta its sleeve weights and flattened book. A name is *held* when |w| > `TOL`: held in B only
  is "added", in A only "removed", in both with |Δ| > `TOL` "changed"; rows rank by |Δ| then name;
- **metrics**: the out-of-sample metrics the run records (backtest/metrics.parquet), or computed from
  its out-of-sample returns with `portfolio.metrics` (a meta's meta_returns.parquet);
- **correlation** of the two out-of-sample return streams on their common dates;
- **sleeves** (metas): one summary line per sleeve present in both runs (each diffed the same way).

Artifacts are read directly (the resolved profile as YAML, not validated), so runs of an older schema
and failed or partial runs diff too: an artifact missing on one side is a difference, on both sides
nothing. Only sleeve and meta runs are diffed; any two of those of the same phase can be (a meta's
nested sleeve is a sleeve run).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from quantlib.core import registry, storage
from quantlib.core.errors import DataError, WorkbookError
from quantlib.core.gates import Check, GateResult
from quantlib.core.profiles import ANNUALIZATION
from quantlib.core.runs import MANIFEST, RESOLVED_PROFILE, Run
from quantlib.engine.compare import RUN_ID
from quantlib.portfolio.metrics import metrics_table

TOL = 1e-12  # weights and metrics closer than this are equal
DIFFABLE = ("sleeve", "meta")


@dataclass(frozen=True)
class Change:
    """One value that differs: `key` and its value in A and in B (None: absent)."""

    key: str
    a: Any
    b: Any


def fact_differs(fact: Change) -> bool:
    """Both sides known and unequal (a fact unknown on one side is not a difference)."""
    return fact.a is not None and fact.b is not None and fact.a != fact.b


@dataclass(frozen=True)
class InputsDiff:
    facts: list[Change]  # data run, as-of dates: every fact, equal or not (None: unknown, never a difference)
    added: list[str]  # input labels recorded by B only
    removed: list[str]
    changed: list[str]  # same label, another hash
    n_files: int  # labels recorded by either run

    @property
    def differs(self) -> bool:
        return bool(self.added or self.removed or self.changed or any(fact_differs(c) for c in self.facts))


@dataclass(frozen=True)
class GateDiff:
    gate: str
    a: str  # PASS | FAIL | not checked | — (no file)
    b: str
    checks: list[Change]  # checks whose outcome differs: a/b are "pass" | "fail" | "2 fail" | ... | None

    @property
    def differs(self) -> bool:
        return self.a != self.b or bool(self.checks)


@dataclass(frozen=True)
class WeightChange:
    name: str
    a: float | None  # None: not in A's artifact
    b: float | None

    @property
    def delta(self) -> float:
        return (self.b or 0.0) - (self.a or 0.0)

    @property
    def status(self) -> str:
        held_a, held_b = abs(self.a or 0.0) > TOL, abs(self.b or 0.0) > TOL
        if held_a != held_b:
            return "added" if held_b else "removed"
        return "changed" if held_a and abs(self.delta) > TOL else "same"


@dataclass(frozen=True)
class WeightDiff:
    """One weight vector in both runs (a risk profile's atoms, its physical names, a meta's sleeves)."""

    title: str  # e.g. "hrp · atoms"
    unit: str  # atom | name | sleeve
    source: str  # run-relative artifact path
    rows: list[WeightChange]  # the differing rows, largest |Δ| first
    missing: str | None = None  # "A" / "B": the artifact (or this profile) is absent there

    def count(self, status: str) -> int:
        return sum(r.status == status for r in self.rows)


@dataclass(frozen=True)
class MetricChange:
    stream: str  # a risk profile, a benchmark, "meta"
    metric: str
    a: Any
    b: Any

    @property
    def delta(self) -> float:
        try:
            return float(self.b) - float(self.a)
        except (TypeError, ValueError):
            return float("nan")


@dataclass(frozen=True)
class MetricsDiff:
    source: str  # artifact read, or "computed from <returns artifact>"
    rows: list[MetricChange]
    missing: str | None = None  # "A" / "B" / None


@dataclass(frozen=True)
class Correlation:
    stream: str
    corr: float  # NaN: fewer than two common dates or a constant stream
    n_common: int
    n_a: int
    n_b: int
    identical: bool  # same dates and values


@dataclass
class RunDiff:
    """Everything that differs between runs `a` and `b` (see the module docstring)."""

    a: Run
    b: Run
    phase: str
    profile: list[Change]
    inputs: InputsDiff
    gates: list[GateDiff]
    weights: list[WeightDiff]
    metrics: MetricsDiff
    correlations: list[Correlation]
    returns: dict[str, tuple[pd.Series | None, pd.Series | None]]  # stream -> (A, B) out-of-sample
    sleeves: list[tuple[str, RunDiff | str]] = field(default_factory=list)  # id -> diff | why not diffed

    def differing_sections(self) -> list[str]:
        """Names of the sections holding a difference (empty: identical in every respect diffed)."""
        found = {
            "profile": bool(self.profile),
            "data inputs": self.inputs.differs,
            "gates": any(g.differs for g in self.gates),
            "weights": any(w.rows or w.missing for w in self.weights),
            "metrics": bool(self.metrics.rows or self.metrics.missing),
            "returns": any(not c.identical for c in self.correlations),
            "sleeves": any(isinstance(d, str) or d.differing_sections() for _, d in self.sleeves),
        }
        return [name for name, differs in found.items() if differs]

    @property
    def differs(self) -> bool:
        return bool(self.differing_sections())


# ---------------------------------------------------------------------------------------- opening
def check_diffable(a: Run, b: Run) -> str:
    """The common phase of `a` and `b`; WorkbookError unless both are sleeve runs or both meta runs."""
    pa, pb = a.manifest.get("phase", "?"), b.manifest.get("phase", "?")
    if pa != pb or pa not in DIFFABLE:
        what = f"two {pa} runs" if pa == pb else f"a {pa} run and a {pb} run"
        raise WorkbookError(f"{what} cannot be diffed: diff two sleeve runs, two meta runs, "
                            f"or a meta's sleeve with a sleeve run")
    return pa


def label(run: Run) -> str:
    """A run's name for humans: its id, `<meta id>/sleeves/<id>` for a meta's nested sleeve."""
    parent = run.dir.parent
    if parent.name == "sleeves" and (parent.parent / MANIFEST).exists():
        return f"{label(Run.at(parent.parent))}/sleeves/{run.dir.name}"
    return run.id


# ---------------------------------------------------------------------------------------- reading
def _read_path(path: Path) -> Any:
    """A parquet frame or JSON document, None when the file is absent."""
    if not path.exists():
        return None
    return storage.read_parquet(path) if path.suffix == ".parquet" else storage.read_json(path)


def _read(run: Run, rel: str) -> Any:
    """A run artifact by its run-relative path (None when absent)."""
    return _read_path(run.dir / rel)


def _profile_doc(run: Run) -> dict:
    path = run.dir / RESOLVED_PROFILE
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        return doc["profile"]
    except (OSError, yaml.YAMLError, KeyError, TypeError) as exc:
        raise DataError(f"{path}: unreadable resolved profile ({type(exc).__name__})") from None


def _flatten(doc: Any, prefix: str = "") -> dict[str, Any]:
    """Nested mappings as dotted keys; a list of mappings with ids (a meta's sleeves) as `key.<id>.field`;
    other lists and scalars are leaves."""
    if isinstance(doc, list) and doc and all(isinstance(v, dict) and "id" in v for v in doc) \
            and len({str(v["id"]) for v in doc}) == len(doc):
        doc = {str(v["id"]): {k: x for k, x in v.items() if k != "id"} for v in doc}
    if not isinstance(doc, dict) or not doc:
        return {prefix: doc}
    out: dict[str, Any] = {}
    for key, value in doc.items():
        out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def profile_changes(a: Run, b: Run) -> list[Change]:
    """Resolved-profile keys whose values differ, sorted by key."""
    fa, fb = _flatten(_profile_doc(a)), _flatten(_profile_doc(b))
    return [Change(k, fa.get(k), fb.get(k)) for k in sorted(set(fa) | set(fb)) if fa.get(k) != fb.get(k)]


def _input_hashes(run: Run) -> dict[str, str]:
    """Recorded input hashes, a run id inside a label masked (`<data run>/export/x.json`)."""
    return {RUN_ID.sub("<data run>", k): v for k, v in (run.manifest.get("inputs") or {}).items()}


def _runs_root(run: Run) -> Path:
    return Path((run.manifest.get("options") or {}).get("runs_root") or run.dir.parent)


def _as_of(run: Run, roots: list[Path]) -> dict[str, Any]:
    """The data run a sleeve read, that data run's source clock (looked up under `roots`) and the
    sleeve's last bar; None where unknown."""
    if run.manifest.get("phase") != "sleeve":
        return {}
    data_run = run.manifest.get("data_run")
    found = [u for root in roots if data_run and (u := _read_path(root / data_run / registry.path("data", "universe")))]
    own = _read(run, registry.path("sleeve", "universe"))
    return {"data run": data_run, "source as-of": found[0].get("as_of") if found else None,
            "last bar": str(own["as_of"])[:10] if own and own.get("as_of") else None}


def inputs_diff(a: Run, b: Run) -> InputsDiff:
    """Input hashes and as-of facts; the source as-of is looked up under both runs' roots (a copied run
    still finds its data run)."""
    ha, hb = _input_hashes(a), _input_hashes(b)
    roots = list(dict.fromkeys([_runs_root(a), _runs_root(b)]))
    fa, fb = _as_of(a, roots), _as_of(b, roots)
    return InputsDiff(facts=[Change(k, fa.get(k), fb.get(k)) for k in fa | fb],
                      added=sorted(set(hb) - set(ha)), removed=sorted(set(ha) - set(hb)),
                      changed=sorted(k for k in set(ha) & set(hb) if ha[k] != hb[k]), n_files=len(set(ha) | set(hb)))


def _outcome(passed: list[bool]) -> str:
    """`pass` / `fail` for one check; `2 fail` / `1 pass, 1 fail` when a label repeats."""
    if len(passed) == 1:
        return "pass" if passed[0] else "fail"
    n_pass, n_fail = sum(passed), len(passed) - sum(passed)
    return ", ".join(f"{n} {word}" for n, word in ((n_pass, "pass"), (n_fail, "fail")) if n)


def _gate_state(doc: Any) -> tuple[str, dict[str, str]]:
    """(verdict, {check label: outcome}) of a gate file. A label is `code:subject`, `(warning)` added
    for a check that is not required; an older file without checks keeps its `passed`."""
    if doc is None:
        return "—", {}
    raw = [c for c in doc.get("checks") or [] if isinstance(c, dict) and "code" in c]
    checks = [Check(str(c["code"]), bool(c.get("passed")), str(c.get("detail", "")), bool(c.get("required", True)),
                    c.get("subject")) for c in raw]
    grouped: dict[str, list[bool]] = {}
    for check in checks:
        grouped.setdefault(check.label() + ("" if check.required else " (warning)"), []).append(check.passed)
    result = GateResult(str(doc.get("gate", "")), tuple(checks))
    verdict = result.passed if result.checked else None
    if not checks and isinstance(doc.get("passed"), bool):
        verdict = doc["passed"]
    return {True: "PASS", False: "FAIL", None: "not checked"}[verdict], {k: _outcome(v) for k, v in grouped.items()}


def gate_diffs(a: Run, b: Run, phase: str) -> list[GateDiff]:
    """Every gate the phase declares (stage and command gates) that either run wrote."""
    gates = [g for s in registry.stages(phase) for g in s.gates] + [
        g for g in registry.COMMAND_ARTIFACTS.get(phase, ()) if g.gate]
    out = []
    for gate in gates:
        da, db = _read(a, gate.path), _read(b, gate.path)
        if da is None and db is None:
            continue
        (va, ca), (vb, cb) = _gate_state(da), _gate_state(db)
        checks = [Change(k, ca.get(k), cb.get(k)) for k in sorted(set(ca) | set(cb)) if ca.get(k) != cb.get(k)]
        out.append(GateDiff(gate.name, va, vb, checks))
    return out


def _weight_rows(wa: pd.Series | None, wb: pd.Series | None) -> list[WeightChange]:
    wa = wa if wa is not None else pd.Series(dtype=float)
    wb = wb if wb is not None else pd.Series(dtype=float)
    names = sorted(set(wa.index) | set(wb.index))
    rows = [WeightChange(str(n), float(wa[n]) if n in wa.index else None, float(wb[n]) if n in wb.index else None)
            for n in names]
    rows = [r for r in rows if r.status != "same"]
    return sorted(rows, key=lambda r: (-abs(r.delta), r.name))


def _by_profile(frame: pd.DataFrame | None, name: str, value: str) -> dict[str, pd.Series]:
    if frame is None:
        return {}
    return {str(p): g.groupby(name)[value].sum() for p, g in frame.groupby("profile", sort=False)}


def weight_diffs(a: Run, b: Run, phase: str) -> list[WeightDiff]:
    """The weight vectors of both runs: per risk profile (sleeve) or the meta's sleeves and book."""
    if phase == "meta":
        specs = [("meta weights · sleeves", "sleeve", registry.path("meta", "meta_weights")),
                 ("flattened book · physical names", "name", registry.path("meta", "meta_flattened"))]
        out = []
        for title, unit, rel in specs:
            fa, fb = _read(a, rel), _read(b, rel)
            if fa is None and fb is None:
                continue
            sa, sb = (None if f is None else (f["weight"] if unit == "sleeve" else f.set_index("symbol")["net_weight"])
                      for f in (fa, fb))
            out.append(WeightDiff(title, unit, rel, _weight_rows(sa, sb), "A" if fa is None else "B" if fb is None else None))
        return out
    vectors: dict[str, list[WeightDiff]] = {}
    for kind, unit, rel, name, value in (("atoms", "atom", registry.path("sleeve", "weights"), "atom_id", "weight"),
                                         ("physical names", "name", registry.path("sleeve", "flattened"), "symbol", "net_weight")):
        fa, fb = _read(a, rel), _read(b, rel)
        pa, pb = _by_profile(fa, name, value), _by_profile(fb, name, value)
        for profile in list(dict.fromkeys([*pa, *pb])):
            missing = "A" if profile not in pa else "B" if profile not in pb else None
            vectors.setdefault(profile, []).append(
                WeightDiff(f"{profile} · {kind}", unit, rel, _weight_rows(pa.get(profile), pb.get(profile)), missing))
    return [w for group in vectors.values() for w in group]  # per risk profile: its atoms, then its names


def oos_returns(run: Run, phase: str) -> tuple[pd.DataFrame | None, str]:
    """The run's out-of-sample return streams (dates x stream) and the artifact they come from."""
    rel = registry.path("meta", "meta_returns") if phase == "meta" else registry.path("sleeve", "wf_returns")
    return _read(run, rel), rel


def _annualization(run: Run, phase: str) -> int:
    if phase == "meta":
        agg = _read(run, registry.path("meta", "aggregation")) or {}
        if agg.get("annualization"):
            return int(agg["annualization"])
    asset = (_profile_doc(run).get("sleeve") or {}).get("asset_class", "crypto")
    return ANNUALIZATION.get(asset, 365)


def _metrics(run: Run, phase: str) -> tuple[pd.DataFrame | None, str]:
    """Recorded out-of-sample metrics (stream x metric), else computed from the out-of-sample returns."""
    if phase == "sleeve":
        rel = registry.path("sleeve", "wf_metrics")
        frame = _read(run, rel)
        if frame is not None:
            return frame, rel
    returns, rel = oos_returns(run, phase)
    if returns is None:
        return None, f"computed from {rel}"
    return metrics_table(returns, _annualization(run, phase)), f"computed from {rel}"


def _same(x: Any, y: Any) -> bool:
    if isinstance(x, (int, float)) and isinstance(y, (int, float)):
        if math.isnan(x) or math.isnan(y):
            return math.isnan(x) and math.isnan(y)
        return abs(float(x) - float(y)) <= TOL
    return x == y


def metrics_diff(a: Run, b: Run, phase: str) -> MetricsDiff:
    (ma, src_a), (mb, src_b) = _metrics(a, phase), _metrics(b, phase)
    source = src_a if ma is not None else src_b
    if ma is None or mb is None:
        return MetricsDiff(source, [], None if ma is None and mb is None else "A" if ma is None else "B")
    rows = []
    for stream in dict.fromkeys([*ma.index, *mb.index]):
        for metric in dict.fromkeys([*ma.columns, *mb.columns]):
            x = ma.at[stream, metric] if stream in ma.index and metric in ma.columns else None
            y = mb.at[stream, metric] if stream in mb.index and metric in mb.columns else None
            x, y = (v.item() if hasattr(v, "item") else v for v in (x, y))
            if not _same(x, y):
                rows.append(MetricChange(str(stream), str(metric), x, y))
    return MetricsDiff(source, rows)


def correlations(a: Run, b: Run, phase: str) -> tuple[list[Correlation], dict[str, tuple]]:
    """Per stream: Pearson correlation of A's and B's returns on their common dates; the streams."""
    (ra, _), (rb, _) = oos_returns(a, phase), oos_returns(b, phase)
    cols_a, cols_b = ([] if r is None else list(r.columns) for r in (ra, rb))
    out, streams = [], {}
    for stream in dict.fromkeys([*cols_a, *cols_b]):
        sa = ra[stream].dropna() if stream in cols_a else None
        sb = rb[stream].dropna() if stream in cols_b else None
        streams[str(stream)] = (sa, sb)
        if sa is None or sb is None:
            out.append(Correlation(str(stream), float("nan"), 0, 0 if sa is None else len(sa),
                                   0 if sb is None else len(sb), False))
            continue
        common = sa.index.intersection(sb.index)
        corr = float(sa[common].corr(sb[common])) if len(common) > 1 else float("nan")
        out.append(Correlation(str(stream), corr, len(common), len(sa), len(sb), bool(sa.equals(sb))))
    return out, streams


def _sleeve_dirs(run: Run) -> dict[str, Path]:
    return {p.parent.name: p.parent for p in sorted((run.dir / "sleeves").glob(f"*/{MANIFEST}"))}


def diff_runs(a: Run, b: Run) -> RunDiff:
    """Diff two sleeve runs or two meta runs (a meta's sleeves diffed one by one)."""
    phase = check_diffable(a, b)
    corr, streams = correlations(a, b, phase)
    result = RunDiff(a, b, phase, profile_changes(a, b), inputs_diff(a, b), gate_diffs(a, b, phase),
                     weight_diffs(a, b, phase), metrics_diff(a, b, phase), corr, streams)
    if phase == "meta":
        da, db = _sleeve_dirs(a), _sleeve_dirs(b)
        for sid in sorted(set(da) | set(db)):
            if sid not in da or sid not in db:
                result.sleeves.append((sid, "only in A" if sid in da else "only in B"))
                continue
            sa, sb = Run.at(da[sid]), Run.at(db[sid])
            pa, pb = sa.manifest.get("phase"), sb.manifest.get("phase")
            result.sleeves.append((sid, diff_runs(sa, sb) if pa == pb else f"a {pa} run in A, a {pb} run in B"))
    return result


def to_json(value: Any) -> str:
    """A value as one compact line (lists, mappings, None as `—`)."""
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.6g}"
    return json.dumps(value, separators=(",", ":")) if isinstance(value, (list, dict)) else str(value)
