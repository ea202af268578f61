"""`run_book.py verify` (quantlib.engine.verify): a clean run verifies and nothing is written; a tampered or
deleted artifact, a tampered notebook or gate file and a changed lakehouse file each fail naming the item;
a meta recurses into its sleeve runs. Tampering happens on copies of the session's runs."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import SHORT_ENV
from quantlib.cli import main
from quantlib.core import registry, storage
from quantlib.core.gates import Check, GateResult
from quantlib.core.runs import RESOLVED_PROFILE, Run
from quantlib.engine.verify import Verification
from quantlib.engine.verify_gates import Item, compare_gate, shape_problems
from quantlib.meta.gates import completeness_gate
from quantlib.meta.sleeves import SleeveRef


# ------------------------------------------------------------------------------ helpers

def snapshot(root: Path) -> dict[str, tuple[int, str]]:
    """Every file under `root` with its mtime and sha256 (what "nothing written" compares)."""
    return {p.relative_to(root).as_posix(): (p.stat().st_mtime_ns, storage.sha256_file(p))
            for p in sorted(root.rglob("*")) if p.is_file()}


def verify(run_dir: Path, capsys, *extra: str) -> tuple[int, list[str]]:
    """`run_book.py verify RUN_DIR`: (exit code, output lines)."""
    code = main(["verify", str(run_dir), *extra])
    return code, capsys.readouterr().out.splitlines()


def row(lines: list[str], status: str, item: str, containing: str = "") -> str:
    """The table row of `item` with `status` (and `containing` in it); fails the test when there is none."""
    found = [line for line in lines if line.split()[:2] == [status, item] and containing in line]
    assert found, f"no {status} row for {item} with {containing!r}:\n" + "\n".join(lines)
    return found[0]


@pytest.fixture
def copied(tmp_path, first, long_sleeve) -> Run:
    """A private copy of the long sleeve run, its data run beside it (the exports it read) and the
    lakehouse it read (its resolved profile pointed at the copy), safe to tamper with."""
    _, run = long_sleeve
    runs = tmp_path / "runs"
    shutil.copytree(first.run.dir, runs / first.run.id)
    shutil.copytree(run.dir, runs / run.id)
    lake = shutil.copytree(first.lake, tmp_path / "lakehouse")
    path = runs / run.id / RESOLVED_PROFILE
    doc = yaml.safe_load(path.read_text())
    doc["profile"]["data"]["lakehouse"] = str(lake)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return Run.at(runs / run.id)


# ------------------------------------------------------------------------------ a clean run

def test_a_clean_sleeve_run_verifies_every_file_input_and_gate_and_writes_nothing(long_sleeve, first, capsys):
    _, run = long_sleeve
    before = {d: snapshot(d) for d in (run.dir, first.run.dir)}
    code, lines = verify(run.dir, capsys, "--all")
    assert code == 0, "\n".join(lines)
    assert lines[0].split() == ["status", "item", "detail"]
    assert lines[-1].startswith("VERIFIED: ") and f"of run {run.id} match its record" in lines[-1]
    assert not [line for line in lines[1:-1] if line.split()[0] not in ("OK", "INFO")]
    recorded = [rel for rec in run.manifest["stages"].values() for rel in rec.get("outputs", {})]
    for rel in recorded:
        row(lines, "OK", rel)
    assert "sha256 as recorded" in row(lines, "OK", "notebooks/05_optimize.ipynb")
    row(lines, "OK", "notebooks/05_optimize.html")
    lake_inputs = [label for label in run.manifest["inputs"] if label.startswith("lakehouse/")]
    assert lake_inputs and all("input: sha256 as recorded" in row(lines, "OK", label) for label in lake_inputs)
    for rel in ("artifacts/sign_test_pre_opt.json", "artifacts/sign_test.json", "artifacts/audit.json"):
        assert "recomputed from the run's artifacts: same verdict (PASS)" in row(lines, "OK", rel, "self-consistent")
    assert "not recomputed (needs both simulators" in row(lines, "OK", "backtest/parity.json", "self-consistent")
    assert {d: snapshot(d) for d in (run.dir, first.run.dir)} == before  # nothing written into the runs
    code, folded = verify(run.dir, capsys)  # the default table folds the OK rows per kind
    assert code == 0 and len(folded) < 15 and "items: as recorded" in row(folded, "OK", "artifacts")


def test_an_unknown_run_id_is_one_line_and_exit_2(tmp_path, capsys):
    assert main(["--runs-dir", str(tmp_path), "verify", "nope-20260101T000000-abcd"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: no run 'nope-20260101T000000-abcd'")


# ------------------------------------------------------------------------------ tampering

def test_a_tampered_artifact_fails_and_the_gates_recomputed_on_it_disagree(copied, capsys):
    code, lines = verify(copied.dir, capsys)
    assert code == 0, "\n".join(lines)  # the copy itself verifies
    path = copied.path(registry.path("sleeve", "flattened"))
    flat = pd.read_parquet(path)
    flat["net_weight"] = flat["net_weight"].abs() * 2  # the flattener "forgot" the signs and the scale
    flat.to_parquet(path, index=False)
    code, lines = verify(copied.dir, capsys)
    assert code == 1
    assert "output of stage optimize: sha256" in row(lines, "CHANGED", "artifacts/flattened.parquet")
    post = row(lines, "MISMATCH", "artifacts/sign_test.json")
    assert "stored PASS, recomputed FAIL" in post and "FLATTEN_MISMATCH" in post
    audit = row(lines, "MISMATCH", "artifacts/audit.json")
    assert "ARTIFACTS" in audit and "artifacts/flattened.parquet changed since its stage wrote it" in audit
    assert lines[-1].startswith("NOT VERIFIED: 3 of ") and "1 changed, 2 mismatch" in lines[-1]


def test_a_deleted_artifact_is_missing(copied, capsys):
    copied.path(registry.path("sleeve", "wf_returns")).unlink()
    code, lines = verify(copied.dir, capsys)
    assert code == 1 and "output of stage validate: not on disk" in row(lines, "MISSING", "backtest/returns.parquet")


def test_a_tampered_notebook_is_changed(copied, capsys):
    notebook = copied.dir / copied.manifest["stages"]["synthesize"]["notebook"]
    doc = json.loads(notebook.read_text())
    doc["cells"][-1]["outputs"] = []  # the evidence of a cell's output removed
    notebook.write_text(json.dumps(doc))
    code, lines = verify(copied.dir, capsys)
    assert code == 1 and "executed notebook of stage synthesize" in row(lines, "CHANGED", "notebooks/03_synthesize.ipynb")
    assert lines[-1].startswith("NOT VERIFIED: 1 of ")


def test_a_changed_lakehouse_file_is_named(copied, capsys):
    label = next(k for k in copied.manifest["inputs"] if k.startswith("lakehouse/ohlcv"))
    lake = Path(copied.profile.data.lakehouse)
    frame = pd.read_parquet(lake / label.removeprefix("lakehouse/"))
    frame.iloc[-1, frame.columns.get_loc("close")] *= 1.5  # a bar revised after the run read it
    frame.to_parquet(lake / label.removeprefix("lakehouse/"))
    code, lines = verify(copied.dir, capsys)
    assert code == 1
    assert f"changed since the run read it ({lake / label.removeprefix('lakehouse/')})" in row(lines, "CHANGED", label)
    assert lines[-1].startswith("NOT VERIFIED: 1 of ")


@pytest.mark.parametrize("how", ["passed_flipped", "check_and_verdict_flipped"])
def test_a_tampered_gate_file_fails(copied, capsys, how):
    path = copied.path(registry.path("sleeve", "audit"))
    doc = json.loads(path.read_text())
    if how == "passed_flipped":  # the verdict no longer follows from the checks
        doc["passed"] = False
    else:  # self-consistent, but not what the run's artifacts give
        doc["checks"][1]["passed"], doc["passed"] = False, False
    path.write_text(json.dumps(doc))
    code, lines = verify(copied.dir, capsys)
    assert code == 1
    row(lines, "CHANGED", "artifacts/audit.json")
    gate = row(lines, "MISMATCH", "artifacts/audit.json", "gate")
    if how == "passed_flipped":
        assert "not self-consistent: stored passed=False but its checks give passed=True" in gate
    else:
        assert "stored FAIL, recomputed PASS" in gate and "only in the stored file: RETURNS=fail" in gate


def test_the_completeness_gate_names_a_pinned_sleeve_run_edited_afterwards(copied):
    """A finished sleeve run whose walk-forward returns were scaled: the meta's completeness gate fails."""
    ref = SleeveRef("pinned", copied.dir)
    assert completeness_gate([ref], "hrp", single_sleeve=True)["passed"] is True
    path = copied.path(registry.path("sleeve", "wf_returns"))
    (pd.read_parquet(path) * 10).to_parquet(path)
    gate = GateResult.from_dict(completeness_gate([ref], "hrp", single_sleeve=True))
    assert not gate.passed and [c.label() for c in gate.failed] == ["HASHES:pinned"]
    assert "backtest/returns.parquet changed since stage validate wrote it" in gate.check("HASHES").detail


# ------------------------------------------------------------------------------ a meta and its sleeve runs

@pytest.fixture(scope="module")
def meta(workspace, long_sleeve):
    """A pair meta: the session's long sleeve pinned, a short sleeve run inside the meta (validated)."""
    _, long_run = long_sleeve
    sleeves = (f"[{{id: crypto_long, profile: demo_crypto_long, run_id: {long_run.id}}}, "
               f"{{id: crypto_short, profile: demo_crypto_short}}]")
    result = workspace.book("meta", "demo_meta_pair", "--executor", "local",
                            env={**SHORT_ENV, "FW_META__SLEEVES": sleeves})
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    return workspace.run_of(result)


def test_a_meta_verifies_with_its_nested_and_pinned_sleeves(meta, capsys):
    before = snapshot(meta.dir)
    code, lines = verify(meta.dir, capsys, "--all")
    assert code == 0, "\n".join(lines)
    assert snapshot(meta.dir) == before
    for rel in ("artifacts/completeness.json", "artifacts/meta_sign_test_gate.json", "artifacts/meta_report.json"):
        assert "recomputed from the run's artifacts: same verdict (PASS)" in row(lines, "OK", rel, "self-consistent")
    row(lines, "OK", "artifacts/meta_weights.parquet", "recomputed from the sleeves' streams: same weights")
    row(lines, "OK", "sleeves/crypto_short/backtest/returns.parquet")
    row(lines, "OK", "pinned:crypto_long/backtest/returns.parquet")
    row(lines, "OK", "sleeves/crypto_short/artifacts/audit.json", "same verdict (PASS)")
    row(lines, "OK", "pinned:crypto_long/artifacts/audit.json", "same verdict (PASS)")


def test_a_tampered_nested_sleeve_artifact_fails_the_meta(meta, tmp_path, capsys):
    copy = Run.at(shutil.copytree(meta.dir, tmp_path / meta.id))
    path = copy.dir / "sleeves" / "crypto_short" / registry.path("sleeve", "wf_returns")
    (pd.read_parquet(path) * 10).to_parquet(path)
    code, lines = verify(copy.dir, capsys)
    assert code == 1
    row(lines, "CHANGED", "sleeves/crypto_short/backtest/returns.parquet")
    completeness = row(lines, "MISMATCH", "artifacts/completeness.json", "self-consistent")
    assert "recomputed fails HASHES:crypto_short" in completeness and "backtest/returns.parquet changed" in completeness
    weights = row(lines, "MISMATCH", "artifacts/meta_weights.parquet")
    assert "stored weights crypto_long" in weights and "recomputed from the sleeves' streams" in weights


# ------------------------------------------------------------------------------ gate file checks (no runs)

def test_shape_problems_and_compare_gate_on_hand_made_gates():
    good = GateResult("g", (Check("A", True, "ok"), Check("B", False, "warn", required=False))).to_dict()
    assert shape_problems(good) == []
    assert shape_problems([]) == ["not a JSON object"]
    assert shape_problems({"gate": "g", "checks": []}) == ["no 'passed'"]
    assert shape_problems({**good, "passed": False}) == ["stored passed=False but its checks give passed=True"]
    bad_check = {**good, "checks": [{**good["checks"][0], "required": "yes"}]}
    assert shape_problems(bad_check) == ["check 0 'required' is not a bool"]

    same, detail = compare_gate(good, GateResult.from_dict(good))
    assert same and detail.endswith("same verdict (PASS) and 2 checks")
    newer = GateResult("g", (*GateResult.from_dict(good).checks, Check("NEW", True, "a later check", subject="x")))
    same, detail = compare_gate(good, newer)
    assert same and "adds passing NEW (the stored gate predates it)" in detail
    failing = GateResult("g", (Check("A", False, "now broken"), Check("B", False, "warn", required=False)))
    same, detail = compare_gate(good, failing)
    assert not same and detail.startswith("stored PASS, recomputed FAIL; recomputed fails A: now broken")
    assert "only in the stored file: A=pass" in detail


def test_the_table_folds_ok_and_unrecorded_rows_per_group_and_the_summary_counts():
    items = [Item("OK", "a/x", "fine", "a"), Item("OK", "a/y", "fine", "a"), Item("OK", "b/z", "fine", "b"),
             Item("UNRECORDED", "n/1", "no hash", "n"), Item("UNRECORDED", "n/2", "no hash", "n"),
             Item("CHANGED", "a/w", "differs"), Item("INFO", "git_revision", "moved on")]
    result = Verification("r-1", items)
    assert [(r.status, r.item, r.detail) for r in result.rows()] == [
        ("OK", "a", "2 items: as recorded"), ("OK", "b/z", "fine"),
        ("UNRECORDED", "n", "2 items: no hash recorded (a run made before these files were hashed)"),
        ("CHANGED", "a/w", "differs"), ("INFO", "git_revision", "moved on")]
    assert result.rows(every=True) == items and not result.passed
    assert result.summary() == ("NOT VERIFIED: 1 of 7 items of run r-1 do not match its record (1 changed); "
                                "2 unrecorded, 1 info")
    clean = Verification("r-1", [i for i in items if i.status != "CHANGED"])
    assert clean.passed and clean.summary() == "VERIFIED: 6 items of run r-1 match its record (2 unrecorded, 1 info)"
