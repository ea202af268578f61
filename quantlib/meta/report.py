"""The meta report (SPEC §3.5): `meta_portfolio_report.md` from computed results, every section PASS/FAIL.

`report_sections` builds the six required sections (each ``{"passed": bool, "body": markdown}``) from
the gates, the allocation, the streams and the flattened book; `report_gate` is the report's verdict
(a `GateResult`: one SECTION check per section, HAS_SLEEVES and SLEEVE_COUNT); `render_report` writes
the markdown whose "Status" is that verdict. A missing/empty/failed section or a degraded
multi-sleeve meta is FAIL.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from quantlib.core.gates import Check, GateResult
from quantlib.meta.allocation import WEIGHT_TOL
from quantlib.meta.flatten import exposures
from quantlib.meta.streams import aggregation_summary, aggregation_table, infer_annualization
from quantlib.portfolio.metrics import metrics_table

REQUIRED_SECTIONS: tuple[str, ...] = ("Sleeve completeness", "Sign tests", "Allocation",
                                      "Sleeve correlations", "Performance", "Flattened book")
REPORT_GATE = "meta_report"


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
    """A gate file's checks as a table: sleeve (a check's subject, "(meta)" for the whole), code, passed, detail."""
    rows = [{"sleeve": c.get("subject"), "code": c.get("code"), "passed": c.get("passed"), "detail": c.get("detail")}
            for c in gate.get("checks", []) or [] if isinstance(c, dict)]
    checks = pd.DataFrame(rows, columns=["sleeve", "code", "passed", "detail"])
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


def report_gate(sections: dict[str, dict], multi_sleeve: bool, n_sleeves: int,
                info: dict[str, Any] | None = None) -> GateResult:
    """The report's verdict, computed (never taken on trust): a SECTION check per section (subject =
    section name; the required ones first), passed when the section's `passed` is exactly True and its
    body is non-empty; HAS_SLEEVES (>= 1 sleeve); SLEEVE_COUNT (a multi-sleeve meta has >= 2).
    `info` gets `sections`: {name: the section's own `passed`}."""
    checks: list[Check] = []
    for name in list(REQUIRED_SECTIONS) + [k for k in sections if k not in REQUIRED_SECTIONS]:
        sec = sections.get(name)
        if not isinstance(sec, dict):
            checks.append(Check("SECTION", False, "is missing", subject=name))
            continue
        body = sec.get("body")
        if not isinstance(body, str) or not body.strip():
            checks.append(Check("SECTION", False, "is empty", subject=name))
        elif not _is_true(sec.get("passed")):
            checks.append(Check("SECTION", False, f"did not pass (passed={sec.get('passed')!r})",
                                subject=name))
        else:
            checks.append(Check("SECTION", True, "passed", subject=name))
    checks.append(Check("HAS_SLEEVES", n_sleeves >= 1,
                        f"{n_sleeves} sleeve(s)" if n_sleeves >= 1 else "the meta has no sleeve"))
    if multi_sleeve and n_sleeves < 2:
        checks.append(Check("SLEEVE_COUNT", False, f"multi-sleeve profile left with {n_sleeves} sleeve(s) (< 2); "
                                                   "declare single_sleeve: true for a one-sleeve meta"))
    else:
        checks.append(Check("SLEEVE_COUNT", True, f"{n_sleeves} sleeve(s), "
                                                  f"{'multi-sleeve' if multi_sleeve else 'single-sleeve'} meta"))
    sections_info = {name: sec.get("passed") if isinstance(sec, dict) else None for name, sec in sections.items()}
    return GateResult(REPORT_GATE, tuple(checks), {**(info or {}), "sections": sections_info})


def _reason(check: Check) -> str:
    return f"section '{check.subject}' {check.detail}" if check.code == "SECTION" else check.detail


def render_report(sections: dict[str, dict], multi_sleeve: bool, n_sleeves: int, *,
                  title: str = "Meta-portfolio report", profile: str | None = None,
                  run_id: str | None = None) -> tuple[str, bool]:
    """Render `meta_portfolio_report.md`; returns (markdown, overall_passed).

    "Status: FAIL" when `report_gate` fails: a required section is missing, has passed False/None, or
    an empty body, any other section failed, a multi-sleeve meta has < 2 sleeves, or there is no
    sleeve. Each section header says PASS or FAIL, computed there (passed must be exactly True and the
    body non-empty), never taken on trust.
    """
    gate = report_gate(sections, multi_sleeve, n_sleeves)
    rendered: list[str] = []
    for check in gate.checks:
        if check.code != "SECTION":
            continue
        sec = sections.get(check.subject)
        if not isinstance(sec, dict):
            rendered.append(f"## {check.subject} — FAIL\n\n_Missing: this section was not produced._")
            continue
        body = sec.get("body")
        text = body.strip() if isinstance(body, str) and body.strip() else "_Empty: this section has no content._"
        rendered.append(f"## {check.subject} — {'PASS' if check.passed else 'FAIL'}\n\n{text}")
    passed = gate.passed
    head = [f"# {title}", ""]
    if profile is not None:
        head.append(f"Profile: {profile}  ")
    if run_id is not None:
        head.append(f"Run: {run_id}  ")
    head.append(f"Sleeves: {n_sleeves} ({'multi-sleeve' if multi_sleeve else 'single-sleeve'})  ")
    head.append(f"Status: {'PASS' if passed else 'FAIL'}")
    if not passed:
        head += ["", "Failures:"] + [f"- {_reason(c)}" for c in gate.failed]
    return "\n".join(head) + "\n\n" + "\n\n".join(rendered) + "\n", passed
