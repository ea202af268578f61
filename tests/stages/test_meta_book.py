"""Phase 3 end to end (SPEC §3): `run_book.py demo` in reduced size (data on both venues, then the
three-sleeve demo_meta on Ray), the same meta run sequentially (identical weights), pinned sleeves,
nesting rules and the failure paths."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from conftest import OVERRIDES, ROOT, SCRIPT, SHORT_ENV, Workspace, art
from quantlib.core import storage
from quantlib.core.errors import ProfileError
from quantlib.core.runs import Run
from quantlib.engine import cluster
from quantlib.meta.tree import check_meta_tree


@pytest.fixture(scope="session")
def demo_ws(tmp_path_factory) -> Workspace:
    base = tmp_path_factory.mktemp("demo")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FW_")}
    # a shorter training window leaves the weekday equities sleeve enough out-of-sample rows for the meta
    # and 21-day test windows (the equities' default) halve the crypto sleeves' walk-forward decisions
    env.update(OVERRIDES, **SHORT_ENV, FW_DATA__LAKEHOUSE=str(base / "lakehouse"), FW_SLEEVE__TRAIN_DAYS="120",
               FW_SLEEVE__MIN_HISTORY_DAYS="120", FW_BACKTEST__TEST_DAYS="21")
    return Workspace(base / "runs", base / "lakehouse", env)


@pytest.fixture(scope="session")
def demo(demo_ws):
    result = demo_ws.book("demo")
    metas = [m for m in demo_ws.runs_dir.glob("*/manifest.json") if json.loads(m.read_text())["phase"] == "meta"]
    assert len(metas) == 1, f"{result.stdout}\n{result.stderr}"
    return result, Run.at(metas[0].parent)


@pytest.fixture(scope="session")
def local_twin(demo_ws, demo):
    """The demo meta's equities sleeve (its cheapest) computed again as a standalone run in the test process's
    own subprocess, not in a Ray worker (--no-cache: not restored from the Ray run's stages)."""
    result = demo_ws.book("sleeve", "demo_equities_long", "--no-cache")
    return result, demo_ws.run_of(result)


def test_demo_runs_the_whole_workflow_and_prints_the_report(demo):
    result, run = demo
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    assert "meta_portfolio_report.md" in result.stdout and str(run.dir) in result.stdout
    assert result.stdout.count("PASS  ") == 3  # two data runs and the meta run
    report = (run.dir / "meta_portfolio_report.md").read_text()
    assert "Status: PASS" in report
    for section in ("Sleeve completeness", "Sign tests", "Allocation", "Sleeve correlations", "Performance",
                    "Flattened book"):
        assert re.search(rf"^## {section} — PASS$", report, flags=re.M), section


def test_sleeves_ran_as_ray_tasks_in_the_meta_run_and_indexes_link_both_ways(demo):
    _, run = demo
    doc = art(run, "artifacts/sleeves.json")
    assert doc["executor"] == "ray" and [s["id"] for s in doc["sleeves"]] == ["crypto_long", "crypto_short", "equities_long"]
    index = (run.dir / "INDEX.md").read_text()
    assert f"**Run id:** `{run.id}`" in index and "`demo_meta`" in index
    for sleeve in doc["sleeves"]:
        assert Path(sleeve["run_dir"]) == run.dir / "sleeves" / sleeve["id"] and sleeve["status"] == "PASS"
        assert f"(sleeves/{sleeve['id']}/INDEX.md)" in index
        child = (run.dir / "sleeves" / sleeve["id"] / "INDEX.md").read_text()
        assert f"**Parent run:** `{run.id}`" in child and f"**Run id:** `{sleeve['id']}`" in child
        assert "**Status:** PASS" in child
    assert not list(Path.home().glob(".ray/auth_token"))  # Ray wrote nothing to the home directory
    # the demo's own workbook cluster, started while the data ran, ran the sleeves in its warm workers; it is
    # stopped when the demo ends (no record, no private folder left)
    result, _ = demo
    assert "Ray: a workbook cluster for this demo at" in result.stdout
    assert doc["ray_cluster"] == "workbook" and doc["ray_logs"] is None
    assert all(s["worker"]["kind"] == "warm actor" for s in doc["sleeves"])
    assert not (run.runs_root / "_cluster" / "cluster.json").exists() and not cluster.running(run.runs_root)


def test_mixed_calendars_join_on_common_weekdays_without_zero_fill(demo):
    _, run = demo
    matrix = art(run, "artifacts/sleeve_returns.parquet")
    agg = art(run, "artifacts/aggregation.json")
    assert (matrix.index.day_of_week < 5).all()  # the equities sleeve trades weekdays only
    assert agg["rows_folded"]["crypto_long"] > 0 and agg["rows_folded"]["equities_long"] == 0
    assert not (matrix == 0).all(axis=1).any()


def test_meta_weights_and_flattening_conserve_net_exposure_and_keep_short_signs(demo):
    _, run = demo
    weights = art(run, "artifacts/meta_weights.parquet")["weight"]
    assert weights.sum() == pytest.approx(1.0) and weights.between(0.05 - 1e-12, 0.95 + 1e-12).all()
    flat = art(run, "artifacts/meta_flattened.parquet").set_index("symbol")
    risk = run.profile.meta.allocation.risk_profile
    expected = 0.0
    for sleeve, w in weights.items():
        book = art(run, f"sleeves/{sleeve}/artifacts/flattened.parquet")
        book = book[book["profile"] == risk]
        expected += w * book["net_weight"].sum()
        if sleeve == "crypto_short":
            only_short = set(book["symbol"]) - {s for s in flat.index if "+" in flat.at[s, "contributors"]}
            assert (flat.loc[sorted(only_short), "net_weight"] < 0).all()
    assert flat["net_weight"].sum() == pytest.approx(expected, abs=1e-12)
    assert art(run, "artifacts/meta_returns.parquet")["meta"].notna().sum() > 0


CHROMIUM = shutil.which("chromium")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="`chromium` is not on PATH: cannot check that charts draw")


def test_the_demo_prints_the_meta_report_last_and_every_sleeve_has_one(demo):
    result, run = demo
    assert result.stdout.strip().splitlines()[-1] == f"Open this page: {run.dir / 'report.html'}"
    assert Run.at(run.dir).manifest["report"]["sha256"] == storage.sha256_file(run.dir / "report.html")
    index = (run.dir / "INDEX.md").read_text()
    assert re.findall(r"\]\(([^)]+)\)", index)[0] == "report.html"
    for sleeve in ("crypto_long", "crypto_short", "equities_long"):
        assert (run.dir / "sleeves" / sleeve / "report.html").is_file()
        assert f"(sleeves/{sleeve}/report.html)" in index
    csv = pd.read_csv(run.dir / "artifacts" / "meta_flattened.csv")
    pd.testing.assert_frame_equal(csv, art(run, "artifacts/meta_flattened.parquet"), check_dtype=False)


@needs_chromium
def test_the_demo_meta_report_draws_every_figure_without_a_script_error(demo, tmp_path):
    """Headless chromium from a file:// URL: the page counts its plot containers, those whose plotly figure
    has data and drew (`<html data-figures data-drawn>`) and the script errors it caught (`data-errors`);
    chromium's own log must have no uncaught error or console error either."""
    _, run = demo
    page = run.dir / "report.html"
    text = page.read_text(encoding="utf-8")
    expected = len(re.findall(r'class="plotly-graph-div"', text))
    assert expected >= 12, expected  # 6 performance, 3 sleeves-as-assets and 3 composition charts
    assert "not available" not in text and str(run.dir) not in text and "00:00:00" not in text
    result = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                             "--disable-background-networking", "--disable-component-update", "--disable-sync",
                             f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0",
                             "--virtual-time-budget=10000", "--dump-dom", page.resolve().as_uri()],
                            capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-2000:]
    root = re.search(r"<html[^>]*>", result.stdout).group(0)
    attrs = dict(re.findall(r'data-(\w+)="([^"]*)"', root))
    assert attrs.get("errors") == "0", root
    assert attrs.get("figures") == str(expected) and attrs.get("drawn") == str(expected), root
    assert result.stdout.count('class="main-svg"') >= expected
    errors = [line for line in result.stderr.splitlines() if "Uncaught" in line or ("CONSOLE" in line and "rror" in line)]
    assert not errors, errors


def test_a_sleeve_computed_outside_ray_equals_the_one_the_ray_worker_computed(demo, local_twin):
    """Ray workers run the same code on the same inputs: every artifact of the nested sleeve equals its twin's
    (parquet exactly). With the meta's allocation recomputed from the sleeves' streams by `verify`
    (tests/engine/test_verify.py), the meta's weights follow: no separate sequential meta is needed."""
    from quantlib.engine.compare import compare_runs

    (_, ray_run), (result, local_run) = demo, local_twin
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    assert not any(rec.get("cached_from") for rec in local_run.manifest["stages"].values())
    nested = Run.at(ray_run.dir / "sleeves" / "equities_long")
    assert nested.manifest["stages"]["validate"]["status"] == "completed"
    compared, differences = compare_runs(nested, local_run)
    # the tearsheet names its run: the nested id (`equities_long`) is no timestamped id compare can mask
    assert compared > 30 and [d.path for d in differences] in ([], ["reports/tearsheet.md"]), differences
    sheets = [(r.dir / "reports" / "tearsheet.md").read_text().replace(f"Run `{r.id}`", "Run `<RUN>`")
              for r in (nested, local_run)]
    assert sheets[0] == sheets[1]
    pd.testing.assert_frame_equal(art(nested, "artifacts/weights.parquet"), art(local_run, "artifacts/weights.parquet"))


def test_a_pinned_sleeve_is_read_where_it_is_and_nothing_else_runs(workspace, long_sleeve):
    _, sleeve = long_sleeve
    pinned = f"[{{id: pinned, profile: demo_crypto_long, run_id: {sleeve.id}}}]"
    result = workspace.book("meta", "demo_meta", "--executor", "local",
                            env={"FW_META__SLEEVES": pinned, "FW_META__SINGLE_SLEEVE": "true"})
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    run = workspace.run_of(result)
    doc = art(run, "artifacts/sleeves.json")["sleeves"]
    assert doc == [{**doc[0], "run_dir": str(sleeve.dir), "pinned": True, "status": "PASS"}]
    assert not (run.dir / "sleeves").exists()
    assert art(run, "artifacts/meta_weights.parquet")["weight"].tolist() == [1.0]


def test_a_pinned_run_that_does_not_exist_fails_the_meta(workspace, first, tmp_path):
    result = workspace.book("meta", "demo_meta", "--executor", "local", runs_dir=tmp_path,
                            env={"FW_META__SLEEVES": "[{id: a, profile: demo_crypto_long, run_id: nope-123}]",
                                 "FW_META__SINGLE_SLEEVE": "true"})
    assert result.returncode == 1
    index = (workspace.run_of(result, runs_dir=tmp_path).dir / "INDEX.md").read_text()
    assert "**Status:** FAIL" in index and "pinned run 'nope-123'" in index


def test_a_failed_sleeve_fails_the_meta_naming_its_notebook_and_cell(workspace, first, tmp_path):
    sleeves = "[{id: a, profile: demo_crypto_long}, {id: b, profile: demo_crypto_short}]"
    result = workspace.book("meta", "demo_meta", "--executor", "local",
                            env={"FW_META__SLEEVES": sleeves, "FW_SLEEVE__MIN_ASSETS_AFTER_HEALTH": "500"})
    assert result.returncode == 1
    run = workspace.run_of(result)
    error = run.manifest["error"]
    assert "sleeve 'a'" in error and re.search(r"01_aggregate\.ipynb cell \d+", error)
    assert "**Status:** FAIL" in (run.dir / "INDEX.md").read_text()
    assert not (run.dir / "meta_portfolio_report.md").exists()  # nothing downstream claims anything


def test_an_unknown_sleeve_profile_is_rejected_before_any_run(workspace, tmp_path):
    result = workspace.book("meta", "demo_meta", runs_dir=tmp_path,
                            env={"FW_META__SLEEVES": "[{id: a, profile: no_such_profile}, {id: b, profile: demo}]"})
    assert result.returncode == 2 and "no_such_profile" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not list(tmp_path.iterdir())


def _meta_profiles(tmp_path: Path, metas: dict[str, list[str]]) -> Path:
    from quantlib.core.profiles import default_profiles_dir

    for name in ("base", "demo_crypto_long", "binance_spot_rating_all_long"):
        (tmp_path / f"{name}.yaml").write_text((default_profiles_dir() / f"{name}.yaml").read_text())
    for name, children in metas.items():
        rows = "".join(f"    - {{id: s{i}, meta_profile: {c}}}\n" if c.startswith("m") else
                       f"    - {{id: s{i}, profile: {c}}}\n" for i, c in enumerate(children))
        (tmp_path / f"{name}.yaml").write_text(f"meta:\n  sleeves:\n{rows}")
    return tmp_path


def test_nested_metas_are_allowed_to_depth_three_and_cycles_are_rejected_with_the_chain(tmp_path):
    leaf = ["demo_crypto_long", "demo_crypto_long"]
    d = _meta_profiles(tmp_path, {"m1": leaf, "m2": ["m1", "demo_crypto_long"], "m3": ["m2", "demo_crypto_long"],
                                  "m4": ["m3", "demo_crypto_long"], "ma": ["mb", "demo_crypto_long"],
                                  "mb": ["ma", "demo_crypto_long"]})
    assert check_meta_tree("m1", profiles_dir=d) == 1 and check_meta_tree("m3", profiles_dir=d) == 3
    with pytest.raises(ProfileError, match="deeper than 3: m4 -> m3 -> m2 -> m1"):
        check_meta_tree("m4", profiles_dir=d)
    with pytest.raises(ProfileError, match="cyclic meta_profile in 'mb': ma -> mb -> ma"):
        check_meta_tree("ma", profiles_dir=d)
    with pytest.raises(ProfileError, match="not a meta profile"):
        check_meta_tree("demo_crypto_long", profiles_dir=d)


def _copy_data_run(source: Path, runs_dir: Path, run_id: str) -> None:
    """A PASS data run `run_id` with `source`'s exports, created now (the newest one)."""
    from quantlib.core import storage
    from quantlib.core.runs import utc_now

    shutil.copytree(source, runs_dir / run_id)
    manifest = storage.read_json(runs_dir / run_id / "manifest.json")
    storage.write_json(runs_dir / run_id / "manifest.json", {**manifest, "run_id": run_id, "created_at": utc_now()})


def _stage_status(manifest: Path, stage: str) -> str | None:
    try:
        return json.loads(manifest.read_text())["stages"].get(stage, {}).get("status")
    except (OSError, ValueError):
        return None


def test_every_sleeve_reads_the_pinned_data_run_and_sigterm_leaves_no_run_running(workspace, first, tmp_path):
    """A data run passing while the meta runs is read by none of its sleeves; SIGTERM during the second sleeve
    exits 143 with the meta and that sleeve INTERRUPTED (never RUNNING)."""
    runs = tmp_path / "runs"
    _copy_data_run(first.run.dir, runs, "data-pinned")
    proc = subprocess.Popen([sys.executable, str(SCRIPT), "--runs-dir", str(runs), "meta", "demo_meta_pair",
                             "--executor", "local", "--run-id", "M"], cwd=ROOT, env={**workspace.env, **SHORT_ENV},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    sleeves = runs / "M" / "sleeves"
    try:
        deadline = time.monotonic() + 600
        while _stage_status(sleeves / "crypto_long" / "manifest.json", "aggregate") != "completed":
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read() if proc.poll() else "timeout"
            time.sleep(0.5)
        _copy_data_run(first.run.dir, runs, "data-newer")  # passes before the second sleeve looks for its data
        # select takes ~0.3 s: signal once it has started (validate, seconds long, is still to come)
        while _stage_status(sleeves / "crypto_short" / "manifest.json", "select") not in ("running", "completed"):
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read() if proc.poll() else "timeout"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, out
    from quantlib.core.runs import Run, list_runs

    meta = Run.open(runs, "M")
    assert meta.options.data_runs == ("data-pinned",)
    assert "`data-pinned`" in (meta.dir / "INDEX.md").read_text()
    for sid in ("crypto_long", "crypto_short"):
        sleeve = Run.at(sleeves / sid)
        assert sleeve.manifest["data_run"] == "data-pinned" and sleeve.options.data_runs == ("data-pinned",)
    assert meta.status == "INTERRUPTED" and meta.manifest["stages"]["sleeves"]["status"] == "interrupted"
    short = Run.at(sleeves / "crypto_short")
    stopped = short.manifest["interrupted"]["stage"]  # select, or a later stage if select ended as the signal came
    order = list(short.manifest["stages"])
    assert short.status == "INTERRUPTED" and order.index(stopped) >= order.index("select")
    assert short.manifest["stages"][stopped]["status"] == "interrupted"
    assert [n for n, r in short.manifest["stages"].items() if r.get("status") == "interrupted"] == [stopped]
    assert "**Status:** INTERRUPTED" in (sleeves / "crypto_short" / "INDEX.md").read_text()
    assert Run.at(sleeves / "crypto_long").status == "PASS"
    assert not [r for r in list_runs(runs) if r["status"] in ("RUNNING", "STALE")]
