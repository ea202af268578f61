"""Meta-portfolio logic (SPEC §3): gates, aggregation, meta-weights, walk-forward, flattening, report.

Pure functions over finished run directories (no Ray, no notebooks). A meta profile's sleeves are
resolved to `SleeveRef`s; then, in order (LESSONS L-M3: gates run *before* optimization):

1. `sign_test_gate`     -- every sleeve's pre- and post-optimization sign tests passed (a nested meta:
                           its own `artifacts/meta_sign_test_gate.json` passed).
2. `completeness_gate`  -- each sleeve has a run (manifest with a run_id), status PASS, every
                           required artifact present and readable, a non-empty out-of-sample stream
                           for the risk profile; >= 2 sleeves (exactly 1 when `single_sleeve`).
3. `load_streams` + `aggregate_streams` -- sleeves become assets on the common dates (every sleeve
                           observed); other dates' returns `fold` into the next common date (no P&L
                           lost, never zero-filled, L-D5); rows folded/pending/excluded are reported.
4. `meta_weights`       -- risk parity / HRP / min variance across sleeves, then bounded to
                           [min_weight, max_weight] by a deterministic proportional projection.
   `walk_forward_meta`  -- the out-of-sample meta stream (train on the past only, hold the weights).
5. `flatten_meta`       -- physical net weight = sum_s meta_w_s * sleeve net weight (signs kept),
                           then `exposures` and `physical_cap_check` (L-M2).
6. `report_sections` + `render_report` -- `meta_portfolio_report.md`; every section says PASS/FAIL,
                           a missing/empty/failed section or a degraded multi-sleeve meta is FAIL.

Gate results share one shape: ``{"passed": bool, "checks": [{"sleeve", "code", "passed",
"detail"}]}`` (``sleeve`` is None for checks about the whole meta). Gates never raise for a
missing or corrupt file: the failed check names the file; `enforce_gate` turns a failed gate into
a GateError.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from quantlib.core import storage
from quantlib.core.errors import DataError, GateError
from quantlib.portfolio.metrics import metrics_table
from quantlib.portfolio.optimize import optimize_gated

# ------------------------------------------------------------------------------------ constants

MANIFEST = "manifest.json"
SIGN_TEST_PRE = "artifacts/sign_test_pre_opt.json"
SIGN_TEST_POST = "artifacts/sign_test.json"
AUDIT = "artifacts/audit.json"
FLATTENED = "artifacts/flattened.parquet"
ATOMS = "artifacts/atoms.parquet"
SLEEVE_STREAM = "backtest/returns.parquet"

META_STREAM = "artifacts/meta_returns.parquet"
META_STREAM_COLUMN = "meta"
META_FLATTENED = "artifacts/meta_flattened.parquet"
META_SIGN_TEST_GATE = "artifacts/meta_sign_test_gate.json"

#: Every file a finished sleeve run must have (relative to its run dir).
REQUIRED_SLEEVE_ARTIFACTS: tuple[str, ...] = (MANIFEST, SIGN_TEST_PRE, SIGN_TEST_POST, AUDIT, FLATTENED,
                                              ATOMS, SLEEVE_STREAM)
#: Every file a finished nested meta run must have.
REQUIRED_META_ARTIFACTS: tuple[str, ...] = (MANIFEST, META_SIGN_TEST_GATE, META_STREAM, META_FLATTENED)

#: Columns a readable parquet artifact must carry.
REQUIRED_COLUMNS: dict[str, tuple[str, ...]] = {
    FLATTENED: ("profile", "symbol", "net_weight", "gross_weight"),
    ATOMS: ("atom_id", "symbol", "logic", "direction"),
    META_FLATTENED: ("symbol", "net_weight", "gross_weight"),
    META_STREAM: (META_STREAM_COLUMN,),
}

META_METHODS: tuple[str, ...] = ("risk_parity", "hrp", "min_variance")
KINDS: tuple[str, ...] = ("sleeve", "meta")

REQUIRED_SECTIONS: tuple[str, ...] = ("Sleeve completeness", "Sign tests", "Allocation",
                                      "Sleeve correlations", "Performance", "Flattened book")
REPORT_FILE = "meta_portfolio_report.md"

WEIGHT_TOL = 1e-9          # sum-to-one and bound tolerance of meta weights
CAP_TOL = 1e-12            # |net| > cap + CAP_TOL is a breach
ZERO_TOL = 1e-12           # |net| <= ZERO_TOL counts as flat (neither long nor short)


@dataclass(frozen=True)
class SleeveRef:
    """One resolved sleeve of a meta profile.

    `run_dir` None means the sleeve has no run (never ran / missing). `kind` "meta" is a nested
    meta run: its stream is `artifacts/meta_returns.parquet` column "meta" and its book
    `artifacts/meta_flattened.parquet` (symbol, net_weight, gross_weight).
    """

    id: str
    run_dir: Path | None
    kind: str = "sleeve"


def _check(sleeve: str | None, code: str, passed: bool, detail: str) -> dict:
    return {"sleeve": sleeve, "code": code, "passed": bool(passed), "detail": detail}


def _gate(checks: list[dict]) -> dict:
    return {"passed": bool(checks) and all(c["passed"] for c in checks), "checks": checks}


def enforce_gate(result: dict, name: str) -> dict:
    """Raise GateError listing the failed checks of a gate result; return it unchanged if it passed."""
    if result.get("passed") is True:
        return result
    failed = [c for c in result.get("checks", []) if not c.get("passed")]
    lines = "; ".join(f"{c.get('sleeve') or 'meta'} {c.get('code')}: {c.get('detail')}" for c in failed)
    raise GateError(f"meta {name} gate failed: {lines or 'no checks recorded'}; fix or re-run the "
                    "named sleeves (or remove them from the meta profile)")


def _required(ref: SleeveRef) -> tuple[str, ...]:
    return REQUIRED_META_ARTIFACTS if ref.kind == "meta" else REQUIRED_SLEEVE_ARTIFACTS


def _stream_location(ref: SleeveRef, risk_profile: str) -> tuple[str, str]:
    """(relative file, column) of a sleeve's out-of-sample stream."""
    if ref.kind == "meta":
        return META_STREAM, META_STREAM_COLUMN
    return SLEEVE_STREAM, risk_profile


def _read(path: Path) -> Any:
    """Read a JSON or parquet artifact through `storage` (DataError naming the file on failure)."""
    if path.suffix == ".json":
        return storage.read_json(path)
    return storage.read_parquet(path)


# ------------------------------------------------------------------------------- completeness

def completeness_gate(sleeves: list[SleeveRef], risk_profile: str, single_sleeve: bool = False) -> dict:
    """Completeness gate (SPEC §3.3, L-M3) over resolved sleeves; never raises for bad files.

    Per sleeve: HAS_RUN (run dir and a manifest with a run_id), RUN_PASSED (manifest status PASS),
    ARTIFACTS (every required artifact exists, is readable and has its columns), STREAM (the
    risk-profile column -- "meta" for a nested meta -- exists with >= 1 non-NaN row). Overall
    (sleeve None): SLEEVE_COUNT (>= 2, or exactly 1 when `single_sleeve`) and UNIQUE_IDS.
    """
    checks: list[dict] = []
    for ref in sleeves:
        checks.extend(_sleeve_completeness(ref, risk_profile))
    n = len(sleeves)
    if single_sleeve:
        checks.append(_check(None, "SLEEVE_COUNT", n == 1,
                             f"{n} sleeve(s); a single_sleeve meta must have exactly 1"))
    else:
        checks.append(_check(None, "SLEEVE_COUNT", n >= 2,
                             f"{n} sleeve(s); a multi-sleeve meta needs >= 2 (declare single_sleeve: "
                             "true for a one-sleeve meta)"))
    ids = [ref.id for ref in sleeves]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    checks.append(_check(None, "UNIQUE_IDS", not dup, f"duplicated sleeve ids {dup}" if dup else "sleeve ids unique"))
    return _gate(checks)


def _sleeve_completeness(ref: SleeveRef, risk_profile: str) -> list[dict]:
    sid = ref.id
    if ref.kind not in KINDS:
        return [_check(sid, code, False, f"unknown sleeve kind {ref.kind!r}; expected one of {KINDS}")
                for code in ("HAS_RUN", "RUN_PASSED", "ARTIFACTS", "STREAM")]
    if ref.run_dir is None:
        return [_check(sid, code, False, f"sleeve {sid} has no run directory (never ran or missing run_id)")
                for code in ("HAS_RUN", "RUN_PASSED", "ARTIFACTS", "STREAM")]
    run_dir = Path(ref.run_dir)
    out: list[dict] = []

    # HAS_RUN / RUN_PASSED
    manifest_path = run_dir / MANIFEST
    try:
        manifest = storage.read_json(manifest_path)
        if not isinstance(manifest, dict):
            raise DataError(f"manifest {manifest_path} is not a JSON object")
    except DataError as exc:
        out.append(_check(sid, "HAS_RUN", False, str(exc)))
        out.append(_check(sid, "RUN_PASSED", False, f"no readable manifest {manifest_path}"))
    else:
        run_id = manifest.get("run_id")
        has_id = isinstance(run_id, str) and bool(run_id.strip())
        out.append(_check(sid, "HAS_RUN", has_id,
                          f"run_id {run_id}" if has_id else f"{manifest_path} has no run_id"))
        status = manifest.get("status")
        out.append(_check(sid, "RUN_PASSED", status == "PASS",
                          f"{manifest_path} status {status!r} (must be 'PASS')"))

    # ARTIFACTS
    problems: list[str] = []
    for rel in _required(ref):
        path = run_dir / rel
        if not path.exists():
            problems.append(f"missing {path}")
            continue
        try:
            obj = _read(path)
        except DataError as exc:
            problems.append(str(exc))
            continue
        need = REQUIRED_COLUMNS.get(rel, ())
        if need and isinstance(obj, pd.DataFrame):
            have = set(obj.columns) | set(obj.index.names)
            lacking = [c for c in need if c not in have]
            if lacking:
                problems.append(f"{path} lacks columns {lacking}")
        if rel.endswith(".json") and rel != MANIFEST and not isinstance(obj, dict):
            problems.append(f"{path} is not a JSON object")
    out.append(_check(sid, "ARTIFACTS", not problems,
                      "; ".join(problems) if problems else f"{len(_required(ref))} required artifacts readable"))

    # STREAM
    rel, column = _stream_location(ref, risk_profile)
    path = run_dir / rel
    try:
        frame = storage.read_parquet(path)
    except DataError as exc:
        out.append(_check(sid, "STREAM", False, str(exc)))
        return out
    if column not in frame.columns:
        out.append(_check(sid, "STREAM", False, f"{path} has no column {column!r} (columns {list(frame.columns)})"))
        return out
    values = pd.to_numeric(frame[column], errors="coerce")
    n_ok = int(np.isfinite(values.to_numpy(dtype=float)).sum())
    out.append(_check(sid, "STREAM", n_ok >= 1,
                      f"{path} column {column!r}: {n_ok} non-NaN row(s) of {len(values)}"))
    return out


# ------------------------------------------------------------------------------------ sign tests

def sign_test_gate(sleeves: list[SleeveRef]) -> dict:
    """Sign-test gate (SPEC §3.2): every sleeve's sign tests passed; missing/corrupt file = failed check.

    A sleeve: SIGN_TEST_PRE (`artifacts/sign_test_pre_opt.json`) and SIGN_TEST_POST
    (`artifacts/sign_test.json`) with ``passed`` true. A nested meta: META_SIGN_TEST
    (`artifacts/meta_sign_test_gate.json`) with ``passed`` true. No sleeves = failed.
    """
    checks: list[dict] = []
    if not sleeves:
        checks.append(_check(None, "SLEEVE_COUNT", False, "no sleeves to sign-test"))
    for ref in sleeves:
        files = ((META_SIGN_TEST_GATE, "META_SIGN_TEST"),) if ref.kind == "meta" else \
                ((SIGN_TEST_PRE, "SIGN_TEST_PRE"), (SIGN_TEST_POST, "SIGN_TEST_POST"))
        for rel, code in files:
            if ref.run_dir is None:
                checks.append(_check(ref.id, code, False, f"sleeve {ref.id} has no run directory: no {rel}"))
                continue
            path = Path(ref.run_dir) / rel
            try:
                result = storage.read_json(path)
            except DataError as exc:
                checks.append(_check(ref.id, code, False, str(exc)))
                continue
            if not isinstance(result, dict):
                checks.append(_check(ref.id, code, False, f"{path} is not a JSON object"))
                continue
            ok = result.get("passed") is True
            detail = f"{path}: passed={result.get('passed')!r}"
            if "errors" in result or "warnings" in result:
                detail += f", {result.get('errors')} error(s), {result.get('warnings')} warning(s)"
            errors = [f for f in result.get("findings", []) or []
                      if isinstance(f, dict) and f.get("level") == "error"]
            if errors and not ok:
                detail += "; first: " + "; ".join(f"{f.get('code')} {f.get('atom')}" for f in errors[:3])
            if ref.kind == "meta" and not ok:
                failed = [c for c in result.get("checks", []) or [] if isinstance(c, dict) and not c.get("passed")]
                if failed:
                    detail += "; nested failures: " + ", ".join(f"{c.get('sleeve')} {c.get('code')}" for c in failed[:5])
            checks.append(_check(ref.id, code, ok, detail))
    return _gate(checks)


# ------------------------------------------------------------------------------------ streams

def _daily_index(index: pd.Index, where: str) -> pd.DatetimeIndex:
    """A tz-naive, midnight-normalized DatetimeIndex (UTC if tz-aware); duplicates are a DataError."""
    try:
        idx = pd.DatetimeIndex(index)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{where}: the index is not dates ({exc}); write the stream with a DatetimeIndex 'date'") from None
    if idx.tz is not None:
        idx = idx.tz_convert("UTC").tz_localize(None)
    idx = idx.normalize()
    if idx.has_duplicates:
        dup = idx[idx.duplicated()].unique()[:5]
        raise DataError(f"{where}: duplicated dates {[d.date().isoformat() for d in dup]}; one row per day expected")
    return idx.rename("date")


def load_streams(sleeves: list[SleeveRef], risk_profile: str) -> dict[str, pd.Series]:
    """Each sleeve's out-of-sample daily return stream for `risk_profile` (a nested meta: column "meta").

    Series named by sleeve id on a sorted tz-naive DatetimeIndex "date"; NaN kept (NaN = no
    observation, never a return). A missing run/file/column raises DataError naming it (run
    `completeness_gate` first).
    """
    out: dict[str, pd.Series] = {}
    for ref in sleeves:
        if ref.run_dir is None:
            raise DataError(f"sleeve {ref.id} has no run directory: no return stream to load")
        rel, column = _stream_location(ref, risk_profile)
        path = Path(ref.run_dir) / rel
        frame = storage.read_parquet(path)
        if "date" in frame.columns:
            frame = frame.set_index("date")
        if column not in frame.columns:
            raise DataError(f"{path} has no column {column!r} (columns {list(frame.columns)}); "
                            "re-run the sleeve's validation backtest")
        s = pd.to_numeric(frame[column], errors="coerce").astype(float)
        s.index = _daily_index(frame.index, str(path))
        out[ref.id] = s.sort_index().rename(ref.id)
    return out


def _span(s: pd.Series) -> str:
    s = s.dropna()
    if s.empty:
        return "no observations"
    return f"{s.index.min().date().isoformat()}..{s.index.max().date().isoformat()} ({len(s)} rows)"


def fold(stream: pd.Series, common_dates: pd.DatetimeIndex) -> tuple[pd.Series, dict]:
    """Move a stream onto `common_dates` without losing P&L (SPEC conventions, DESIGN "Calendars").

    NaN is "no observation" (dropped, never a zero return). Each observed date maps to the first
    common date at or after it (`searchsorted`); each group compounds to one return, Π(1+r) − 1, so
    a return is only ever moved *later*, never earlier. A group of one keeps its value bit for bit.
    Rows before the first common date are outside the joint span (excluded); rows after the last
    one are pending (left out until a later common date exists). Invariant: over any span
    (C_i, C_j] between common dates the folded stream compounds to the stream's own total.
    A common date with no observation at or since the previous common date stays NaN.

    Returns (Series on `common_dates`, counts {on_common, folded, pending, excluded,
    pending_return, excluded_return}) with the last two the compounded returns left out.
    """
    s = pd.Series(stream, dtype=float).dropna().sort_index()
    common = pd.DatetimeIndex(common_dates).unique().sort_values()
    if common.empty:
        raise ValueError("fold: no common dates to fold onto")
    r = s.to_numpy()
    dates = s.index.to_numpy(dtype="datetime64[ns]")
    grid = common.to_numpy(dtype="datetime64[ns]")
    pos = np.searchsorted(grid, dates, side="left")        # first common date >= each date
    excluded = dates < grid[0]
    pending = pos == len(grid)
    keep = ~excluded & ~pending
    kr, kp = r[keep], pos[keep]
    on_common = int((grid[kp] == dates[keep]).sum())
    out = np.full(len(grid), np.nan)
    if len(kr):
        starts = np.flatnonzero(np.r_[True, kp[1:] != kp[:-1]])
        sizes = np.diff(np.r_[starts, len(kr)])
        out[kp[starts]] = np.where(sizes == 1, kr[starts], np.multiply.reduceat(1.0 + kr, starts) - 1.0)
    counts = {"on_common": on_common, "folded": int(keep.sum()) - on_common,
              "pending": int(pending.sum()), "excluded": int(excluded.sum()),
              "pending_return": float(np.prod(1.0 + r[pending]) - 1.0),
              "excluded_return": float(np.prod(1.0 + r[excluded]) - 1.0)}
    return pd.Series(out, index=common.rename("date"), name=s.name), counts


def aggregate_streams(streams: dict[str, pd.Series]) -> tuple[pd.DataFrame, dict]:
    """Sleeves become assets: every stream folded onto the common dates, never zero-filled (L-D5).

    Common dates = the dates on which every sleeve has a (non-NaN) observation. Each sleeve's
    returns on other dates are compounded into its next common date (`fold`), so over any span
    between two common dates a sleeve's joined column compounds to that sleeve's own total: a
    7-day crypto stream joined with a weekday equities stream keeps its weekend P&L in Monday.
    Rows before the first common date are excluded, rows after the last one pending (reported).

    Returns (common dates x sleeve returns, report) with report = {rows_per_sleeve: {id: non-NaN
    rows}, rows_joined: number of common dates, rows_folded / rows_pending / rows_excluded: {id:
    rows}, pending_return / excluded_return: {id: compounded return of those rows}, nan_rows: {id:
    NaN rows in the input}, first, last, annualization}; per sleeve rows_per_sleeve = rows_joined +
    folded + pending + excluded. No common date raises GateError naming the sleeves and ranges.
    """
    if not streams:
        raise GateError("meta aggregation: no sleeve streams to aggregate; check the completeness gate")
    cols = {}
    for sid, s in streams.items():
        s = pd.Series(s, dtype=float)
        s.index = _daily_index(s.index, f"stream of sleeve {sid}")
        cols[sid] = s.sort_index().rename(sid)
    observed = pd.concat(list(cols.values()), axis=1, join="outer").notna()
    common = observed.index[observed.all(axis=1).to_numpy()].sort_values()
    if common.empty:
        spans = "; ".join(f"{sid}: {_span(s)}" for sid, s in cols.items())
        raise GateError(f"meta aggregation: sleeves {list(cols)} have no date on which all of them have a "
                        f"return ({spans}); the sleeves' out-of-sample periods/calendars do not overlap -- "
                        "re-run them over a common window")
    folded = {sid: fold(s, common) for sid, s in cols.items()}
    joined = pd.DataFrame({sid: f for sid, (f, _) in folded.items()}, index=common)
    joined.index.freq = None
    joined.index.name = "date"
    joined.columns.name = "sleeve"
    counts = {sid: c for sid, (_, c) in folded.items()}
    report = {
        "rows_per_sleeve": {sid: int(s.notna().sum()) for sid, s in cols.items()},
        "rows_joined": len(joined),
        **{f"rows_{k}": {sid: c[k] for sid, c in counts.items()} for k in ("folded", "pending", "excluded")},
        **{k: {sid: c[k] for sid, c in counts.items()} for k in ("pending_return", "excluded_return")},
        "nan_rows": {sid: int(s.isna().sum()) for sid, s in cols.items()},
        "first": joined.index[0].date().isoformat(),
        "last": joined.index[-1].date().isoformat(),
        "annualization": infer_annualization(joined.index),
    }
    return joined, report


def aggregation_table(report: dict) -> pd.DataFrame:
    """Per-sleeve rows of an `aggregate_streams` report (the table the report and notebooks show)."""
    keys = {"rows": "rows_per_sleeve", "folded": "rows_folded", "pending": "rows_pending",
            "excluded": "rows_excluded", "pending_return": "pending_return",
            "excluded_return": "excluded_return", "nan_rows": "nan_rows"}
    frame = pd.DataFrame({name: report.get(key, {}) for name, key in keys.items()})
    frame.insert(1, "on_common_dates", report.get("rows_joined"))
    return frame.rename_axis("sleeve")


def aggregation_summary(report: dict) -> str:
    """One sentence saying how the sleeves were aligned (common dates, fold, pending/excluded)."""
    return (f"Aggregation: {report.get('rows_joined')} common dates {report.get('first')}..{report.get('last')} "
            "(every sleeve observed); each sleeve's returns on other dates are compounded into its next "
            "common date (no P&L lost, never zero-filled); returns after the last common date are pending "
            "(left out until a later common date exists), rows before the first one are outside the joint "
            f"span (excluded); annualization {report.get('annualization')} periods per year of common dates.")


def infer_annualization(index: pd.Index) -> int:
    """Periods per year of a (joined) daily stream: 365 when its dates include weekends (crypto 24x7),
    else 252. A stream folded onto weekday common dates has one row per weekday, each the return
    since the previous common date, so 252 is its period count (its weekend P&L sits in Monday)."""
    idx = pd.DatetimeIndex(index)
    return 365 if bool((idx.day_of_week >= 5).any()) else 252


# ------------------------------------------------------------------------------------ weights

def bound_weights(weights: pd.Series, min_weight: float, max_weight: float) -> pd.Series:
    """Deterministic projection onto {min_weight <= w_i <= max_weight, sum w = 1}.

    The fixed point of "clip to the bounds and redistribute the excess proportionally among the
    unclipped weights, iterate": w_i = clip(s * w0_i, min, max) with the unique scale s that makes
    the weights sum to 1 (solved exactly on the piecewise-linear sum). Feasible weights are returned
    unchanged; the unclipped weights keep their relative sizes. ValueError when infeasible
    (n * min_weight > 1, n * max_weight < 1, or min_weight > max_weight).
    """
    w0 = pd.Series(weights, dtype=float)
    n = len(w0)
    lo, hi = float(min_weight), float(max_weight)
    if n == 0:
        raise ValueError("bound_weights: no weights")
    if not (0.0 <= lo <= hi <= 1.0):
        raise ValueError(f"meta weight bounds must satisfy 0 <= min_weight <= max_weight <= 1, "
                         f"got min_weight={lo}, max_weight={hi}")
    if n * lo > 1.0 + WEIGHT_TOL or n * hi < 1.0 - WEIGHT_TOL:
        raise ValueError(f"meta weight bounds infeasible for {n} sleeves: n*min_weight = {n * lo:.4g} "
                         f"and n*max_weight = {n * hi:.4g} must bracket 1; relax min_weight/max_weight")
    x = w0.to_numpy()
    if not np.all(np.isfinite(x)) or (x < 0).any() or x.sum() <= 0:
        raise ValueError(f"bound_weights: weights must be finite, >= 0 and not all 0, got {x.tolist()}")
    x = x / x.sum()
    if (x >= lo - WEIGHT_TOL).all() and (x <= hi + WEIGHT_TOL).all():
        return pd.Series(np.clip(x, lo, hi) / np.clip(x, lo, hi).sum(), index=w0.index, name=w0.name)
    pos = x > 0
    if pos.sum() * hi + (~pos).sum() * lo < 1.0:
        # zero weights must absorb the rest: positives at the cap, the remainder shared equally
        out = np.where(pos, hi, (1.0 - pos.sum() * hi) / (~pos).sum())
        return pd.Series(out, index=w0.index, name=w0.name)

    def total(s: float) -> float:
        return float(np.clip(s * x, lo, hi).sum())

    # breakpoints of the piecewise-linear, non-decreasing total(s)
    bps = np.unique(np.concatenate([lo / x[pos], hi / x[pos], [0.0]]))
    vals = np.array([total(b) for b in bps])
    j = int(np.searchsorted(vals, 1.0))        # first breakpoint with total >= 1
    if j == 0:
        s = bps[0]
    else:
        a, b = bps[j - 1], bps[min(j, len(bps) - 1)]
        fa, fb = vals[j - 1], vals[min(j, len(bps) - 1)]
        s = b if fb == fa else a + (1.0 - fa) * (b - a) / (fb - fa)
    out = np.clip(s * x, lo, hi)
    free = (out > lo + 1e-15) & (out < hi - 1e-15)
    resid = 1.0 - out.sum()
    if free.any() and abs(resid) > 0:
        out[free] += resid * out[free] / out[free].sum()
    return pd.Series(out, index=w0.index, name=w0.name)


def meta_weights(returns: pd.DataFrame, method: str = "risk_parity", min_weight: float = 0.05,
                 max_weight: float = 0.95, engine: str = "native") -> pd.Series:
    """Sleeve weights: `method` (risk_parity | hrp | min_variance) via `quantlib.portfolio.optimize`
    (Stable Sum Gate, atom_cap 1.0, no clusters), then `bound_weights` to [min_weight, max_weight].

    `returns`: dates x sleeves, no NaN (the aggregated matrix). One sleeve -> weight 1.0.
    Series indexed by sleeve, named "weight", summing to 1.
    """
    if method not in META_METHODS:
        raise ValueError(f"unknown meta allocation method {method!r}; use one of {', '.join(META_METHODS)}")
    if not isinstance(returns, pd.DataFrame) or returns.shape[1] == 0:
        raise ValueError("meta_weights: returns must be a non-empty dates x sleeves DataFrame")
    n = returns.shape[1]
    if n == 1:
        return pd.Series([1.0], index=returns.columns, name="weight")
    if n * float(min_weight) > 1.0 + WEIGHT_TOL or n * float(max_weight) < 1.0 - WEIGHT_TOL \
            or not (0.0 <= float(min_weight) <= float(max_weight) <= 1.0):
        bound_weights(pd.Series(np.full(n, 1.0 / n), index=returns.columns), min_weight, max_weight)
    raw, _ = optimize_gated(returns, method, engine, profile_name="meta", atom_cap=1.0, clusters=None)
    return bound_weights(raw, min_weight, max_weight).rename("weight")


def walk_forward_meta(returns: pd.DataFrame, method: str, min_weight: float, max_weight: float,
                      train_days: int, test_days: int, *, engine: str = "native") -> tuple[pd.Series, pd.DataFrame]:
    """Out-of-sample meta stream: rolling fit on the past `train_days` rows, hold for `test_days` rows.

    At step k the weights are `meta_weights(returns.iloc[t - train_days:t])` with t = train_days +
    k * test_days, and r_meta = sum_s w_s r_s on rows t .. t + test_days - 1 (fixed weights, i.e.
    rebalanced daily to target). Returns (stream named "meta" over rows train_days.., weights
    history indexed by rebalance date = the first date each weight set is held). No look-ahead:
    the stream up to a date uses returns strictly before each rebalance plus that day's returns.
    """
    train_days, test_days = int(train_days), int(test_days)
    if train_days < 2:
        raise ValueError(f"walk_forward_meta: train_days={train_days} must be >= 2")
    if test_days < 1:
        raise ValueError(f"walk_forward_meta: test_days={test_days} must be >= 1")
    if len(returns) < train_days + 1:
        raise ValueError(f"walk_forward_meta: {len(returns)} joined rows < train_days + 1 = {train_days + 1}; "
                         "lower train_days or lengthen the sleeves' common out-of-sample period")
    if returns.isna().any().any():
        bad = returns.columns[returns.isna().any()].tolist()
        raise ValueError(f"walk_forward_meta: NaN returns in sleeves {bad}; aggregate with aggregate_streams first")
    pieces: list[pd.Series] = []
    history: dict[pd.Timestamp, pd.Series] = {}
    for t in range(train_days, len(returns), test_days):
        w = meta_weights(returns.iloc[t - train_days:t], method, min_weight, max_weight, engine)
        test = returns.iloc[t:t + test_days]
        pieces.append(pd.Series(test[w.index].to_numpy(dtype=float) @ w.to_numpy(dtype=float),
                                index=test.index))
        history[returns.index[t]] = w
    stream = pd.concat(pieces).rename("meta")
    stream.index.name = returns.index.name
    weights = pd.DataFrame(history).T
    weights.index.name = "rebalance_date"
    weights.columns.name = "sleeve"
    return stream, weights


# ------------------------------------------------------------------------------------ flattening

def load_books(sleeves: list[SleeveRef], risk_profile: str) -> dict[str, pd.DataFrame]:
    """Each sleeve's flattened book for `risk_profile` (symbol, net_weight, gross_weight).

    A sleeve: `artifacts/flattened.parquet` rows with profile == risk_profile; a nested meta:
    `artifacts/meta_flattened.parquet`. Missing files/columns raise DataError naming them.
    """
    out: dict[str, pd.DataFrame] = {}
    for ref in sleeves:
        if ref.run_dir is None:
            raise DataError(f"sleeve {ref.id} has no run directory: no flattened book to load")
        rel = META_FLATTENED if ref.kind == "meta" else FLATTENED
        path = Path(ref.run_dir) / rel
        frame = storage.read_parquet(path)
        lacking = [c for c in REQUIRED_COLUMNS[rel] if c not in frame.columns]
        if lacking:
            raise DataError(f"{path} lacks columns {lacking}; re-run the stage that writes it")
        if ref.kind != "meta":
            frame = frame[frame["profile"] == risk_profile]
        out[ref.id] = frame[["symbol", "net_weight", "gross_weight"]].reset_index(drop=True)
    return out


def _fmt_signed(x: float) -> str:
    return f"{x:+.4f}"


def flatten_meta(weights: pd.Series, books: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Physical book: net_weight(symbol) = sum_s meta_w_s * sleeve net_weight_s(symbol) (signs kept).

    `books`: sleeve id -> that sleeve's flattened book for the risk profile (symbol, net_weight; one
    row per symbol). gross_weight = sum_s meta_w_s * |sleeve net|; contributors = comma-joined
    "sleeve:+0.1234" contributions in weight order. A symbol long in one sleeve and short in another
    nets out (the row stays, net 0, gross > 0). Sum of physical net = sum_s meta_w_s * sum sleeve net.
    Rows sorted by gross_weight descending, then symbol.
    """
    w = pd.Series(weights, dtype=float)
    missing = [s for s in w.index if s not in books]
    extra = [s for s in books if s not in w.index]
    if missing or extra:
        raise ValueError(f"flatten_meta: meta weights and books disagree: no book for {missing}, "
                         f"no weight for {extra}")
    if not np.all(np.isfinite(w.to_numpy())):
        raise ValueError(f"flatten_meta: non-finite meta weights {w.to_dict()}")
    parts = []
    for sid, mw in w.items():
        book = books[sid]
        lacking = [c for c in ("symbol", "net_weight") if c not in book.columns]
        if lacking:
            raise ValueError(f"flatten_meta: book of sleeve {sid} lacks columns {lacking}")
        if book["symbol"].duplicated().any():
            dup = sorted(book.loc[book["symbol"].duplicated(), "symbol"].astype(str).unique())[:5]
            raise ValueError(f"flatten_meta: book of sleeve {sid} has several rows for {dup}; pass one "
                             "risk profile's book (one row per symbol)")
        net = book["net_weight"].to_numpy(dtype=float)
        if not np.all(np.isfinite(net)):
            raise ValueError(f"flatten_meta: book of sleeve {sid} has non-finite net weights")
        parts.append(pd.DataFrame({"sleeve": sid, "symbol": book["symbol"].astype(str).to_numpy(),
                                   "contribution": float(mw) * net}))
    columns = ["symbol", "net_weight", "gross_weight", "contributors"]
    if not parts or all(p.empty for p in parts):
        return pd.DataFrame(columns=columns).astype({"net_weight": float, "gross_weight": float})
    c = pd.concat([p for p in parts if not p.empty], ignore_index=True)
    c["gross"] = c["contribution"].abs()
    order = {sid: i for i, sid in enumerate(w.index)}
    c["_order"] = c["sleeve"].map(order)
    c = c.sort_values(["symbol", "_order"], kind="stable")
    c["label"] = c["sleeve"] + ":" + c["contribution"].map(_fmt_signed)
    out = c.groupby("symbol", sort=True).agg(net_weight=("contribution", "sum"), gross_weight=("gross", "sum"),
                                             contributors=("label", ", ".join)).reset_index()
    out = out.sort_values(["gross_weight", "symbol"], ascending=[False, True], kind="stable")
    return out[columns].reset_index(drop=True)


def exposures(flat: pd.DataFrame) -> dict:
    """{gross: sum |net|, net: sum net, long: sum of positive nets, short: sum of negative nets (<= 0),
    n_long, n_short} of a flattened book (|net| <= 1e-12 counts as flat)."""
    net = pd.Series(flat["net_weight"], dtype=float).to_numpy() if len(flat) else np.zeros(0)
    long_mask, short_mask = net > ZERO_TOL, net < -ZERO_TOL
    return {"gross": float(np.abs(net).sum()), "net": float(net.sum()),
            "long": float(net[long_mask].sum()), "short": float(net[short_mask].sum()),
            "n_long": int(long_mask.sum()), "n_short": int(short_mask.sum())}


def physical_cap_check(flat: pd.DataFrame, cap: float) -> dict:
    """Post-flatten physical cap (L-M2): {passed, cap, breaches: [{symbol, net_weight}]} on |net| > cap."""
    cap = float(cap)
    if not cap > 0:
        raise ValueError(f"physical_cap_check: cap={cap} must be > 0")
    if len(flat):
        net = flat["net_weight"].astype(float)
        over = flat.loc[net.abs() > cap + CAP_TOL, ["symbol", "net_weight"]]
        over = over.reindex(over["net_weight"].abs().sort_values(ascending=False, kind="stable").index)
        breaches = [{"symbol": str(r.symbol), "net_weight": float(r.net_weight)} for r in over.itertuples()]
    else:
        breaches = []
    return {"passed": not breaches, "cap": cap, "breaches": breaches}


# ------------------------------------------------------------------------------------ report

def _md_cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, (float, np.floating)):
        return "nan" if not math.isfinite(float(v)) else f"{float(v):.4g}"
    return str(v).replace("|", "\\|").replace("\n", " ")


def md_table(frame: pd.DataFrame, index: bool = True) -> str:
    """A plain GitHub-markdown table of a DataFrame (floats to 4 significant digits)."""
    cols = ([frame.index.name or ""] if index else []) + [str(c) for c in frame.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for idx, row in frame.iterrows():
        cells = ([_md_cell(idx)] if index else []) + [_md_cell(v) for v in row.tolist()]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _checks_body(gate: dict) -> str:
    checks = pd.DataFrame(gate.get("checks", []), columns=["sleeve", "code", "passed", "detail"])
    if checks.empty:
        return ""
    checks["sleeve"] = checks["sleeve"].fillna("(meta)")
    checks["passed"] = checks["passed"].map(lambda p: "PASS" if p is True or p is np.True_ else "FAIL")
    return md_table(checks, index=False)


def _missing(what: str) -> dict:
    return {"passed": False, "body": f"_Not available: {what} was not computed (an earlier step failed)._"}


def report_sections(*, completeness: dict | None = None, sign_tests: dict | None = None,
                    weights: pd.Series | None = None, allocation: dict | None = None,
                    aggregation: dict | None = None, sleeve_returns: pd.DataFrame | None = None,
                    oos: pd.Series | None = None, weights_history: pd.DataFrame | None = None,
                    in_sample: pd.Series | None = None, flat: pd.DataFrame | None = None,
                    cap_check: dict | None = None, annualization: int | None = None,
                    top_n: int = 15) -> dict[str, dict]:
    """The six required report sections, each {"passed": bool, "body": markdown}, computed from results.

    Any input left None (an earlier step failed) gives a FAIL section saying what is missing.
    `allocation`: {method, min_weight, max_weight, ...} settings shown with the weights;
    `aggregation`: the `aggregate_streams` report; `oos`: the walk-forward meta stream (the
    performance figure); `in_sample`: optional, labelled in-sample; `cap_check`: `physical_cap_check`.
    """
    s: dict[str, dict] = {}
    # completeness / sign tests
    s["Sleeve completeness"] = _missing("the completeness gate") if completeness is None else \
        {"passed": completeness.get("passed") is True, "body": _checks_body(completeness)}
    s["Sign tests"] = _missing("the sign-test gate") if sign_tests is None else \
        {"passed": sign_tests.get("passed") is True, "body": _checks_body(sign_tests)}

    # allocation
    if weights is None:
        s["Allocation"] = _missing("the meta allocation")
    else:
        w = pd.Series(weights, dtype=float)
        ok = bool(len(w) and np.all(np.isfinite(w)) and (w >= -WEIGHT_TOL).all() and abs(w.sum() - 1) <= WEIGHT_TOL)
        problems = [] if ok else [f"weights invalid (sum {w.sum():.12g}, values {w.round(6).to_dict()})"]
        if allocation:
            lo, hi = allocation.get("min_weight"), allocation.get("max_weight")
            if len(w) > 1 and lo is not None and (w < float(lo) - WEIGHT_TOL).any():
                problems.append(f"weight below min_weight {lo}")
            if len(w) > 1 and hi is not None and (w > float(hi) + WEIGHT_TOL).any():
                problems.append(f"weight above max_weight {hi}")
        lines = []
        if allocation:
            lines.append("Settings: " + ", ".join(f"{k}={v}" for k, v in allocation.items()))
        lines.append("\nFinal meta weights (fitted on the full joined window):\n")
        lines.append(md_table(w.rename("weight").to_frame().rename_axis("sleeve")))
        if aggregation:
            lines.append("\n" + aggregation_summary(aggregation) + "\n")
            lines.append(md_table(aggregation_table(aggregation)))
        if weights_history is not None and len(weights_history):
            lines.append(f"\nWalk-forward rebalances: {len(weights_history)}; last weights:\n")
            lines.append(md_table(weights_history.tail(5)))
        if problems:
            lines.append("\n**Problems:** " + "; ".join(problems))
        s["Allocation"] = {"passed": not problems, "body": "\n".join(lines)}

    # correlations
    if sleeve_returns is None or sleeve_returns.empty:
        s["Sleeve correlations"] = _missing("the joined sleeve returns")
    else:
        corr = sleeve_returns.corr()
        finite = bool(np.all(np.isfinite(corr.to_numpy())))
        body = f"Pearson correlation of the joined sleeve returns on the common dates ({len(sleeve_returns)} rows):\n\n" + \
            md_table(corr.rename_axis("sleeve"))
        if not finite:
            body += "\n\n**Problem:** non-finite correlation (a constant or too short sleeve stream)."
        s["Sleeve correlations"] = {"passed": finite, "body": body}

    # performance
    if oos is None or pd.Series(oos).dropna().empty:
        s["Performance"] = _missing("the out-of-sample (walk-forward) meta stream")
    else:
        o = pd.Series(oos, dtype=float).rename("meta (out-of-sample)")
        ann = annualization or infer_annualization(o.index)
        frame = o.to_frame()
        if sleeve_returns is not None:
            frame = frame.join(sleeve_returns.reindex(o.index))
        table = metrics_table(frame, ann).rename_axis("stream")
        body = (f"Out-of-sample: walk-forward meta weights (train on the past only), "
                f"{o.index[0].date()}..{o.index[-1].date()}, annualization {ann}; sleeves over the same dates.\n\n"
                + md_table(table))
        if in_sample is not None and len(pd.Series(in_sample).dropna()):
            ist = metrics_table(pd.Series(in_sample, dtype=float).rename("meta (IN-SAMPLE)").to_frame(), ann)
            body += "\n\nIn-sample (weights fitted on the same data -- optimistic, not a performance claim):\n\n" + \
                md_table(ist.rename_axis("stream"))
        ok = bool(table.loc["meta (out-of-sample)", "n_days"] > 0 and np.all(np.isfinite(o.to_numpy())))
        s["Performance"] = {"passed": ok, "body": body}

    # flattened book
    if flat is None:
        s["Flattened book"] = _missing("the flattened physical book")
    else:
        exp = exposures(flat)
        body = "Exposures: " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                         for k, v in exp.items())
        ok = len(flat) > 0
        if cap_check is not None:
            ok = ok and cap_check.get("passed") is True
            body += f"\n\nPhysical cap |net| <= {cap_check.get('cap')}: " + \
                ("PASS" if cap_check.get("passed") is True else
                 f"FAIL, breaches {cap_check.get('breaches')}")
        if len(flat):
            top = flat.reindex(flat["net_weight"].abs().sort_values(ascending=False, kind="stable").index).head(top_n)
            body += f"\n\nLargest {len(top)} names by |net weight|:\n\n" + md_table(top, index=False)
        else:
            body += "\n\n**Problem:** the flattened book is empty."
        s["Flattened book"] = {"passed": bool(ok), "body": body}
    return s


def _is_true(v: Any) -> bool:
    return isinstance(v, (bool, np.bool_)) and bool(v)


def render_report(sections: dict[str, dict], multi_sleeve: bool, n_sleeves: int, *,
                  title: str = "Meta-portfolio report", profile: str | None = None,
                  run_id: str | None = None) -> tuple[str, bool]:
    """Render `meta_portfolio_report.md`; returns (markdown, overall_passed).

    "Status: FAIL" when a required section is missing, has passed False/None, or an empty body,
    when any other section failed, when a multi-sleeve meta has < 2 sleeves, or when there is no
    sleeve. Each section header says PASS or FAIL, computed here (passed must be exactly True and
    the body non-empty), never taken on trust.
    """
    reasons: list[str] = []
    rendered: list[str] = []
    names = list(REQUIRED_SECTIONS) + [k for k in sections if k not in REQUIRED_SECTIONS]
    for name in names:
        sec = sections.get(name)
        if not isinstance(sec, dict):
            reasons.append(f"section '{name}' is missing")
            rendered.append(f"## {name} — FAIL\n\n_Missing: this section was not produced._")
            continue
        body = sec.get("body")
        empty = not isinstance(body, str) or not body.strip()
        ok = _is_true(sec.get("passed")) and not empty
        if empty:
            reasons.append(f"section '{name}' is empty")
        elif not _is_true(sec.get("passed")):
            reasons.append(f"section '{name}' did not pass (passed={sec.get('passed')!r})")
        text = "_Empty: this section has no content._" if empty else body.strip()
        rendered.append(f"## {name} — {'PASS' if ok else 'FAIL'}\n\n{text}")
    if n_sleeves < 1:
        reasons.append("the meta has no sleeve")
    if multi_sleeve and n_sleeves < 2:
        reasons.append(f"multi-sleeve profile left with {n_sleeves} sleeve(s) (< 2); declare "
                       "single_sleeve: true for a one-sleeve meta")
    passed = not reasons
    head = [f"# {title}", ""]
    if profile is not None:
        head.append(f"Profile: {profile}  ")
    if run_id is not None:
        head.append(f"Run: {run_id}  ")
    head.append(f"Sleeves: {n_sleeves} ({'multi-sleeve' if multi_sleeve else 'single-sleeve'})  ")
    head.append(f"Status: {'PASS' if passed else 'FAIL'}")
    if reasons:
        head += ["", "Failures:"] + [f"- {r}" for r in reasons]
    return "\n".join(head) + "\n\n" + "\n\n".join(rendered) + "\n", passed


__all__ = ["SleeveRef", "REQUIRED_SLEEVE_ARTIFACTS", "REQUIRED_META_ARTIFACTS", "REQUIRED_SECTIONS",
           "META_METHODS", "completeness_gate", "sign_test_gate", "enforce_gate", "load_streams",
           "fold", "aggregate_streams", "aggregation_table", "aggregation_summary", "infer_annualization",
           "bound_weights", "meta_weights", "walk_forward_meta", "load_books", "flatten_meta", "exposures", "physical_cap_check",
           "md_table", "report_sections", "render_report"]
