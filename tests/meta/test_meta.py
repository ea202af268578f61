"""Meta-portfolio logic (quantlib.meta, SPEC §3): gates, aggregation, weights, walk-forward, flattening, report,
and the meta stages on fake sleeve runs."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from quantlib.core import registry, storage
from quantlib.core.enums import MetaMethod
from quantlib.core.errors import DataError, GateError, ProfileError
from quantlib.core.gates import Check, GateResult, enforce
from quantlib.core.runs import MANIFEST
from quantlib.meta.allocation import bound_weights, meta_weights, walk_forward_meta
from quantlib.meta.flatten import exposures, flatten_meta, load_books, physical_cap_check
from quantlib.meta.gates import REQUIRED_META_ARTIFACTS, REQUIRED_SLEEVE_ARTIFACTS, completeness_gate, sign_test_gate
from quantlib.meta.report import REQUIRED_SECTIONS, render_report, report_gate, report_sections
from quantlib.meta.sleeves import SleeveRef
from quantlib.meta.streams import aggregate_streams, fold, infer_annualization, load_streams
from quantlib.meta.tree import check_meta_tree
from quantlib.portfolio.covariance import ledoit_wolf

PROFILES = ("hrp", "min_variance", "max_sharpe", "risk_parity", "equal_weight")


# ------------------------------------------------------------------------------ fake run dirs

def _write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def _dates(calendar: str, n: int, start: str = "2024-01-01") -> pd.DatetimeIndex:
    idx = pd.date_range(start, periods=n, freq="D") if calendar == "crypto" else pd.bdate_range(start, periods=n)
    return idx.rename("date")


def _sleeve_file(run: Path, name: str) -> Path:
    """Where a sleeve run keeps artifact `name` (the registry's path)."""
    path = run / registry.path("sleeve", name)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _sign_test_doc(ok: bool, shape: str) -> dict:
    """A sleeve's sign-test file: the GateResult shape, or the earlier {passed, errors, warnings, findings}."""
    if shape == "gate":
        return GateResult("sign_test", (Check("SIGN", ok, "planted" if not ok else "signs agree",
                                              subject="X/rsi/SHORT"),),
                          {"errors": 0 if ok else 1, "warnings": 0}).to_dict()
    return {"passed": ok, "errors": 0 if ok else 1, "warnings": 0,
            "findings": [] if ok else [{"level": "error", "code": "SHORT_NOT_NEGATIVE", "atom": "X/rsi/SHORT",
                                        "message": "planted"}]}


def record_outputs(run: Path, doc: dict) -> None:
    """Write the manifest `doc` of a fake run, recording every file in it as one stage's outputs
    (with their sha256, as the executor does)."""
    outputs = {p.relative_to(run).as_posix(): storage.sha256_file(p) for p in sorted(run.rglob("*"))
               if p.is_file() and p.name != MANIFEST and "sleeves" not in p.relative_to(run).parts}
    _write_json(run / MANIFEST, {**doc, "stages": {"all": {"status": "completed", "outputs": outputs}}})


def make_sleeve(root: Path, sid: str, *, calendar: str = "crypto", n: int = 120, seed: int = 0,
                status: str = "PASS", direction: str = "LONG", book: dict | None = None,
                sign_pre: bool = True, sign_post: bool = True, gate_shape: str = "legacy") -> SleeveRef:
    run = root / sid
    for name, ok in (("sign_test_pre_opt", sign_pre), ("sign_test", sign_post)):
        _write_json(_sleeve_file(run, name), _sign_test_doc(ok, gate_shape))
    _write_json(_sleeve_file(run, "audit"), GateResult("audit", (Check("RETURNS", True, "ok"),)).to_dict())
    book = book or {"BTC": 0.6, "ETH": 0.4}
    sign = -1.0 if direction == "SHORT" else 1.0
    rows = [{"profile": p, "symbol": s, "net_weight": sign * w, "gross_weight": w}
            for p in PROFILES for s, w in book.items()]
    pd.DataFrame(rows).to_parquet(_sleeve_file(run, "flattened"), index=False)
    pd.DataFrame([{"atom_id": f"{s}/rsi/{direction}", "symbol": s, "logic": "rsi", "direction": direction}
                  for s in book]).to_parquet(_sleeve_file(run, "atoms"), index=False)
    rng = np.random.default_rng(seed)
    idx = _dates(calendar, n)
    stream = pd.DataFrame(rng.normal(0.0005, 0.01, (n, len(PROFILES))), index=idx, columns=list(PROFILES))
    stream.to_parquet(_sleeve_file(run, "wf_returns"))
    record_outputs(run, {"run_id": f"{sid}-20240101T000000-abcd", "profile": sid, "status": status})
    return SleeveRef(sid, run)


def _failed(gate: dict) -> set[tuple]:
    return {(c["subject"], c["code"]) for c in gate["checks"] if not c["passed"]}


def _check(gate: dict, code: str, subject: str | None) -> dict:
    return next(c for c in gate["checks"] if c["code"] == code and c["subject"] == subject)


@pytest.fixture
def pair(tmp_path):
    return [make_sleeve(tmp_path, "crypto_long", seed=1),
            make_sleeve(tmp_path, "crypto_short", seed=2, direction="SHORT")]


# ------------------------------------------------------------------------------ completeness

def test_completeness_passes_on_a_complete_pair(pair):
    gate = completeness_gate(pair, "hrp")
    assert gate["passed"] is True, _failed(gate)
    assert gate["gate"] == "completeness" and gate["info"] == {"risk_profile": "hrp", "single_sleeve": False}
    assert all(set(c) == {"code", "passed", "detail", "required", "subject"} and c["required"] for c in gate["checks"])
    codes = [(c["subject"], c["code"]) for c in gate["checks"]]
    assert codes == [(sid, k) for sid in ("crypto_long", "crypto_short")
                     for k in ("HAS_RUN", "RUN_PASSED", "ARTIFACTS", "HASHES", "STREAM")] + [
        (None, "SLEEVE_COUNT"), (None, "UNIQUE_IDS")]
    # the manifest and the six registry artifacts
    assert _check(gate, "ARTIFACTS", "crypto_long")["detail"] == "7 required artifacts readable"
    assert _check(gate, "HASHES", "crypto_long")["detail"].startswith("6 recorded artifacts hash as in ")
    assert _check(gate, "STREAM", "crypto_short")["detail"].endswith("column 'hrp': 120 non-NaN row(s) of 120")
    assert GateResult.from_dict(gate).passed is True  # the file shape core.gates reads back


def test_required_artifacts_are_registry_names():
    assert REQUIRED_SLEEVE_ARTIFACTS == ("sign_test_pre_opt", "sign_test", "audit", "flattened", "atoms", "wf_returns")
    assert REQUIRED_META_ARTIFACTS == ("meta_sign_test_gate", "meta_returns", "meta_flattened")
    assert registry.path("sleeve", "wf_returns") == "backtest/returns.parquet"
    for name in REQUIRED_SLEEVE_ARTIFACTS:
        registry.artifact("sleeve", name)
    for name in REQUIRED_META_ARTIFACTS:
        registry.artifact("meta", name)


def test_completeness_accepts_a_risk_method_enum(pair):
    """`meta.allocation.risk_profile` may be a str enum: the column is looked up by its value."""
    from quantlib.core.enums import RiskMethod

    gate = completeness_gate(pair, RiskMethod.MIN_VARIANCE)
    assert gate["passed"] is True and gate["info"]["risk_profile"] == "min_variance"
    assert "column 'min_variance'" in _check(gate, "STREAM", "crypto_long")["detail"]
    streams = load_streams(pair, RiskMethod.MIN_VARIANCE)
    pd.testing.assert_series_equal(streams["crypto_long"], load_streams(pair, "min_variance")["crypto_long"])
    books = load_books(pair, RiskMethod.HRP)
    assert books["crypto_long"]["net_weight"].tolist() == [0.6, 0.4]


def test_completeness_no_run_dir(pair):
    gate = completeness_gate([pair[0], SleeveRef("ghost", None)], "hrp")
    assert gate["passed"] is False
    assert ("ghost", "HAS_RUN") in _failed(gate)
    assert all(s == "ghost" for s, _ in _failed(gate))


def test_completeness_manifest_without_run_id(pair):
    path = pair[1].run_dir / MANIFEST
    m = json.loads(path.read_text())
    del m["run_id"]
    _write_json(path, m)
    gate = completeness_gate(pair, "hrp")
    assert _failed(gate) == {("crypto_short", "HAS_RUN")}


def test_completeness_run_status_fail(pair):
    path = pair[1].run_dir / MANIFEST
    m = json.loads(path.read_text())
    m["status"] = "FAIL"
    _write_json(path, m)
    gate = completeness_gate(pair, "hrp")
    assert gate["passed"] is False
    assert _failed(gate) == {("crypto_short", "RUN_PASSED")}


@pytest.mark.parametrize("artifact", [MANIFEST, *REQUIRED_SLEEVE_ARTIFACTS])
def test_completeness_each_missing_artifact(pair, artifact):
    rel = artifact if artifact == MANIFEST else registry.path("sleeve", artifact)
    (pair[0].run_dir / rel).unlink()
    gate = completeness_gate(pair, "hrp")
    assert gate["passed"] is False
    assert ("crypto_long", "ARTIFACTS") in _failed(gate)
    detail = _check(gate, "ARTIFACTS", "crypto_long")["detail"]
    assert f"missing {pair[0].run_dir / rel}" in detail
    assert all(s == "crypto_long" for s, _ in _failed(gate))


@pytest.mark.parametrize("artifact", ["flattened", "wf_returns", "sign_test", MANIFEST])
def test_completeness_corrupt_file(pair, artifact):
    rel = artifact if artifact == MANIFEST else registry.path("sleeve", artifact)
    (pair[1].run_dir / rel).write_bytes(b"PAR1 this is not a parquet or json file")
    gate = completeness_gate(pair, "hrp")   # must not raise
    assert gate["passed"] is False
    detail = _check(gate, "ARTIFACTS", "crypto_short")["detail"]
    assert "corrupt" in detail and Path(rel).name in detail


def test_completeness_all_nan_stream(pair):
    path = pair[0].run_dir / "backtest" / "returns.parquet"
    frame = pd.read_parquet(path)
    frame["hrp"] = np.nan
    frame.to_parquet(path)
    record_outputs(pair[0].run_dir, json.loads((pair[0].run_dir / MANIFEST).read_text()))  # the run wrote it so
    gate = completeness_gate(pair, "hrp")
    assert _failed(gate) == {("crypto_long", "STREAM")}
    assert completeness_gate(pair, "min_variance")["passed"] is True   # other profile still fine


def test_completeness_missing_risk_profile_column(pair):
    path = pair[0].run_dir / "backtest" / "returns.parquet"
    pd.read_parquet(path).drop(columns=["risk_parity"]).to_parquet(path)
    record_outputs(pair[0].run_dir, json.loads((pair[0].run_dir / MANIFEST).read_text()))  # the run wrote it so
    gate = completeness_gate(pair, "risk_parity")
    assert _failed(gate) == {("crypto_long", "STREAM")}
    assert completeness_gate(pair, "hrp")["passed"] is True


def test_completeness_hashes_catch_a_stream_edited_after_the_run(pair):
    """A finished (e.g. pinned) sleeve run whose returns were scaled afterwards: readable, a valid stream,
    but no longer what its run wrote -- HASHES fails and names the file; nothing else does."""
    path = pair[0].run_dir / registry.path("sleeve", "wf_returns")
    (pd.read_parquet(path) * 10).to_parquet(path)
    gate = completeness_gate(pair, "hrp")
    assert gate["passed"] is False and _failed(gate) == {("crypto_long", "HASHES")}
    detail = _check(gate, "HASHES", "crypto_long")["detail"]
    assert detail.startswith(f"{pair[0].run_dir}: ") and "backtest/returns.parquet changed since stage all" in detail
    assert _check(gate, "HASHES", "crypto_short")["passed"] is True
    with pytest.raises(GateError, match=r"completeness gate failed: HASHES:crypto_long: .*backtest/returns\.parquet"):
        enforce(GateResult.from_dict(gate), fix="re-run it")


def test_completeness_hashes_a_required_artifact_the_manifest_does_not_record(pair):
    path = pair[1].run_dir / MANIFEST
    m = json.loads(path.read_text())
    del m["stages"]["all"]["outputs"]["backtest/returns.parquet"]
    _write_json(path, m)
    gate = completeness_gate(pair, "hrp")
    assert _failed(gate) == {("crypto_short", "HASHES")}
    assert "backtest/returns.parquet has no recorded hash" in _check(gate, "HASHES", "crypto_short")["detail"]


def test_completeness_hashes_a_deleted_recorded_output_and_a_nested_metas_sleeves(tmp_path, pair):
    (pair[0].run_dir / registry.path("sleeve", "audit")).unlink()
    gate = completeness_gate(pair, "hrp")
    assert _failed(gate) == {("crypto_long", "ARTIFACTS"), ("crypto_long", "HASHES")}
    assert "artifacts/audit.json missing (recorded by stage all)" in _check(gate, "HASHES", "crypto_long")["detail"]

    run = tmp_path / "nested"
    inner = make_sleeve(run / "sleeves", "inner")
    _write_json(_meta_file(run, "meta_sign_test_gate"), sign_test_gate([inner]))
    pd.DataFrame({"meta": [0.01, -0.02]}, index=_dates("crypto", 2)).to_parquet(_meta_file(run, "meta_returns"))
    pd.DataFrame({"symbol": ["BTC"], "net_weight": [0.5], "gross_weight": [0.5]}).to_parquet(
        _meta_file(run, "meta_flattened"), index=False)
    record_outputs(run, {"run_id": "nested-1", "status": "PASS"})
    nested = SleeveRef("nested", run, kind="meta")
    assert _check(completeness_gate([pair[1], nested], "hrp"), "HASHES", "nested")["detail"].startswith(
        "9 recorded artifacts hash")  # its own 3 and its sleeve's 6
    flat = inner.run_dir / registry.path("sleeve", "flattened")
    pd.read_parquet(flat).assign(net_weight=1.0).to_parquet(flat, index=False)
    gate = completeness_gate([pair[1], nested], "hrp")
    assert _failed(gate) == {("nested", "HASHES")}
    assert "sleeves/inner/artifacts/flattened.parquet changed" in _check(gate, "HASHES", "nested")["detail"]


def test_completeness_sleeve_count(pair):
    one = completeness_gate(pair[:1], "hrp")
    assert _failed(one) == {(None, "SLEEVE_COUNT")}
    assert completeness_gate(pair[:1], "hrp", single_sleeve=True)["passed"] is True
    assert _failed(completeness_gate(pair, "hrp", single_sleeve=True)) == {(None, "SLEEVE_COUNT")}
    assert completeness_gate([], "hrp")["passed"] is False


def _meta_file(run: Path, name: str) -> Path:
    path = run / registry.path("meta", name)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def test_completeness_nested_meta(tmp_path, pair):
    run = tmp_path / "nested"
    _write_json(_meta_file(run, "meta_sign_test_gate"), sign_test_gate(pair))
    pd.DataFrame({"meta": [0.01, -0.02, np.nan]}, index=_dates("crypto", 3)).to_parquet(
        _meta_file(run, "meta_returns"))
    pd.DataFrame({"symbol": ["BTC"], "net_weight": [0.5], "gross_weight": [0.5]}).to_parquet(
        _meta_file(run, "meta_flattened"), index=False)
    record_outputs(run, {"run_id": "nested-1", "status": "PASS"})
    nested = SleeveRef("nested", run, kind="meta")
    gate = completeness_gate([pair[0], nested], "hrp")
    assert gate["passed"] is True
    assert _check(gate, "ARTIFACTS", "nested")["detail"] == "4 required artifacts readable"
    assert list(load_streams([nested], "hrp")["nested"].dropna()) == [0.01, -0.02]
    assert load_books([nested], "hrp")["nested"].to_dict("list") == {"symbol": ["BTC"], "net_weight": [0.5],
                                                                     "gross_weight": [0.5]}
    _meta_file(run, "meta_flattened").unlink()
    assert ("nested", "ARTIFACTS") in _failed(completeness_gate([pair[0], nested], "hrp"))


# ------------------------------------------------------------------------------ sign tests

def test_sign_test_gate_passes_and_names_a_broken_sleeve(tmp_path, pair):
    ok = sign_test_gate(pair)
    assert ok["passed"] is True and ok["gate"] == "meta_sign_test_gate"
    assert [(c["subject"], c["code"]) for c in ok["checks"]] == [
        ("crypto_long", "SIGN_TEST_PRE"), ("crypto_long", "SIGN_TEST_POST"),
        ("crypto_short", "SIGN_TEST_PRE"), ("crypto_short", "SIGN_TEST_POST")]
    broken = make_sleeve(tmp_path, "broken_short", direction="SHORT", sign_post=False)
    gate = sign_test_gate(pair + [broken])
    assert gate["passed"] is False
    assert _failed(gate) == {("broken_short", "SIGN_TEST_POST")}
    detail = _check(gate, "SIGN_TEST_POST", "broken_short")["detail"]
    assert detail.endswith("sign_test.json: passed=False, 1 error(s), 0 warning(s); first: SHORT_NOT_NEGATIVE X/rsi/SHORT")
    with pytest.raises(GateError, match="meta_sign_test_gate failed: SIGN_TEST_POST:broken_short: .*; re-run it"):
        enforce(GateResult.from_dict(gate), fix="re-run it")


def test_sign_test_gate_reads_gate_result_files(tmp_path, pair):
    """A sleeve whose gate files are GateResults: the verdict is computed from their checks."""
    good = make_sleeve(tmp_path, "gate_shape", gate_shape="gate")
    bad = make_sleeve(tmp_path, "gate_bad", gate_shape="gate", sign_pre=False)
    gate = sign_test_gate([pair[0], good, bad])
    assert _failed(gate) == {("gate_bad", "SIGN_TEST_PRE")}
    detail = _check(gate, "SIGN_TEST_PRE", "gate_bad")["detail"]
    assert "passed=False, 1 error(s), 0 warning(s); failed checks: SIGN:X/rsi/SHORT" in detail
    # a stored "passed": true does not override a failed required check
    path = good.run_dir / registry.path("sleeve", "sign_test")
    doc = json.loads(path.read_text())
    doc["checks"][0]["passed"] = False
    _write_json(path, doc)
    assert doc["passed"] is True and ("gate_shape", "SIGN_TEST_POST") in _failed(sign_test_gate([good]))


def test_sign_test_gate_missing_file_and_pre_opt(tmp_path, pair):
    (pair[0].run_dir / registry.path("sleeve", "sign_test_pre_opt")).unlink()
    pre = make_sleeve(tmp_path, "bad_pre", sign_pre=False)
    gate = sign_test_gate([pair[0], pair[1], pre, SleeveRef("ghost", None)])
    assert _failed(gate) == {("crypto_long", "SIGN_TEST_PRE"), ("bad_pre", "SIGN_TEST_PRE"),
                             ("ghost", "SIGN_TEST_PRE"), ("ghost", "SIGN_TEST_POST")}


def test_sign_test_gate_nested_meta(tmp_path, pair):
    run = tmp_path / "nested"
    inner = make_sleeve(tmp_path, "inner", sign_post=False)
    _write_json(_meta_file(run, "meta_sign_test_gate"), sign_test_gate([inner]))  # the nested meta's own gate
    gate = sign_test_gate([pair[0], SleeveRef("nested", run, kind="meta")])
    assert _failed(gate) == {("nested", "META_SIGN_TEST")}
    assert _check(gate, "META_SIGN_TEST", "nested")["detail"].endswith("; nested failures: SIGN_TEST_POST:inner")


# ------------------------------------------------------------------------------ aggregation

def _own_total(s: pd.Series, first: pd.Timestamp, last: pd.Timestamp) -> float:
    """A stream's own compounded return over [first, last] (NaN = no observation)."""
    return float(np.prod(1.0 + s.dropna().loc[first:last].to_numpy()) - 1.0)


def test_aggregate_crypto_with_equities_folds_weekends_into_monday(tmp_path):
    crypto = make_sleeve(tmp_path, "crypto", calendar="crypto", n=28, seed=3)      # Mon 1 .. Sun 28 Jan
    equity = make_sleeve(tmp_path, "equity", calendar="equities", n=20, seed=4)    # Mon 1 .. Fri 26 Jan
    streams = load_streams([crypto, equity], "hrp")
    joined, rep = aggregate_streams(streams)
    assert len(joined) == 20 and (joined.index.day_of_week < 5).all()
    assert rep["rows_per_sleeve"] == {"crypto": 28, "equity": 20}
    assert rep["rows_joined"] == 20
    assert rep["rows_folded"] == {"crypto": 6, "equity": 0}       # 3 weekends into 3 Mondays
    assert rep["rows_pending"] == {"crypto": 2, "equity": 0}      # Sat 27, Sun 28: no later common date
    assert rep["rows_excluded"] == {"crypto": 0, "equity": 0}
    assert (rep["first"], rep["last"], rep["annualization"]) == ("2024-01-01", "2024-01-26", 252)
    c = streams["crypto"]
    assert rep["pending_return"]["crypto"] == pytest.approx((1 + c.iloc[-2]) * (1 + c.iloc[-1]) - 1, abs=1e-15)
    # unfolded rows keep their values bit for bit; the equities column is its own stream
    tuesdays = joined.index[joined.index.day_of_week == 1]
    assert (joined.loc[tuesdays, "crypto"] == c.loc[tuesdays]).all()
    pd.testing.assert_series_equal(joined["equity"], streams["equity"], check_names=False, check_freq=False)
    assert joined.notna().all().all()


def test_aggregate_conserves_each_streams_total_between_common_dates():
    """Crypto (7-day, NaN gaps, starts earlier, ends later) + equities (weekdays, a holiday): over any
    span (C_i, C_j] each joined column compounds to the stream's own total, to 1e-12."""
    rng = np.random.default_rng(11)
    cdates = pd.date_range("2024-06-01", "2024-09-15", freq="D")                 # starts on a Saturday
    edates = pd.bdate_range("2024-06-03", "2024-09-06").drop(pd.Timestamp("2024-07-04"))  # a holiday
    crypto = pd.Series(rng.normal(0.001, 0.04, len(cdates)), index=cdates)
    crypto.iloc[[10, 40, 41]] = np.nan                                             # no observation
    equity = pd.Series(rng.normal(0.0005, 0.01, len(edates)), index=edates)
    streams = {"crypto": crypto, "equity": equity}
    joined, rep = aggregate_streams(streams)
    common = joined.index
    assert pd.Timestamp("2024-07-04") not in common and not joined.isna().any().any()
    for sid, s in streams.items():
        own = s.dropna().loc[common[0]:]
        own_wealth = np.cumprod(1.0 + own.to_numpy())[own.index.isin(common)]
        np.testing.assert_allclose(np.cumprod(1.0 + joined[sid].to_numpy()), own_wealth, rtol=1e-12, atol=0)
        assert rep["rows_per_sleeve"][sid] == (rep["rows_joined"] + rep["rows_folded"][sid]
                                               + rep["rows_pending"][sid] + rep["rows_excluded"][sid])
        assert _own_total(joined[sid], common[0], common[-1]) == pytest.approx(
            _own_total(s, common[0], common[-1]), rel=1e-12)
    assert rep["rows_excluded"] == {"crypto": 2, "equity": 0}                     # Sat 1, Sun 2 June
    assert rep["rows_pending"] == {"crypto": 9, "equity": 0}                      # Sat 7 .. Sun 15 Sept
    assert rep["rows_folded"]["equity"] == 3                                      # crypto NaN on 3 weekdays
    assert rep["nan_rows"] == {"crypto": 3, "equity": 0}


def test_aggregate_never_moves_a_return_earlier():
    """The joined rows up to a date depend only on stream rows up to that date."""
    rng = np.random.default_rng(12)
    crypto = pd.Series(rng.normal(0, 0.03, 60), index=_dates("crypto", 60))
    equity = pd.Series(rng.normal(0, 0.01, 40), index=_dates("equities", 40))
    joined, _ = aggregate_streams({"crypto": crypto, "equity": equity})
    cut = pd.Timestamp("2024-01-19")                                              # a Friday
    later = crypto.copy()
    later.loc[later.index > cut] += 0.5
    joined2, _ = aggregate_streams({"crypto": later, "equity": equity})
    pd.testing.assert_frame_equal(joined.loc[:cut], joined2.loc[:cut])
    assert (joined2.loc[joined2.index > cut, "crypto"] != joined.loc[joined.index > cut, "crypto"]).all()


def test_fold_hand_computed_weekend_holiday_pending_and_leading_rows():
    # Sat 6 Jan .. Sun 21 Jan 2024 crypto; equities Mon 8 .. Fri 19 Jan with Wed 17 a holiday
    days = pd.date_range("2024-01-06", "2024-01-21", freq="D")
    crypto = pd.Series(np.arange(1, len(days) + 1) / 100.0, index=days)          # 0.01, 0.02, ...
    common = pd.bdate_range("2024-01-08", "2024-01-19").drop(pd.Timestamp("2024-01-17"))
    out, counts = fold(crypto, common)
    r = crypto.to_dict()
    assert list(out.index) == list(common)
    # leading Sat 6 / Sun 7 are before the first common date: excluded, not folded into Mon 8
    assert out[pd.Timestamp("2024-01-08")] == r[pd.Timestamp("2024-01-08")]
    # weekend Sat 13, Sun 14 folded into Mon 15
    assert out[pd.Timestamp("2024-01-15")] == pytest.approx(
        (1 + r[pd.Timestamp("2024-01-13")]) * (1 + r[pd.Timestamp("2024-01-14")]) * (1 + r[pd.Timestamp("2024-01-15")]) - 1,
        abs=1e-15)
    # the holiday Wed 17 folded into Thu 18
    assert out[pd.Timestamp("2024-01-18")] == pytest.approx(
        (1 + r[pd.Timestamp("2024-01-17")]) * (1 + r[pd.Timestamp("2024-01-18")]) - 1, abs=1e-15)
    # trailing Sat 20, Sun 21 pending
    assert counts == {"on_common": 9, "folded": 3, "pending": 2, "excluded": 2,
                      "pending_return": pytest.approx(1.15 * 1.16 - 1, abs=1e-15),
                      "excluded_return": pytest.approx(1.01 * 1.02 - 1, abs=1e-15)}


def test_fold_nan_is_no_observation_and_a_common_date_without_rows_stays_nan():
    idx = _dates("crypto", 4)
    out, counts = fold(pd.Series([0.01, np.nan, 0.03, 0.04], index=idx), idx[[0, 1, 3]])
    assert np.isnan(out[idx[1]])                                   # nothing observed since idx[0]: no zero
    assert out[idx[3]] == pytest.approx(1.03 * 1.04 - 1, abs=1e-15)
    assert counts["folded"] == 1 and counts["on_common"] == 2
    with pytest.raises(ValueError, match="no common dates"):
        fold(pd.Series([0.01], index=idx[:1]), pd.DatetimeIndex([]))


def test_aggregate_nan_rows_are_not_common_dates_and_fold_forward():
    idx = _dates("crypto", 5)
    a = pd.Series([0.01, np.nan, 0.03, 0.04, 0.05], index=idx)
    b = pd.Series([0.02, 0.02, np.nan, 0.02, 0.02], index=idx)
    joined, rep = aggregate_streams({"a": a, "b": b})
    assert list(joined.index) == [idx[0], idx[3], idx[4]]         # a NaN date is not a common date
    assert rep["rows_per_sleeve"] == {"a": 4, "b": 4} and rep["nan_rows"] == {"a": 1, "b": 1}
    assert rep["rows_folded"] == {"a": 1, "b": 1}
    assert joined.loc[idx[3], "a"] == pytest.approx(1.03 * 1.04 - 1, abs=1e-15)
    assert joined.loc[idx[3], "b"] == pytest.approx(1.02 * 1.02 - 1, abs=1e-15)
    assert joined.loc[idx[0]].tolist() == [0.01, 0.02] and joined.loc[idx[4]].tolist() == [0.05, 0.02]


def test_aggregate_empty_overlap_raises_naming_sleeves_and_ranges():
    a = pd.Series(0.01, index=_dates("crypto", 10, "2024-01-01"))
    b = pd.Series(0.01, index=_dates("equities", 10, "2024-06-03"))
    with pytest.raises(GateError) as exc:
        aggregate_streams({"early": a, "late": b})
    msg = str(exc.value)
    assert "early" in msg and "late" in msg and "2024-01-01" in msg and "2024-06-03" in msg


def test_annualization_of_the_joined_stream():
    crypto = pd.Series(0.01, index=_dates("crypto", 21))
    equity = pd.Series(0.01, index=_dates("equities", 15))
    assert infer_annualization(aggregate_streams({"c": crypto, "e": equity})[0].index) == 252
    assert infer_annualization(aggregate_streams({"c": crypto, "d": crypto * 2})[0].index) == 365


# ------------------------------------------------------------------------------ weights

def _frame(vols, n=300, seed=0, calendar="equities"):
    rng = np.random.default_rng(seed)
    return pd.DataFrame(rng.normal(0, 1, (n, len(vols))) * np.asarray(vols), index=_dates(calendar, n),
                        columns=[f"s{i}" for i in range(len(vols))])


def test_meta_weights_risk_parity_equal_risk_contributions():
    r = _frame([0.01, 0.02, 0.03])
    w = meta_weights(r, "risk_parity")
    assert abs(w.sum() - 1) < 1e-12 and (w >= 0.05).all() and (w <= 0.95).all()
    cov, _ = ledoit_wolf(r.to_numpy())
    rc = w.to_numpy() * (cov @ w.to_numpy())
    assert (rc.max() - rc.min()) / rc.mean() < 1e-6
    assert w["s0"] > w["s1"] > w["s2"]            # lower vol -> more weight


@pytest.mark.parametrize("method", ["hrp", "min_variance"])
def test_meta_weights_bounds_bind_for_a_very_low_vol_sleeve(method):
    r = _frame([0.00001, 0.01, 0.01])
    w = meta_weights(r, method, min_weight=0.05, max_weight=0.95)
    np.testing.assert_allclose(w.to_numpy(), [0.90, 0.05, 0.05], atol=1e-12)
    assert abs(w.sum() - 1) < 1e-12


def test_meta_weights_risk_parity_max_bound_binds():
    r = _frame([0.0001, 0.01])
    free = meta_weights(r, "risk_parity", 0.0, 1.0)
    assert free["s0"] > 0.85
    w = meta_weights(r, "risk_parity", 0.05, 0.8)
    np.testing.assert_allclose(w.to_numpy(), [0.8, 0.2], atol=1e-12)


def test_bound_weights_proportional_projection_and_infeasible():
    w = bound_weights(pd.Series([0.5, 0.3, 0.17, 0.03]), 0.05, 0.45)
    assert abs(w.sum() - 1) < 1e-12 and w.min() >= 0.05 - 1e-12 and w.max() <= 0.45 + 1e-12
    assert w[0] == pytest.approx(0.45) and w[3] == pytest.approx(0.05)
    assert w[1] / w[2] == pytest.approx(0.3 / 0.17)          # free weights keep their ratio
    with pytest.raises(ValueError, match="infeasible"):
        meta_weights(_frame([0.01] * 3), min_weight=0.4)
    with pytest.raises(ValueError, match="method"):
        meta_weights(_frame([0.01] * 3), method="max_sharpe")


def test_meta_weights_single_sleeve():
    w = meta_weights(_frame([0.01]))
    assert w.to_dict() == {"s0": 1.0}


# ------------------------------------------------------------------------------ walk-forward

def test_walk_forward_hand_check_equal_weights():
    idx = _dates("equities", 7)
    r = pd.DataFrame({"a": [0.01, -0.02, 0.03, 0.04, -0.01, 0.02, 0.05],
                      "b": [0.00, 0.01, -0.01, 0.02, 0.03, -0.04, 0.01]}, index=idx)
    stream, hist = walk_forward_meta(r, "risk_parity", 0.5, 0.5, train_days=3, test_days=2)
    expected = 0.5 * (r["a"] + r["b"]).iloc[3:]
    pd.testing.assert_series_equal(stream, expected.rename("meta"))
    assert list(hist.index) == [idx[3], idx[5]]
    assert (hist == 0.5).all().all()


def test_walk_forward_uses_trailing_window_weights():
    r = _frame([0.005, 0.01, 0.02], n=120, seed=5)
    stream, hist = walk_forward_meta(r, "risk_parity", 0.05, 0.95, train_days=40, test_days=25)
    assert len(stream) == 80 and stream.index[0] == r.index[40] and stream.name == "meta"
    assert list(hist.index) == [r.index[t] for t in (40, 65, 90, 115)]
    for k, t in enumerate((40, 65, 90, 115)):
        w = meta_weights(r.iloc[t - 40:t], "risk_parity", 0.05, 0.95)
        pd.testing.assert_series_equal(hist.iloc[k], w, check_names=False)
        day = r.index[t]
        assert stream[day] == pytest.approx(float(r.loc[day] @ w))


def test_walk_forward_no_look_ahead():
    r = _frame([0.005, 0.01, 0.02], n=150, seed=6)
    stream, _ = walk_forward_meta(r, "risk_parity", 0.05, 0.95, train_days=50, test_days=10)
    cut = r.index[87]
    perturbed = r.copy()
    later = perturbed.index > cut
    perturbed.loc[later] = np.random.default_rng(9).normal(0, 0.2, (int(later.sum()), 3))
    stream2, _ = walk_forward_meta(perturbed, "risk_parity", 0.05, 0.95, train_days=50, test_days=10)
    pd.testing.assert_series_equal(stream.loc[:cut], stream2.loc[:cut])
    assert not np.allclose(stream.loc[stream.index > cut], stream2.loc[stream2.index > cut])


def test_walk_forward_too_short():
    with pytest.raises(ValueError, match="train_days"):
        walk_forward_meta(_frame([0.01, 0.02], n=30), "risk_parity", 0.05, 0.95, train_days=30, test_days=5)


# ------------------------------------------------------------------------------ flattening

def test_flatten_meta_conserves_net_and_keeps_short_signs():
    books = {
        "long": pd.DataFrame({"symbol": ["BTC", "ETH"], "net_weight": [0.6, 0.4]}),
        "short": pd.DataFrame({"symbol": ["ETH", "DOGE"], "net_weight": [-0.5, -0.5]}),
    }
    w = pd.Series({"long": 0.4, "short": 0.6})
    flat = flatten_meta(w, books).set_index("symbol")
    assert list(flat.columns) == ["net_weight", "gross_weight", "contributors"]
    total = sum(w[s] * books[s]["net_weight"].sum() for s in books)
    assert flat["net_weight"].sum() == pytest.approx(total)              # = 0.4*1 - 0.6*1 = -0.2
    assert flat.loc["DOGE", "net_weight"] == pytest.approx(-0.30)        # only in SHORT sleeve: negative
    assert flat.loc["BTC", "net_weight"] == pytest.approx(0.24)
    assert flat.loc["ETH", "net_weight"] == pytest.approx(0.16 - 0.30)   # long & short net out
    assert flat.loc["ETH", "gross_weight"] == pytest.approx(0.16 + 0.30)
    assert flat.loc["ETH", "contributors"] == "long:+0.1600, short:-0.3000"
    exp = exposures(flat.reset_index())
    assert exp["n_long"] == 1 and exp["n_short"] == 2
    assert exp["long"] == pytest.approx(0.24) and exp["short"] == pytest.approx(-0.44)
    assert exp["net"] == pytest.approx(-0.2) and exp["gross"] == pytest.approx(0.68)


def test_flatten_meta_exact_offset_and_mismatch(tmp_path, pair):
    books = {"a": pd.DataFrame({"symbol": ["X"], "net_weight": [0.5]}),
             "b": pd.DataFrame({"symbol": ["X"], "net_weight": [-0.5]})}
    flat = flatten_meta(pd.Series({"a": 0.5, "b": 0.5}), books)
    assert flat.loc[0, "net_weight"] == pytest.approx(0.0) and flat.loc[0, "gross_weight"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="no book"):
        flatten_meta(pd.Series({"a": 0.5, "c": 0.5}), books)
    # books read from run dirs: one risk profile, SHORT sleeve negative
    loaded = load_books(pair, "hrp")
    assert (loaded["crypto_short"]["net_weight"] < 0).all() and len(loaded["crypto_long"]) == 2
    flat = flatten_meta(pd.Series({"crypto_long": 0.5, "crypto_short": 0.5}), loaded)
    assert flat["net_weight"].abs().max() == pytest.approx(0.0)        # identical books, opposite signs


def test_physical_cap_check():
    flat = pd.DataFrame({"symbol": ["A", "B", "C"], "net_weight": [0.3, -0.5, 0.1]})
    res = physical_cap_check(flat, 0.25)
    assert res["passed"] is False and res["cap"] == 0.25
    assert res["breaches"] == [{"symbol": "B", "net_weight": -0.5}, {"symbol": "A", "net_weight": 0.3}]
    assert physical_cap_check(flat, 0.5)["passed"] is True


# ------------------------------------------------------------------------------ report

def _good_sections() -> dict:
    return {name: {"passed": True, "body": f"content of {name}"} for name in REQUIRED_SECTIONS}


def _header(md: str, name: str) -> str:
    return next(line for line in md.splitlines() if line.startswith(f"## {name}"))


def test_render_report_pass_and_every_section_labelled():
    md, ok = render_report(_good_sections(), multi_sleeve=True, n_sleeves=2)
    assert ok is True and "Status: PASS" in md and "Status: FAIL" not in md
    for name in REQUIRED_SECTIONS:
        assert _header(md, name).endswith("PASS")


@pytest.mark.parametrize("case", ["missing", "empty", "failed", "none", "one_sleeve"])
def test_render_report_fail_cases(case):
    sections = _good_sections()
    n = 2
    if case == "missing":
        del sections["Sign tests"]
    elif case == "empty":
        sections["Sleeve completeness"]["body"] = "   \n"
    elif case == "failed":
        sections["Flattened book"]["passed"] = False
    elif case == "none":
        sections["Allocation"]["passed"] = None
    else:
        n = 1
    md, ok = render_report(sections, multi_sleeve=True, n_sleeves=n)
    assert ok is False and "Status: FAIL" in md and "Status: PASS" not in md
    bad = {"missing": "Sign tests", "empty": "Sleeve completeness", "failed": "Flattened book",
           "none": "Allocation"}.get(case)
    for name in REQUIRED_SECTIONS:
        line = _header(md, name)
        assert line.endswith("FAIL" if name == bad else "PASS"), line
    if case == "one_sleeve":
        assert "1 sleeve" in md
        assert render_report(sections, multi_sleeve=False, n_sleeves=1)[1] is True


def test_report_sections_end_to_end(pair, tmp_path):
    comp = completeness_gate(pair, "hrp")
    signs = sign_test_gate(pair)
    joined, agg = aggregate_streams(load_streams(pair, "hrp"))
    w = meta_weights(joined)
    oos, hist = walk_forward_meta(joined, "risk_parity", 0.05, 0.95, train_days=60, test_days=20)
    flat = flatten_meta(w, load_books(pair, "hrp"))
    sections = report_sections(completeness=comp, sign_tests=signs, weights=w,
                               allocation={"method": "risk_parity", "min_weight": 0.05, "max_weight": 0.95},
                               aggregation=agg, sleeve_returns=joined, oos=oos, weights_history=hist,
                               flat=flat, cap_check=physical_cap_check(flat, 0.5))
    assert set(sections) == set(REQUIRED_SECTIONS)
    md, ok = render_report(sections, multi_sleeve=True, n_sleeves=2)
    assert ok is True, md
    assert "out-of-sample" in md.lower()
    allocation = sections["Allocation"]["body"]
    assert "inner join" not in allocation.lower() and "dropped" not in allocation.lower()
    assert "compounded into its next common date" in allocation and "| folded |" in allocation
    # a degraded run: gate failed, nothing downstream computed -> FAIL sections, FAIL report
    bad = report_sections(completeness=completeness_gate(pair[:1], "hrp"), sign_tests=signs)
    md, ok = render_report(bad, multi_sleeve=True, n_sleeves=1)
    assert ok is False
    assert _header(md, "Sleeve completeness").endswith("FAIL") and _header(md, "Sign tests").endswith("PASS")
    assert _header(md, "Performance").endswith("FAIL")


# ------------------------------------------------------------------------------ enums and the report's verdict

def test_meta_weights_takes_the_meta_method_enum_or_its_value():
    r = _frame([0.005, 0.01, 0.02])
    for method in MetaMethod:
        pd.testing.assert_series_equal(meta_weights(r, method), meta_weights(r, method.value), check_exact=True)
    with pytest.raises(ValueError, match="use one of risk_parity, hrp, min_variance"):
        meta_weights(r, "equal_weight")
    stream, _ = walk_forward_meta(r, MetaMethod.RISK_PARITY, 0.05, 0.95, train_days=100, test_days=50)
    pd.testing.assert_series_equal(stream, walk_forward_meta(r, "risk_parity", 0.05, 0.95, 100, 50)[0])


def test_report_gate_has_a_check_per_section_and_the_sleeve_counts():
    sections = _good_sections()
    gate = report_gate(sections, multi_sleeve=True, n_sleeves=2, info={"run_id": "r1"})
    doc = gate.to_dict()
    assert doc["gate"] == "meta_report" and doc["passed"] is True
    assert [(c["code"], c["subject"]) for c in doc["checks"]] == [("SECTION", n) for n in REQUIRED_SECTIONS] + [
        ("HAS_SLEEVES", None), ("SLEEVE_COUNT", None)]
    assert doc["info"] == {"run_id": "r1", "sections": {n: True for n in REQUIRED_SECTIONS}}
    sections["Performance"]["passed"] = False
    del sections["Sign tests"]
    failed = report_gate(sections, multi_sleeve=True, n_sleeves=1)
    assert failed.passed is False
    assert [(c.code, c.subject, c.detail) for c in failed.failed] == [
        ("SECTION", "Sign tests", "is missing"),
        ("SECTION", "Performance", "did not pass (passed=False)"),
        ("SLEEVE_COUNT", None, "multi-sleeve profile left with 1 sleeve(s) (< 2); declare single_sleeve: true "
                               "for a one-sleeve meta")]
    md, ok = render_report(sections, multi_sleeve=True, n_sleeves=1)
    assert ok is False and md.split("Failures:\n")[1].split("\n\n")[0].splitlines() == [
        "- section 'Sign tests' is missing", "- section 'Performance' did not pass (passed=False)",
        "- multi-sleeve profile left with 1 sleeve(s) (< 2); declare single_sleeve: true for a one-sleeve meta"]
    assert report_gate(_good_sections(), multi_sleeve=False, n_sleeves=0).check("HAS_SLEEVES").passed is False


def test_report_shows_gate_checks_by_sleeve(pair):
    sections = report_sections(completeness=completeness_gate(pair[:1], "hrp"), sign_tests=sign_test_gate(pair))
    body = sections["Sleeve completeness"]["body"]
    assert body.splitlines()[0] == "| sleeve | code | passed | detail |"
    assert "| crypto_long | HAS_RUN | PASS | run_id crypto_long-20240101T000000-abcd |" in body
    assert "| (meta) | SLEEVE_COUNT | FAIL | 1 sleeve(s); a multi-sleeve meta needs >= 2" in body
    assert sections["Sleeve completeness"]["passed"] is False and sections["Sign tests"]["passed"] is True


# ------------------------------------------------------------------------------ the meta stages on fake sleeve runs

def _meta_run(tmp_path: Path, refs: list[SleeveRef], env: dict | None = None):
    from conftest import ROOT

    from quantlib.core.profiles import load_profile
    from quantlib.core.runs import Run
    from quantlib.engine.context import StageContext

    resolved = load_profile("demo_meta", env={"FW_META__ALLOCATION": "{train_days: 60, test_days: 20}", **(env or {})})
    run = Run.create(tmp_path / "runs", resolved, "meta", ROOT)

    def ctx(stage: str) -> StageContext:
        return StageContext(run=run, phase="meta", stage=registry.find_stage("meta", stage)[1])

    ctx("sleeves").write("sleeves", {"run_id": run.id, "executor": "local", "ray_address": None, "ray_logs": None,
                                     "sleeves": [{"id": r.id, "kind": r.kind, "profile": r.id, "run_id": r.id,
                                                  "run_dir": str(r.run_dir), "status": "PASS"} for r in refs]})
    return run, ctx


def _five(prefix: str) -> dict:
    return {f"{prefix}{i}": 0.2 for i in range(5)}


@pytest.fixture
def trio(tmp_path):
    return [make_sleeve(tmp_path, "crypto_long", seed=1, n=160, book=_five("L")),
            make_sleeve(tmp_path, "crypto_short", seed=2, n=160, direction="SHORT", book=_five("S")),
            make_sleeve(tmp_path, "equities", seed=3, n=110, calendar="equities", book=_five("E"), gate_shape="gate")]


def test_meta_stages_write_their_artifacts_by_name(tmp_path, trio):
    from quantlib.stages import meta as stages

    run, ctx = _meta_run(tmp_path, trio)
    gates = stages.gates(ctx("gates"))
    for name, doc in (("meta_sign_test_gate", gates["sign_tests"]), ("completeness", gates["completeness"])):
        on_disk = json.loads(run.path(registry.path("meta", name)).read_text())
        assert on_disk == doc and on_disk["gate"] == name and on_disk["passed"] is True
        assert {c["subject"] for c in on_disk["checks"]} >= {"crypto_long", "crypto_short", "equities"}

    out = stages.allocate(ctx("allocate"))
    streams = load_streams(trio, "hrp")
    matrix, agg = aggregate_streams(streams)
    pd.testing.assert_frame_equal(out["matrix"], matrix)
    # 22 weeks Mon 1 Jan .. Fri 31 May: 21 weekends folded into Mondays, Sat 1 .. Sat 8 June pending
    assert len(matrix) == 110 and agg["rows_folded"]["crypto_long"] == 42 and agg["rows_pending"]["crypto_long"] == 8
    expected = meta_weights(matrix, "risk_parity", 0.05, 0.95)
    saved = pd.read_parquet(run.path(registry.path("meta", "meta_weights")))["weight"]
    pd.testing.assert_series_equal(saved, expected, check_names=False)
    assert saved.sum() == pytest.approx(1.0)
    oos = pd.read_parquet(run.path(registry.path("meta", "meta_returns")))["meta"]
    assert len(oos) == 50 and oos.index[0] == matrix.index[60]
    day = matrix.index[60]
    first = meta_weights(matrix.iloc[:60], "risk_parity", 0.05, 0.95)
    assert oos[day] == pytest.approx(float(matrix.loc[day] @ first), abs=1e-15)
    aggregation = json.loads(run.path(registry.path("meta", "aggregation")).read_text())
    assert aggregation["allocation"]["method"] == "risk_parity" and aggregation["rows_joined"] == 110

    flat = stages.flatten(ctx("flatten"))["flat"].set_index("symbol")
    # disjoint books: each physical weight is meta weight x sleeve weight, the SHORT sleeve negative
    assert flat.loc["L0", "net_weight"] == pytest.approx(0.2 * saved["crypto_long"], abs=1e-15)
    assert flat.loc["S3", "net_weight"] == pytest.approx(-0.2 * saved["crypto_short"], abs=1e-15)
    assert flat["net_weight"].sum() == pytest.approx(saved["crypto_long"] - saved["crypto_short"] + saved["equities"])

    result = stages.report(ctx("report"))
    assert result["passed"] is True
    verdict = json.loads(run.path(registry.path("meta", "meta_report")).read_text())
    assert verdict["gate"] == "meta_report" and verdict["passed"] is True
    assert verdict["info"] == {"run_id": run.id, "sections": {n: True for n in REQUIRED_SECTIONS}}
    text = run.path(registry.path("meta", "meta_report_md")).read_text()
    assert text == result["text"] and "Status: PASS" in text and f"Run: {run.id}" in text


def test_meta_gates_stage_enforces_with_the_failed_checks_and_the_fix(tmp_path, trio):
    from quantlib.stages import meta as stages

    broken = make_sleeve(tmp_path, "broken", sign_pre=False, gate_shape="gate")
    run, ctx = _meta_run(tmp_path, trio + [broken])
    with pytest.raises(GateError) as exc:
        stages.gates(ctx("gates"))
    msg = str(exc.value)
    assert msg.startswith("meta_sign_test_gate failed: SIGN_TEST_PRE:broken: ")
    assert "fix or re-run the named sleeves" in msg and "features.directional_sign_test_gate" in msg
    saved = json.loads(run.path(registry.path("meta", "meta_sign_test_gate")).read_text())
    assert saved["passed"] is False and _failed(saved) == {("broken", "SIGN_TEST_PRE")}


def test_meta_report_stage_fails_on_a_physical_cap_breach(tmp_path, trio):
    from quantlib.stages import meta as stages

    run, ctx = _meta_run(tmp_path, trio, env={"FW_META__PHYSICAL_CAP": "0.01"})
    stages.gates(ctx("gates"))
    stages.allocate(ctx("allocate"))
    assert stages.flatten(ctx("flatten"))["cap_check"]["passed"] is False
    with pytest.raises(GateError, match=r"meta_report gate failed: SECTION:Flattened book: did not pass "
                                        r"\(passed=False\); see .*meta_portfolio_report\.md"):
        stages.report(ctx("report"))
    verdict = json.loads(run.path(registry.path("meta", "meta_report")).read_text())
    assert verdict["passed"] is False and verdict["info"]["sections"]["Flattened book"] is False
    assert [(c["subject"], c["passed"]) for c in verdict["checks"] if not c["passed"]] == [("Flattened book", False)]


def test_fanout_specs_carry_the_run_options_and_pinned_runs_are_read_in_place(tmp_path):
    from conftest import ROOT

    from quantlib.core.profiles import load_profile
    from quantlib.core.runs import Run, RunOptions
    from quantlib.engine import fanout

    runs = tmp_path / "runs"
    pinned = Run.create(runs, load_profile("demo_crypto_long"), "sleeve", ROOT)
    pinned.manifest["status"] = "PASS"
    pinned.save()
    sleeves = f"[{{id: a, profile: demo_crypto_long, run_id: {pinned.id}}}, {{id: b, profile: demo_crypto_short}}]"
    run = Run.create(runs, load_profile("demo_meta", env={"FW_META__SLEEVES": sleeves}), "meta", ROOT,
                     options=RunOptions(executor="local", depth=1))
    assert (run.options.executor, run.options.ray_address, run.runs_root, run.options.depth) == ("local", None, runs, 1)
    specs, pins = fanout.sleeve_specs(run)
    assert [p["id"] for p in pins] == ["a"] and pins[0]["run_dir"] == str(pinned.dir) and pins[0]["status"] == "PASS"
    assert specs == [{"id": "b", "kind": "sleeve", "profile": "demo_crypto_short", "phase": "sleeve",
                      "runs_dir": str(run.dir / "sleeves"), "run_id": "b", "runs_root": str(runs),
                      "parent_run": run.id, "workspace": str(run.workspace), "overrides": run.resolved.overrides,
                      "depth": 2, "cache": True, "data_runs": None, "lakehouse": str(ROOT.resolve() / "lakehouse"),
                      "code_dir": None, "resources": {}}]
    only_pinned = Run.create(runs, load_profile("demo_meta", env={"FW_META__SLEEVES": sleeves.split(", {id: b")[0] + "]"}),
                             "meta", ROOT, options=RunOptions(executor="local"))
    doc, results = fanout.run_books(only_pinned, print, connect_timeout_s=1)
    assert doc["executor"] == "local" and doc["ray_logs"] is None and doc["sleeves"] == results == pins
    missing = Run.create(runs, load_profile("demo_meta", env={"FW_META__SLEEVES": "[{id: a, profile: demo_crypto_long, "
                                                                                 "run_id: nope-1}]"}), "meta", ROOT)
    with pytest.raises(DataError, match="pinned run 'nope-1' of sleeve 'a' does not exist"):
        fanout.sleeve_specs(missing)


# ------------------------------------------------------------------------------ the tree, before any run

@pytest.mark.parametrize("ids, single, code, message", [
    (["a"], False, "SLEEVE_COUNT", "meta.sleeves lists 1 sleeve; a multi-sleeve meta needs >= 2"),
    (["a", "a"], False, "UNIQUE_IDS", r"duplicated sleeve id\(s\) \['a'\]"),
    (["a", "b"], True, "SLEEVE_COUNT", "meta.single_sleeve is true but meta.sleeves lists 2"),
])
def test_meta_tree_refuses_what_the_completeness_gate_would(ids, single, code, message):
    sleeves = "[" + ", ".join(f"{{id: {i}, profile: demo_crypto_long}}" for i in ids) + "]"
    env = {"FW_META__SLEEVES": sleeves, "FW_META__SINGLE_SLEEVE": str(single).lower()}
    with pytest.raises(ProfileError, match=f"meta profile 'demo_meta_pair': {message}"):
        check_meta_tree("demo_meta_pair", env=env)
    gate = completeness_gate([SleeveRef(i, None) for i in ids], "hrp", single_sleeve=single)
    assert not _check(gate, code, None)["passed"]  # the same rule the gate applies after the sleeves ran


def test_meta_tree_accepts_a_declared_single_sleeve_and_checks_nested_metas(tmp_path):
    from quantlib.core.profiles import default_profiles_dir

    assert check_meta_tree("demo_meta_pair") == 1 and check_meta_tree("demo_meta_nested") == 2
    assert check_meta_tree("demo_meta_pair", env={"FW_META__SLEEVES": "[{id: a, profile: demo_crypto_long}]",
                                                  "FW_META__SINGLE_SLEEVE": "true"}) == 1
    for name in ("base", "demo_crypto_long", "binance_spot_rating_all_long"):
        (tmp_path / f"{name}.yaml").write_text((default_profiles_dir() / f"{name}.yaml").read_text())
    (tmp_path / "inner.yaml").write_text("meta:\n  sleeves:\n    - {id: x, profile: demo_crypto_long}\n")
    (tmp_path / "outer.yaml").write_text("meta:\n  sleeves:\n    - {id: i, meta_profile: inner}\n"
                                         "    - {id: y, profile: demo_crypto_long}\n")
    with pytest.raises(ProfileError, match="meta profile 'inner': meta.sleeves lists 1 sleeve"):
        check_meta_tree("outer", profiles_dir=tmp_path)


# ------------------------------------------------------------------------------ the data runs a meta pins

def _data_run(runs: Path, run_id: str, created_at: str, scanners: tuple[str, ...]) -> None:
    _write_json(runs / run_id / MANIFEST, {"run_id": run_id, "profile": "demo", "phase": "data", "status": "PASS",
                                           "created_at": created_at, "stages": {}})
    for scanner in scanners:
        _write_json(runs / run_id / registry.path("data", "export", scanner=scanner), {"candidates": []})


def test_a_meta_pins_its_data_runs_at_start_and_every_sleeve_reads_them_whatever_passes_later(tmp_path, monkeypatch):
    from conftest import ROOT

    from quantlib.core.profiles import load_profile
    from quantlib.core.runs import Run, RunOptions, locate_data_run
    from quantlib.engine import fanout
    from quantlib.meta.tree import pin_data_runs

    runs = tmp_path / "runs"
    both = ("rating_all_long", "rating_all_short")
    _data_run(runs, "d-old", "2026-01-01T00:00:00+00:00", both)
    _data_run(runs, "d-long-only", "2026-01-02T00:00:00+00:00", ("rating_all_long",))
    _data_run(runs, "d-failed", "2026-01-03T00:00:00+00:00", both)
    failed = storage.read_json(runs / "d-failed" / MANIFEST)
    storage.write_json(runs / "d-failed" / MANIFEST, {**failed, "status": "FAIL"})
    # each sleeve's own pick: the newest PASS data run exporting its scanners
    assert pin_data_runs("demo_meta_pair", runs) == ("d-long-only", "d-old")
    meta = Run.create(runs, load_profile("demo_meta_pair"), "meta", ROOT,
                      options=RunOptions(executor="local", data_runs=pin_data_runs("demo_meta_pair", runs)))
    assert storage.read_json(meta.dir / MANIFEST)["options"]["data_runs"] == ["d-long-only", "d-old"]

    _data_run(runs, "d-new", "2026-02-01T00:00:00+00:00", both)  # a data run passes while the meta runs
    specs, _ = fanout.sleeve_specs(meta)
    assert [s["data_runs"] for s in specs] == [("d-long-only", "d-old")] * 2
    read = {}

    def fake_phase(run, phase, say=print, skip=None):  # what the aggregate stage asks for (stages.sleeve)
        read[run.id] = locate_data_run(run.runs_root, run.profile.sleeve.scanners, run.profile.sleeve.data_run_id,
                                       among=run.options.data_runs).id
        run.manifest["status"] = "PASS"
        run.save()
        return True

    monkeypatch.setattr(fanout, "run_phase", fake_phase)
    results = [fanout.run_spec(spec) for spec in specs]
    assert [r["status"] for r in results] == ["PASS", "PASS"]
    assert read == {"crypto_long": "d-long-only", "crypto_short": "d-old"}  # not d-new, which is newer
    for spec in specs:
        assert Run.open(Path(spec["runs_dir"]), spec["run_id"]).options.data_runs == ("d-long-only", "d-old")
    assert locate_data_run(runs, list(both), None).id == "d-new"  # unpinned, the newest would be read
    with pytest.raises(DataError, match=r"none of the data runs its meta pinned .*\(d-long-only\) .*start a new meta run"):
        locate_data_run(runs, ["rating_all_short"], None, among=("d-long-only",))


def test_a_meta_whose_sleeve_has_no_data_run_is_refused_before_any_run(tmp_path):
    from quantlib.meta.tree import pin_data_runs

    with pytest.raises(DataError, match=r"meta demo_meta_pair: sleeve 'crypto_long' \(demo_crypto_long\) has no data "
                                        r"run to read: no passed data run under .* exports \['rating_all_long'\]"):
        pin_data_runs("demo_meta_pair", tmp_path / "runs")
    pinned = "[{id: a, profile: demo_crypto_long, run_id: a-1}, {id: b, profile: demo_crypto_long, run_id: b-1}]"
    assert pin_data_runs("demo_meta_pair", tmp_path / "runs", env={"FW_META__SLEEVES": pinned}) == ()  # pinned sleeves read none
