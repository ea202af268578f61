"""End to end: `python run_book.py sleeve PROFILE` executes the six sleeve notebooks (SPEC §2.1-2.6).

The sleeves read the session's shared offline data run (conftest `first`): a LONG and a SHORT demo
sleeve, then the failure paths (no data run, every candidate vetoed, an unknown engine, too few
healthy assets) and a resume.
"""
from __future__ import annotations

import re

import nbformat
import numpy as np

from conftest import art
from quantlib.core import registry
from quantlib.core import storage
from quantlib.core.runs import Run


def test_long_sleeve_passes_and_index_names_profile_run_and_gates(long_sleeve, first):
    result, run = long_sleeve
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    index = (run.dir / "INDEX.md").read_text()
    assert re.search(r"\*\*Status:\*\*\s*PASS\b", index)
    assert "`demo_crypto_long`" in index and f"**Run id:** `{run.id}`" in index
    assert f"**Data run:** `{first.run.id}`" in index
    for gate in ("artifacts/sign_test_pre_opt.json", "artifacts/sign_test.json", "artifacts/audit.json",
                 "backtest/parity.json"):
        assert re.search(rf"{gate}\) \| PASS \|", index), gate
    for stage in ("aggregate", "select", "synthesize", "pre_opt", "optimize", "report", "validate", "post_analysis"):
        assert re.search(rf"\|\s*\d+\s*\|\s*{stage}\s*\|\s*completed\s*\|", index), stage


def test_every_declared_sleeve_output_exists_with_its_hash_and_the_reads_are_recorded(long_sleeve):
    _, run = long_sleeve
    manifest = run.manifest
    for stage in registry.stages("sleeve"):
        recorded = manifest["stages"][stage.name]["outputs"]
        assert sorted(recorded) == sorted(stage.expanded_outputs(run.profile))
        for rel, digest in recorded.items():
            assert storage.sha256_file(run.dir / rel) == digest
    assert any(k.startswith("lakehouse/ohlcv/") for k in manifest["inputs"])
    assert "lakehouse/features_matrix.parquet" in manifest["inputs"]
    tear_path = run.dir / "reports" / "tearsheet_hrp.html"
    tear = tear_path.read_text()
    assert "Plotly.newPlot" in tear and len(tear) < 1_000_000  # plotly.js not embedded ...
    srcs = re.findall(r"<script[^>]+src=\"([^\"]+)\"", tear)
    shared = (tear_path.parent / srcs[0]).resolve()
    assert len(srcs) == 1 and shared.parent == (run.dir.parent / "_static").resolve()  # the runs root's copy
    assert shared.stat().st_size > 1_000_000  # ... of the real bundle (works offline)
    assert not re.findall(r"<script[^>]+src=[\"']https?://", tear)  # nothing loaded from a CDN


def test_long_sleeve_weights_are_valid_and_flatten_to_positive_positions(long_sleeve):
    _, run = long_sleeve
    weights, flat, atoms = art(run, "artifacts/weights.parquet"), art(run, "artifacts/flattened.parquet"), \
        art(run, "artifacts/atoms.parquet")
    assert set(weights["profile"]) == set(run.profile.optimizer.profiles)
    sums = weights.groupby("profile")["weight"].sum()
    np.testing.assert_allclose(sums.to_numpy(), 1.0, atol=1e-12)
    assert (weights["weight"] >= 0).all() and (atoms["direction"] == "LONG").all()
    cap = art(run, "artifacts/optimization.json")["atom_cap"]   # the effective (floored) cap
    assert weights["weight"].max() <= cap + 1e-9
    assert (flat["net_weight"] >= 0).all()
    audit = art(run, "artifacts/audit.json")
    assert audit["passed"] and {c["code"] for c in audit["checks"]} >= {"ARTIFACTS", "RETURNS", "CALENDAR"}


def test_selection_uses_only_healthy_candidates_and_the_audit_adds_up(long_sleeve):
    _, run = long_sleeve
    selection, candidates = art(run, "artifacts/selection.parquet"), art(run, "artifacts/candidates.parquet")
    healthy = set(candidates.loc[candidates["health"] == "OK", "symbol"])
    assert set(selection["symbol"]) <= healthy and len(selection) >= 2
    audit = art(run, "artifacts/selection_audit.json")
    assert audit["n_selected"] == len(selection)
    assert audit["funnel"][-1]["remaining"] == len(selection)
    returns = art(run, "artifacts/returns.parquet")
    assert audit["train_end"].startswith(str(returns.index[-1].date()))


def test_short_sleeve_passes_with_the_atomic_gate_and_every_position_is_short(short_sleeve):
    result, run = short_sleeve
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    assert run.profile.features.directional_sign_test_gate_atomic
    atoms, flat = art(run, "artifacts/atoms.parquet"), art(run, "artifacts/flattened.parquet")
    assert (atoms["direction"] == "SHORT").all()
    held = flat[flat["gross_weight"] > 0]
    assert not held.empty and (held["net_weight"] < 0).all()
    # the synthetic stream is the exact inversion of the raw returns on the training window
    syn, raw = art(run, "artifacts/synthetic_returns.parquet"), art(run, "artifacts/returns.parquet")
    first_atom = atoms.iloc[0]
    expected = -np.minimum(raw.loc[syn.index, first_atom["symbol"]].to_numpy(), 1.0)
    assert np.array_equal(syn[first_atom["atom_id"]].to_numpy(), expected)
    checks = {c["code"]: c for c in art(run, "artifacts/audit.json")["checks"]}
    assert checks["SIGN_TEST_PRE"]["required"] and checks["SIGN_TEST_POST"]["passed"]
    index = (run.dir / "INDEX.md").read_text()
    assert "validate (--skip-validation)" in index and "post_analysis (--skip-analysis)" in index
    assert re.search(r"\|\s*7\s*\|\s*validate\s*\|\s*skipped \(--skip-validation\)", index)
    assert not (run.dir / "backtest" / "returns.parquet").exists()  # (the look-ahead audit may add its json)


def test_resume_of_a_complete_sleeve_skips_every_stage(workspace, long_sleeve):
    _, run = long_sleeve
    result = workspace.book("sleeve", "demo_crypto_long", "--run-id", run.id)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("complete, skipped (resume)") == len(registry.stages("sleeve"))


# ------------------------------------------------------------------------------------- bad input
def fail_index(run: Run) -> str:
    index = (run.dir / "INDEX.md").read_text()
    assert re.search(r"\*\*Status:\*\*\s*FAIL\b", index)
    return index


def test_missing_data_run_fails_the_first_stage_with_the_fix(workspace, first, tmp_path):
    result = workspace.book("sleeve", "demo_crypto_long", "--skip-validation", runs_dir=tmp_path)
    assert result.returncode == 1
    run = workspace.run_of(result, runs_dir=tmp_path)
    index = fail_index(run)
    assert "stage aggregate failed" in index and "run_book.py data" in index


def test_every_candidate_vetoed_fails_selection_with_the_funnel(workspace, first):
    result = workspace.book("sleeve", "demo_crypto_long", "--skip-validation",
                            env={"FW_SELECTION__HARD_ENTROPY_MAX": "0.01"})
    assert result.returncode == 1
    index = fail_index(workspace.run_of(result))
    assert "stage select failed" in index and "SelectionError" in index and "candidates=" in index


def test_too_few_healthy_assets_fails_aggregate(workspace, first):
    result = workspace.book("sleeve", "demo_crypto_short", "--skip-validation",
                            env={"FW_SLEEVE__MIN_ASSETS_AFTER_HEALTH": "50"})
    assert result.returncode == 1
    assert "min_assets_after_health=50" in fail_index(workspace.run_of(result))


def test_unknown_engine_is_a_profile_error_before_any_run(workspace, first, tmp_path):
    result = workspace.book("sleeve", "demo_crypto_long", env={"FW_OPTIMIZER__ENGINE": "magic"}, runs_dir=tmp_path)
    assert result.returncode == 2
    assert "optimizer.engine" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not list(tmp_path.glob("*/manifest.json"))


def test_every_executed_notebook_shows_the_profile_that_ran(short_sleeve):
    """The injected parameters cell names the run's profile, not the notebook's default (demo_crypto_long)."""
    _, run = short_sleeve
    notebooks = sorted((run.dir / "notebooks").glob("*.ipynb"))
    assert len(notebooks) == 6  # validation and post-analysis skipped
    for path in notebooks:
        nb = nbformat.read(str(path), as_version=4)
        injected = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
        assert injected and 'profile = "demo_crypto_short"' in injected[0].source, path.name
