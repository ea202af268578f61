"""Phase 3 stage functions: the meta-portfolio book (SPEC §3). The meta notebooks are thin wrappers.

sleeves (run every unpinned sleeve's full book, in parallel on Ray: `quantlib.engine.fanout`) -> gates
(sign test, completeness) -> allocate (sleeves become assets: folded out-of-sample streams, risk parity,
walk-forward meta stream) -> flatten (physical weights) -> report (meta_portfolio_report.md).
Each stage reads and writes its run's artifacts by registry name (`ctx.read` / `ctx.write`); the
sleeve runs' artifacts are read by the `quantlib.meta` functions, which find them through the registry.
"""
from __future__ import annotations

from quantlib.core.errors import GateError
from quantlib.core.gates import GateResult, enforce
from quantlib.core.runs import INDEX
from quantlib.engine import fanout
from quantlib.engine.context import StageContext
from quantlib.engine.nodes import PreflightError
from quantlib.meta.allocation import meta_weights, walk_forward_meta
from quantlib.meta.flatten import exposures, flatten_meta, load_books, physical_cap_check
from quantlib.meta.gates import completeness_gate, sign_test_gate
from quantlib.meta.report import render_report, report_gate, report_sections
from quantlib.meta.sleeves import SleeveRef, sleeve_refs
from quantlib.meta.streams import aggregate_streams, infer_annualization, load_streams

SLEEVE_FIX = "fix or re-run the named sleeves (or remove them from the meta profile)"


def _print_done(result: dict) -> None:
    print(f"[sleeve {result['id']}] {result['status']} in {result['seconds']} s · {result['run_dir']}/{INDEX}",
          flush=True)


def run_sleeves(ctx: StageContext) -> list[dict]:
    """Stage 1: every unpinned sleeve's book runs (in parallel on Ray by default); a failed one fails the meta."""
    try:
        doc, results = fanout.run_books(ctx.run, _print_done, connect_timeout_s=ctx.profile.meta.ray_connect_timeout_s)
    except PreflightError as exc:  # no sleeve started: the per-node report is the record of why
        ctx.write("sleeves", exc.doc)
        raise
    ctx.write("sleeves", doc)
    failed = [r for r in results if r["status"] != "PASS"]
    if failed:
        first = failed[0]
        raise GateError(f"sleeves: sleeve {first['id']!r} ({first['profile']}) failed: {first.get('error') or first['status']}; "
                        f"see {first['run_dir']}/{INDEX}")
    return results


def _sleeves(ctx: StageContext) -> list[SleeveRef]:
    return sleeve_refs(ctx.read("sleeves"))


def gates(ctx: StageContext) -> dict:
    """Stage 2: the sign-test gate (enforced with features.directional_sign_test_gate) and the
    completeness gate (always enforced), both before any aggregation."""
    refs, cfg = _sleeves(ctx), ctx.profile.meta
    sign = sign_test_gate(refs)
    complete = completeness_gate(refs, cfg.allocation.risk_profile, cfg.single_sleeve)
    ctx.write("meta_sign_test_gate", sign)
    ctx.write("completeness", complete)
    if ctx.profile.features.directional_sign_test_gate:
        enforce(GateResult.from_dict(sign), fix=f"{SLEEVE_FIX}; the gate is on with features.directional_sign_test_gate")
    enforce(GateResult.from_dict(complete), fix=SLEEVE_FIX)
    return {"sign_tests": sign, "completeness": complete}


def allocate(ctx: StageContext) -> dict:
    """Stage 3: sleeves become assets; risk-parity (or hrp/min_variance) weights and the walk-forward
    out-of-sample meta stream."""
    refs, alloc = _sleeves(ctx), ctx.profile.meta.allocation
    matrix, aggregation = aggregate_streams(load_streams(refs, alloc.risk_profile))
    if len(matrix) < alloc.train_days + 1:
        raise GateError(f"allocate: the joined sleeve streams have {len(matrix)} common rows, fewer than "
                        f"meta.allocation.train_days={alloc.train_days} + 1; lower it or lengthen the sleeves' backtests")
    weights = meta_weights(matrix, alloc.method, alloc.min_weight, alloc.max_weight)
    oos, history = walk_forward_meta(matrix, alloc.method, alloc.min_weight, alloc.max_weight,
                                     alloc.train_days, alloc.test_days)
    ctx.write("sleeve_returns", matrix.rename_axis("date"))
    ctx.write("meta_weights", weights.rename_axis("sleeve").to_frame())
    ctx.write("meta_weights_history", history)
    ctx.write("meta_returns", oos.to_frame("meta").rename_axis("date"))
    ctx.write("aggregation", {**aggregation, "allocation": alloc.model_dump(mode="json")})
    return {"matrix": matrix, "aggregation": aggregation, "weights": weights, "oos": oos, "history": history}


def flatten(ctx: StageContext) -> dict:
    """Stage 4: physical weight = sum over sleeves of meta weight x sleeve net weight (shorts stay negative)."""
    refs, cfg = _sleeves(ctx), ctx.profile.meta
    weights = ctx.read("meta_weights")["weight"]
    flat = flatten_meta(weights, load_books(refs, cfg.allocation.risk_profile))
    doc = {"exposures": exposures(flat), "cap_check": physical_cap_check(flat, cfg.physical_cap)}
    ctx.write("meta_flattened", flat)
    ctx.write("meta_flattened_csv", flat.to_csv(index=False))  # for spreadsheets; the report links it
    ctx.write("exposures", doc)
    return {"flat": flat, **doc}


def report(ctx: StageContext) -> dict:
    """Stage 5: meta_portfolio_report.md with computed PASS/FAIL sections; a FAIL fails the run."""
    cfg = ctx.profile.meta
    matrix = ctx.read("sleeve_returns")
    sections = report_sections(
        completeness=ctx.read("completeness"), sign_tests=ctx.read("meta_sign_test_gate"),
        weights=ctx.read("meta_weights")["weight"], allocation=cfg.allocation.model_dump(mode="json"),
        aggregation=ctx.read("aggregation"), sleeve_returns=matrix, oos=ctx.read("meta_returns")["meta"],
        weights_history=ctx.read("meta_weights_history"), flat=ctx.read("meta_flattened"),
        cap_check=ctx.read("exposures")["cap_check"], annualization=infer_annualization(matrix.index))
    n = len(ctx.read("sleeves")["sleeves"])
    multi = not cfg.single_sleeve
    text, passed = render_report(sections, multi_sleeve=multi, n_sleeves=n, profile=ctx.profile.name, run_id=ctx.run.id)
    verdict = report_gate(sections, multi_sleeve=multi, n_sleeves=n, info={"run_id": ctx.run.id})
    report_path = ctx.write("meta_report_md", text)
    ctx.write("meta_report", verdict.to_dict())
    enforce(verdict, fix=f"see {report_path}")
    return {"sections": sections, "text": text, "passed": passed}
