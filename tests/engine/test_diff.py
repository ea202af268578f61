"""`run_book.py diff`: controlled differences in copies of real runs, with the diff each must produce.

Every test copies a finished run (the session's sleeve fixtures) into `tmp_path`, edits one artifact
in a known way and checks that exactly that difference is reported (value, delta, ranking), and
nothing else. A meta run is assembled from copies of the two sleeve fixtures.
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from quantlib.cli import main
from quantlib.core import storage
from quantlib.core.figures import plotly_js
from quantlib.core.gates import Check, GateResult
from quantlib.core.profiles import load_profile
from quantlib.core.runs import Run
from quantlib.engine.diff import Change, WeightChange, diff_runs
from quantlib.engine.diff_report import default_html_path, render_text

REFUSED = ("cannot be diffed: diff two sleeve runs, two meta runs, or a meta's sleeve with a sleeve run")


def _copy(run: Run, dest: Path) -> Run:
    """A copy of `run` at `dest/<run id>` (same manifest: same data run and inputs)."""
    target = dest / run.dir.name
    shutil.copytree(run.dir, target, ignore=shutil.ignore_patterns("notebooks"))
    return Run.at(target)


def _diff(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["diff", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def long_run(long_sleeve) -> Run:
    result, run = long_sleeve
    assert result.returncode == 0, result.stdout + result.stderr
    return run


@pytest.fixture
def short_run(short_sleeve) -> Run:
    result, run = short_sleeve
    assert result.returncode == 0, result.stdout + result.stderr
    return run


def _files(run: Run) -> dict[str, str]:
    return {str(p.relative_to(run.dir)): storage.sha256_file(p) for p in sorted(run.dir.rglob("*")) if p.is_file()}


def _help(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as exit_:
        main([*argv, "--help"])
    assert exit_.value.code == 0
    return capsys.readouterr().out


def test_help_names_the_sections_options_and_exit_codes(capsys):
    out = _help(capsys, "diff")
    assert out.startswith("usage: run_book.py diff")
    for phrase in ("RUN_A", "RUN_B", "--top", "--html", "--no-html", "sleeves/<id>", "profile", "gate",
                   "weights", "correlation", "Exit 0 when nothing differs, 1 when something does, 2 on bad input"):
        assert phrase in " ".join(out.split()), phrase
    assert "\n    diff " in _help(capsys)


# ------------------------------------------------------------------------------------ identical
def test_identical_runs_exit_0_and_write_nothing_into_them(long_run, tmp_path, capsys):
    copy = _copy(long_run, tmp_path / "b")
    before = _files(long_run), _files(copy)
    page = tmp_path / "page" / "diff.html"
    code, out, _ = _diff(capsys, str(long_run.dir), str(copy.dir), "--html", str(page))
    assert code == 0, out
    assert "\nno difference (profile, data inputs, gates, weights, metrics, returns)\n" in out
    assert "Profile (profile.resolved.yaml): same" in out and "Data inputs: same" in out
    assert (_files(long_run), _files(copy)) == before  # diff only reads
    text = page.read_text(encoding="utf-8")
    assert out.rstrip().endswith(f"html: {page}")
    assert text.count('class="plotly-graph-div"') == 1  # no weight changed: the equity curves only
    assert "<script src" not in text and text.count(plotly_js()) == 1  # offline: plotly.js embedded once


def test_html_refused_inside_a_run_and_default_outside(long_run, tmp_path, capsys, monkeypatch):
    copy = _copy(long_run, tmp_path / "b")
    code, out, err = _diff(capsys, str(long_run.dir), str(copy.dir), "--html", str(copy.dir / "diff.html"))
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1 and "inside run" in err
    assert not (copy.dir / "diff.html").exists()
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "tmp"))
    path = default_html_path(diff_runs(long_run, copy))
    assert path.parent == tmp_path / "tmp" / "fractal-workbook-diff"
    assert path.name == f"{long_run.id}__vs__{copy.id}.html"


# ------------------------------------------------------------------------------------ weights
def test_changed_added_and_removed_weights_are_ranked_with_exact_deltas(long_run, tmp_path, capsys):
    copy = _copy(long_run, tmp_path / "b")
    weights = pd.read_parquet(copy.dir / "artifacts/weights.parquet")
    hrp = weights[weights["profile"] == "hrp"].sort_values("weight", ascending=False)
    big, small = hrp["atom_id"].iloc[0], hrp["atom_id"].iloc[-1]
    w_big, w_small = float(hrp["weight"].iloc[0]), float(hrp["weight"].iloc[-1])
    weights.loc[(weights["profile"] == "hrp") & (weights["atom_id"] == big), "weight"] = w_big + 0.07
    weights.loc[(weights["profile"] == "hrp") & (weights["atom_id"] == small), "weight"] = w_small - 0.03
    storage.write_parquet(copy.dir / "artifacts/weights.parquet", weights)
    flat = pd.read_parquet(copy.dir / "artifacts/flattened.parquet")
    hrp_flat = flat[flat["profile"] == "hrp"]
    gone = hrp_flat.sort_values("symbol")["symbol"].iloc[0]
    w_gone = float(hrp_flat.loc[hrp_flat["symbol"] == gone, "net_weight"].iloc[0])
    flat = flat[~((flat["profile"] == "hrp") & (flat["symbol"] == gone))]
    new = pd.DataFrame([{"profile": "hrp", "symbol": "BINANCE:NEWUSDT", "net_weight": 0.005, "gross_weight": 0.005}])
    storage.write_parquet(copy.dir / "artifacts/flattened.parquet", pd.concat([flat, new], ignore_index=True))

    d = diff_runs(long_run, copy)
    assert d.differing_sections() == ["weights"]
    tables = {w.title: w for w in d.weights}
    assert tables["hrp · atoms"].rows == [WeightChange(big, w_big, w_big + 0.07), WeightChange(small, w_small, w_small - 0.03)]
    assert [r.status for r in tables["hrp · atoms"].rows] == ["changed", "changed"]
    names = tables["hrp · physical names"].rows
    expected = sorted([WeightChange(gone, w_gone, None), WeightChange("BINANCE:NEWUSDT", None, 0.005)],
                      key=lambda r: -abs(r.delta))
    assert names == expected and {r.name: r.status for r in names} == {gone: "removed", "BINANCE:NEWUSDT": "added"}
    assert all(not w.rows for t, w in tables.items() if not t.startswith("hrp"))

    code, out, _ = _diff(capsys, str(long_run.dir), str(copy.dir), "--no-html", "--top", "1")
    assert code == 1 and out.rstrip().endswith("DIFFERENT: weights")
    assert re.search(rf"^ +1 +{re.escape(big)} +{w_big:.6f} +{w_big + 0.07:.6f} +\+0\.070000 +changed$", out, re.MULTILINE)
    assert "hrp · atoms (artifacts/weights.parquet): 2 changed, 0 added, 0 removed" in out
    assert "    ... and 1 more" in out  # --top 1: the second atom is not listed
    assert re.search(rf"^ +1 +{re.escape(small)} ", out, re.MULTILINE) is None


# ------------------------------------------------------------------------------------ profile, gates
def test_profile_key_and_gate_flip(long_run, tmp_path, capsys):
    copy = _copy(long_run, tmp_path / "b")
    doc = yaml.safe_load((copy.dir / "profile.resolved.yaml").read_text())
    assert doc["profile"]["optimizer"]["atom_cap"] == 0.25
    doc["profile"]["optimizer"]["atom_cap"] = 0.2
    storage.write_text(copy.dir / "profile.resolved.yaml", yaml.safe_dump(doc, sort_keys=False))
    audit = GateResult.from_dict(storage.read_json(copy.dir / "artifacts/audit.json"))
    assert audit.passed
    flipped = [Check(c.code, False, "edited", c.required, c.subject) if c.label() == "STABLE_SUM:hrp" else c
               for c in audit.checks]
    storage.write_json(copy.dir / "artifacts/audit.json", GateResult("audit", tuple(flipped), audit.info).to_dict())

    d = diff_runs(long_run, copy)
    assert d.differing_sections() == ["profile", "gates"]
    assert d.profile == [Change("optimizer.atom_cap", 0.25, 0.2)]
    gates = {g.gate: g for g in d.gates}
    assert (gates["audit"].a, gates["audit"].b) == ("PASS", "FAIL")
    assert gates["audit"].checks == [Change("STABLE_SUM:hrp", "pass", "fail")]
    assert not any(g.differs for name, g in gates.items() if name != "audit")

    code, out, _ = _diff(capsys, str(long_run.dir), str(copy.dir), "--no-html")
    assert code == 1
    assert re.search(r"^  optimizer\.atom_cap  0\.25  →  0\.2$", out, re.MULTILINE)
    assert re.search(r"^  audit +PASS +FAIL +\*$", out, re.MULTILINE)
    assert re.search(r"^    STABLE_SUM:hrp +pass +fail +→$", out, re.MULTILINE)
    assert "Gates: 1 verdict changed, 1 check changed outcome" in out


# ------------------------------------------------------------------------------------ returns
def test_correlation_on_common_dates_matches_pandas(long_run, tmp_path):
    copy = _copy(long_run, tmp_path / "b")
    a = pd.read_parquet(long_run.dir / "backtest/returns.parquet")
    noise = np.random.default_rng(3).normal(0, 0.01, len(a))
    b = a.assign(hrp=a["hrp"] * 0.5 + noise).iloc[15:]
    storage.write_parquet(copy.dir / "backtest/returns.parquet", b)

    d = diff_runs(long_run, copy)
    assert d.differing_sections() == ["returns"]  # the metrics artifact was left as it was
    corr = {c.stream: c for c in d.correlations}
    joined = pd.concat([a["hrp"], b["hrp"]], axis=1, join="inner").dropna()
    assert corr["hrp"].n_common == len(joined) == len(a) - 15
    assert corr["hrp"].corr == pytest.approx(joined.corr().iloc[0, 1], rel=1e-12)
    assert 0.3 < corr["hrp"].corr < 0.999
    assert (corr["hrp"].n_a, corr["hrp"].n_b) == (len(a), len(b))
    assert corr["min_variance"].corr == pytest.approx(1.0) and not corr["min_variance"].identical


# ------------------------------------------------------------------------------------ two real sleeves
def test_long_vs_short_sleeve(long_run, short_run):
    d = diff_runs(long_run, short_run)
    assert {"profile", "weights", "metrics", "returns"} <= set(d.differing_sections())
    profile = {c.key: c for c in d.profile}
    assert profile["name"] == Change("name", "demo_crypto_long", "demo_crypto_short")
    hrp = {w.title: w for w in d.weights}["hrp · atoms"]
    wa, wb = (pd.read_parquet(r.dir / "artifacts/weights.parquet") for r in (long_run, short_run))
    wa, wb = (w[(w["profile"] == "hrp") & (w["weight"].abs() > 1e-12)] for w in (wa, wb))
    assert {r.name for r in hrp.rows if r.status == "added"} == set(wb["atom_id"]) - set(wa["atom_id"])
    assert {r.name for r in hrp.rows if r.status == "removed"} == set(wa["atom_id"]) - set(wb["atom_id"])
    assert d.metrics.missing == "B"  # the short sleeve skipped validation
    assert "Out-of-sample metrics (backtest/metrics.parquet): not recorded in B" in render_text(d)
    assert all(c.n_b == 0 and not c.identical for c in d.correlations)


# ------------------------------------------------------------------------------------ bad input
def test_bad_input_exits_2_with_one_line(long_run, first, tmp_path, capsys):
    data = str(first.run.dir)
    for argv, message in [
        ((str(long_run.dir), data), f"error: a sleeve run and a data run {REFUSED}"),
        ((data, data), f"error: two data runs {REFUSED}"),
        (("--no-html", str(long_run.dir), "nope-20260101T000000-abcd"), "error: no run 'nope-20260101T000000-abcd'"),
        ((str(long_run.dir), "../x"), "error: '../x': neither a run directory nor a valid run id"),
        ((str(long_run.dir), str(tmp_path)), f"error: {tmp_path}: a directory but not a run"),
    ]:
        code, out, err = _diff(capsys, *argv)
        assert (code, out) == (2, ""), (argv, out, err)
        assert len(err.strip().splitlines()) == 1 and err.startswith(message), (argv, err)


# ------------------------------------------------------------------------------------ metas
def _meta(dest: Path, long_run: Run, short_run: Run, weights: dict[str, float], run_id: str) -> Run:
    """A meta run of the two sleeve fixtures (copied in as sleeves/crypto_long, sleeves/crypto_short)."""
    meta = dest / run_id
    for sid, run in (("crypto_long", long_run), ("crypto_short", short_run)):
        shutil.copytree(run.dir, meta / "sleeves" / sid, ignore=shutil.ignore_patterns("notebooks"))
        manifest = storage.read_json(meta / "sleeves" / sid / "manifest.json")
        storage.write_json(meta / "sleeves" / sid / "manifest.json", {**manifest, "run_id": sid})
    storage.write_json(meta / "manifest.json", {"run_id": run_id, "profile": "demo_meta_pair", "phase": "meta",
                                                "status": "PASS", "inputs": {"profiles/demo_meta_pair.yaml": "00"}})
    storage.write_text(meta / "profile.resolved.yaml", load_profile("demo_meta_pair").to_yaml())
    w = pd.Series(weights, name="weight").rename_axis("sleeve")
    storage.write_parquet(meta / "artifacts/meta_weights.parquet", w.to_frame())
    flat = pd.concat([pd.read_parquet(r.dir / "artifacts/flattened.parquet").query("profile == 'hrp'")
                      .assign(net_weight=lambda f, s=s: f["net_weight"] * w[s]) for s, r in
                      (("crypto_long", long_run), ("crypto_short", short_run))])
    flat = flat.groupby("symbol", as_index=False)["net_weight"].sum()
    storage.write_parquet(meta / "artifacts/meta_flattened.parquet", flat.assign(gross_weight=flat["net_weight"].abs()))
    returns = pd.read_parquet(long_run.dir / "backtest/returns.parquet")[["hrp"]] * w["crypto_long"]
    storage.write_parquet(meta / "artifacts/meta_returns.parquet", returns.rename(columns={"hrp": "meta"}))
    storage.write_json(meta / "artifacts/aggregation.json", {"annualization": 365})
    gate = GateResult("completeness", (Check("SLEEVES", True, "2 of 2"),))
    storage.write_json(meta / "artifacts/completeness.json", gate.to_dict())
    return Run.at(meta)


def test_meta_diff_with_per_sleeve_lines_and_nested_sleeves(long_run, short_run, tmp_path, capsys):
    a = _meta(tmp_path / "a", long_run, short_run, {"crypto_long": 0.6, "crypto_short": 0.4}, "demo_meta_pair-20260101T000000-aaaa")
    b = _meta(tmp_path / "b", long_run, short_run, {"crypto_long": 0.5, "crypto_short": 0.5}, "demo_meta_pair-20260101T000000-bbbb")
    sleeve_weights = b.dir / "sleeves/crypto_long/artifacts/weights.parquet"
    w = pd.read_parquet(sleeve_weights)
    atom = w.loc[w["profile"] == "hrp", "atom_id"].iloc[0]
    w.loc[(w["profile"] == "hrp") & (w["atom_id"] == atom), "weight"] += 0.01
    storage.write_parquet(sleeve_weights, w)

    d = diff_runs(a, b)
    assert d.phase == "meta"
    sleeves = {w.title: w for w in d.weights}["meta weights · sleeves"]
    assert [(r.name, round(r.delta, 12)) for r in sleeves.rows] == [("crypto_long", -0.1), ("crypto_short", 0.1)]
    assert {m.metric for m in d.metrics.rows} >= {"cagr", "vol", "total_return"}  # computed from meta_returns
    lines = dict(d.sleeves)
    assert lines["crypto_short"].differing_sections() == []
    assert lines["crypto_long"].differing_sections() == ["weights"]
    page = tmp_path / "meta.html"
    code, out, _ = _diff(capsys, str(a.dir), str(b.dir), "--html", str(page))
    assert code == 1
    assert re.search(r"^  crypto_long   DIFFERENT: weights 1 vector \(max \|Δ\| 0\.0100 hrp · atoms\)$", out, re.MULTILINE)
    assert re.search(r"^  crypto_short  no difference$", out, re.MULTILINE)
    assert "Sleeves: 1 of 2 sleeves differ" in out
    assert page.read_text(encoding="utf-8").count('class="plotly-graph-div"') == 3  # 2 weight vectors + equity

    code, out, _ = _diff(capsys, str(a.dir / "sleeves/crypto_long"), str(b.dir / "sleeves/crypto_long"), "--no-html")
    assert code == 1 and f"A  {a.id}/sleeves/crypto_long" in out
    assert re.search(rf"^ +1 +{re.escape(atom)} .* \+0\.010000 +changed$", out, re.MULTILINE)
    code, out, _ = _diff(capsys, str(a.dir / "sleeves/crypto_long"), str(long_run.dir), "--no-html")
    assert code == 0, out  # a meta's sleeve against the sleeve run it was copied from
    code, _, err = _diff(capsys, str(a.dir), str(long_run.dir), "--no-html")
    assert code == 2 and err.strip() == f"error: a meta run and a sleeve run {REFUSED}"
    assert json.loads((a.dir / "manifest.json").read_text())["phase"] == "meta"

    nested = b.dir / "sleeves/crypto_short/manifest.json"  # B's sleeve crypto_short becomes a nested meta
    storage.write_json(nested, {**storage.read_json(nested), "phase": "meta"})
    assert dict(diff_runs(a, b).sleeves)["crypto_short"] == "a sleeve run in A, a meta run in B"
