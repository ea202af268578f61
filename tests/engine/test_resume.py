"""Resuming a run (`quantlib.engine.resume.reopen`): another phase or profile, a live writer and a profile that
resolves differently are refused with nothing written; `force` records the change and the remaining stages
run with the new values."""
from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import ROOT

from quantlib.core import registry
from quantlib.core.errors import ResumeError
from quantlib.core.profiles import load_profile
from quantlib.core.registry import Artifact, Stage
from quantlib.core.runs import Run, RunOptions
from quantlib.engine import executor
from quantlib.engine.resume import reopen

SLOW = {"FW_BOOK__CELL_TIMEOUT_S": "1"}
FAST = {"FW_BOOK__CELL_TIMEOUT_S": "600"}


def snapshot(run: Run) -> dict[str, bytes]:
    """Every file of a run directory (a refused resume must change none)."""
    return {str(p.relative_to(run.dir)): p.read_bytes() for p in sorted(run.dir.rglob("*")) if p.is_file()}


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.fixture
def sleeve_run(tmp_path) -> Run:
    run = Run.create(tmp_path / "runs", load_profile("demo_crypto_long", env=SLOW), "sleeve", ROOT, run_id="R")
    run.manifest["status"] = "FAIL"
    run.manifest["stages"] = {"aggregate": {"status": "completed", "outputs": {}},
                              "select": {"status": "failed", "error": "timed out"}}
    run.save()
    return run


def test_another_phase_or_profile_is_refused_naming_the_command_that_resumes_it(sleeve_run):
    before = snapshot(sleeve_run)
    with pytest.raises(ResumeError, match=r"run R is a sleeve run of profile 'demo_crypto_long', not a data run of "
                                          r"'demo'.*`run_book.py sleeve demo_crypto_long --run-id R`"):
        reopen(sleeve_run.dir.parent, "R", "data", "demo", env=SLOW)
    with pytest.raises(ResumeError, match="not a sleeve run of 'demo_crypto_short'"):
        reopen(sleeve_run.dir.parent, "R", "sleeve", "demo_crypto_short", env=SLOW)
    assert snapshot(sleeve_run) == before
    assert reopen(sleeve_run.dir.parent, "R", "sleeve", None, env=SLOW).id == "R"  # None: the run's own profile


def test_a_changed_profile_is_refused_with_the_keys_old_and_new_values_and_the_fix(sleeve_run):
    before = snapshot(sleeve_run)
    with pytest.raises(ResumeError) as info:
        reopen(sleeve_run.dir.parent, "R", "sleeve", "demo_crypto_long", env=FAST)
    message = str(info.value)
    assert "run R was started with other profile values: book.cell_timeout_s: 1 → 600" in message
    assert "overrides then: FW_BOOK__CELL_TIMEOUT_S=1, now: FW_BOOK__CELL_TIMEOUT_S=600" in message
    assert "--force" in message and "\n" not in message
    with pytest.raises(ResumeError, match="book.cell_timeout_s: 1 → 1800; overrides then: FW_BOOK__CELL_TIMEOUT_S=1, "
                                          "now: none"):
        reopen(sleeve_run.dir.parent, "R", "sleeve", "demo_crypto_long", env={})  # the override forgotten
    assert snapshot(sleeve_run) == before


def test_force_records_the_change_and_the_remaining_stages_run_with_the_new_values(sleeve_run, monkeypatch):
    runs = sleeve_run.dir.parent
    run = reopen(runs, "R", "sleeve", "demo_crypto_long", env=FAST, force=True)
    assert run.profile.book.cell_timeout_s == 600
    stored = Run.open(runs, "R")
    assert stored.profile.book.cell_timeout_s == 600 and stored.manifest["env_overrides"] == {"book": {"cell_timeout_s": 600}}
    [change] = stored.manifest["profile_changes"]
    assert change["changes"] == [{"key": "book.cell_timeout_s", "old": 1, "new": 600}]
    assert change["previous_env_overrides"] == {"book": {"cell_timeout_s": 1}}
    assert change["completed_stages"] == ["aggregate"] and change["at"]
    assert reopen(runs, "R", "sleeve", "demo_crypto_long", env=FAST).id == "R"  # now it resolves as recorded

    # the executor runs the remaining stage with the new limit, and INDEX.md shows the record
    monkeypatch.setitem(registry.PHASES, "testphase", (Stage("select", "x.ipynb", "tests:x", (Artifact("s", "s.txt"),)),))
    limits = []

    def fake_stage(run_, index, stage, timeout_s, *args):
        limits.append(timeout_s)
        run_.stage(stage.name).update(status="completed", outputs={})
        return 0.0

    monkeypatch.setattr(executor, "execute_stage", fake_stage)
    assert executor.run_phase(Run.open(runs, "R"), "testphase", say=lambda _: None)
    assert limits == [600]
    index = (sleeve_run.dir / "INDEX.md").read_text()
    assert "## Profile changes (resumed with --force)" in index
    assert "| `book.cell_timeout_s` | `1` | `600` | aggregate |" in index


def test_a_live_run_is_refused_and_a_stale_one_resumes(sleeve_run):
    runs = sleeve_run.dir.parent
    sleeve_run.manifest["status"] = "RUNNING"  # Run.create recorded this (live) process as its writer
    sleeve_run.save()
    with pytest.raises(ResumeError, match=r"run R is RUNNING \(pid \d+ on host .*\); wait for it or stop it"):
        reopen(runs, "R", "sleeve", "demo_crypto_long", env=SLOW, force=True)
    sleeve_run.manifest["process"]["pid"] = dead_pid()
    sleeve_run.save()
    assert Run.open(runs, "R").status == "STALE"
    assert reopen(runs, "R", "sleeve", "demo_crypto_long", env=SLOW).id == "R"


def test_a_meta_resume_checks_and_forces_its_existing_sleeve_runs(tmp_path):
    runs = tmp_path / "runs"
    meta = Run.create(runs, load_profile("demo_meta_pair", env=SLOW), "meta", ROOT, run_id="M",
                      options=RunOptions(executor="local"))
    child = Run.create(meta.dir / "sleeves", load_profile("demo_crypto_long", overrides=meta.resolved.overrides),
                       "sleeve", ROOT, run_id="crypto_long", options=RunOptions(runs_root=str(runs), parent_run="M", depth=1))
    for run in (meta, child):
        run.manifest["status"] = "FAIL"
        run.save()
    before = snapshot(meta)
    with pytest.raises(ResumeError) as info:
        reopen(runs, "M", "meta", "demo_meta_pair", env=FAST)
    assert "run M was started with other profile values: book.cell_timeout_s: 1 → 600" in str(info.value)
    assert "sleeve run M/sleeves/crypto_long was started with other profile values: book.cell_timeout_s" in str(info.value)
    assert snapshot(meta) == before
    reopen(runs, "M", "meta", "demo_meta_pair", env=FAST, force=True)
    for run in (Run.open(runs, "M"), Run.at(child.dir)):
        assert run.profile.book.cell_timeout_s == 600 and len(run.manifest["profile_changes"]) == 1

    # a sleeve run of another profile than the meta now names under that id: refused, even with --force
    wrong = {**FAST, "FW_META__SLEEVES": "[{id: crypto_long, profile: demo_crypto_short}, {id: b, profile: demo_crypto_long}]"}
    with pytest.raises(ResumeError, match="sleeve run M/sleeves/crypto_long is a sleeve run of profile 'demo_crypto_long', "
                                          "not a sleeve run of 'demo_crypto_short'"):
        reopen(runs, "M", "meta", "demo_meta_pair", env=wrong, force=True)
