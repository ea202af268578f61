"""`runs prune`: hand-made run directories (manifests written with `quantlib.core.storage`) in tmp_path.

Covers --keep per profile, --older-than, the protections (RUNNING, a sleeve pinned by a meta's profile,
its sleeves.json or a workspace profile, a data run a kept run read), the dry run deleting nothing and
the CLI's one-line errors.
"""
from __future__ import annotations

import shutil
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml

from quantlib import cli
from quantlib.core import storage
from quantlib.core.errors import WorkbookError
from quantlib.core.profiles import default_profiles_dir
from quantlib.engine.prune import TRASH, apply_prune, dir_bytes, plan_prune

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)


def make_run(root: Path, run_id: str, profile: str, days_ago: float, status: str = "PASS", phase: str = "data",
             data_run: str | None = None, pinned: list[tuple[str, str]] = (), payload: int = 1000) -> Path:
    """A run directory with a manifest, a resolved profile and `payload` bytes of artifacts."""
    run_dir = root / run_id
    manifest = {"run_id": run_id, "profile": profile, "phase": phase, "status": status,
                "created_at": (NOW - timedelta(days=days_ago)).isoformat(timespec="seconds"), "stages": {}}
    if data_run:
        manifest["data_run"] = data_run
    storage.write_json(run_dir / "manifest.json", manifest)
    sleeves = [{"id": sid, "profile": "sleeve_p", "run_id": rid} for sid, rid in pinned]
    storage.write_text(run_dir / "profile.resolved.yaml", yaml.safe_dump(
        {"profile": {"name": profile, "sleeve": {"data_run_id": None}, "meta": {"sleeves": sleeves}},
         "extends_chain": [profile, "base"], "env_overrides": {}}))
    storage.write_bytes(run_dir / "artifacts" / "blob.bin", b"x" * payload)
    return run_dir


@pytest.fixture
def root(tmp_path) -> Path:
    return tmp_path / "runs"


@pytest.fixture
def no_profiles(tmp_path) -> Path:
    (tmp_path / "profiles").mkdir()
    return tmp_path / "profiles"


def plan(root: Path, profiles: Path, **kw):
    return plan_prune(root, profiles_dir=profiles, now=NOW, **kw)


def decided(p) -> dict[str, bool]:
    return {d.entry.run_id: d.delete for d in p.decisions}


def test_keep_newest_per_profile_and_dry_run_deletes_nothing(root, no_profiles):
    for i in range(4):
        make_run(root, f"a-{i}", "a", days_ago=10 - i)  # a-3 newest
    make_run(root, "b-0", "b", days_ago=30)
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    p = plan(root, no_profiles, keep=2)
    assert decided(p) == {"a-3": False, "a-2": False, "a-1": True, "a-0": True, "b-0": False}
    assert p.bytes_freed == dir_bytes(root / "a-1") + dir_bytes(root / "a-0") > 2000
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before  # planning deletes nothing

    assert apply_prune(p) == [root / "a-1", root / "a-0"]
    assert sorted(d.name for d in root.iterdir()) == ["a-2", "a-3", "b-0"]  # trash folder gone too
    assert not (root / TRASH).exists()


def test_leftovers_of_an_interrupted_prune_are_removed_and_are_no_runs(root, no_profiles):
    make_run(root, "a-new", "a", days_ago=1)
    make_run(root / TRASH, "a-old.1234abcd", "a", days_ago=9)  # renamed away, then the process died
    p = plan(root, no_profiles, keep=1)
    assert decided(p) == {"a-new": False}  # not a run any more: never listed
    apply_prune(p)
    assert not (root / TRASH).exists() and (root / "a-new").is_dir()


def test_older_than_alone_and_combined_with_keep(root, no_profiles):
    make_run(root, "a-old", "a", days_ago=40)
    make_run(root, "a-mid", "a", days_ago=20)
    make_run(root, "a-new", "a", days_ago=1)
    assert decided(plan(root, no_profiles, older_than_days=30)) == {"a-old": True, "a-mid": False, "a-new": False}
    # both criteria must hold: outside the newest 1 AND older than 10 days
    assert decided(plan(root, no_profiles, keep=1, older_than_days=10)) == {"a-old": True, "a-mid": True,
                                                                            "a-new": False}
    assert decided(plan(root, no_profiles, keep=0, older_than_days=30)) == {"a-old": True, "a-mid": False,
                                                                            "a-new": False}


def test_running_run_is_never_deleted(root, no_profiles):
    make_run(root, "a-running", "a", days_ago=50, status="RUNNING")
    make_run(root, "a-new", "a", days_ago=1)
    p = plan(root, no_profiles, keep=0)
    assert decided(p) == {"a-running": False, "a-new": True}
    assert "RUNNING" in next(d.reason for d in p.decisions if d.entry.run_id == "a-running")


def test_run_that_became_running_after_the_plan_stays(root, no_profiles):
    run_dir = make_run(root, "a-old", "a", days_ago=50)
    p = plan(root, no_profiles, keep=0)
    assert decided(p) == {"a-old": True}
    doc = storage.read_json(run_dir / "manifest.json")
    storage.write_json(run_dir / "manifest.json", {**doc, "status": "RUNNING"})  # resumed meanwhile
    assert apply_prune(p) == [] and run_dir.is_dir()


def test_pinned_sleeve_and_its_data_run_stay_while_their_meta_stays(root, no_profiles):
    make_run(root, "data-old", "data_p", days_ago=60)
    make_run(root, "data-new", "data_p", days_ago=1)
    make_run(root, "sleeve-old", "sleeve_p", days_ago=50, phase="sleeve", data_run="data-old")
    make_run(root, "sleeve-new", "sleeve_p", days_ago=2, phase="sleeve", data_run="data-new")
    make_run(root, "meta-1", "meta_p", days_ago=3, phase="meta", pinned=[("s1", "sleeve-old")])
    p = plan(root, no_profiles, keep=1)
    assert decided(p) == {"data-old": False, "data-new": False, "sleeve-old": False, "sleeve-new": False,
                          "meta-1": False}
    reasons = {d.entry.run_id: d.reason for d in p.decisions}
    assert "pinned by meta meta-1" in reasons["sleeve-old"]
    assert "data run read by sleeve-old" in reasons["data-old"]  # protection is transitive


def test_pinned_sleeve_recorded_in_sleeves_json_stays(root, no_profiles):
    make_run(root, "sleeve-old", "sleeve_p", days_ago=50, phase="sleeve")
    make_run(root, "sleeve-new", "sleeve_p", days_ago=2, phase="sleeve")
    meta = make_run(root, "meta-1", "meta_p", days_ago=3, phase="meta")
    storage.write_json(meta / "artifacts" / "sleeves.json", {"run_id": "meta-1", "sleeves": [
        {"id": "s1", "run_id": "sleeve-old", "pinned": True},
        {"id": "s2", "run_id": "sleeve-new", "pinned": False}]})
    assert decided(plan(root, no_profiles, keep=1))["sleeve-old"] is False
    (meta / "artifacts" / "sleeves.json").unlink()  # the same tree without the record: the old sleeve goes
    assert decided(plan(root, no_profiles, keep=1))["sleeve-old"] is True


def test_data_run_read_by_a_nested_sleeve_of_a_kept_meta_stays(root, no_profiles):
    make_run(root, "data-old", "data_p", days_ago=60)
    make_run(root, "data-new", "data_p", days_ago=1)
    meta = make_run(root, "meta-1", "meta_p", days_ago=3, phase="meta")
    make_run(meta / "sleeves", "crypto_long", "sleeve_p", days_ago=3, phase="sleeve", data_run="data-old")
    p = plan(root, no_profiles, keep=1)
    assert decided(p) == {"data-old": False, "data-new": False, "meta-1": False}  # nested runs are no candidates
    assert "meta-1/sleeves/crypto_long" in next(d.reason for d in p.decisions if d.entry.run_id == "data-old")


def test_a_deleted_meta_protects_nothing(root, no_profiles):
    make_run(root, "data-old", "data_p", days_ago=60)
    make_run(root, "data-new", "data_p", days_ago=1)
    make_run(root, "meta-old", "meta_p", days_ago=40, phase="meta", data_run="data-old")
    make_run(root, "meta-new", "meta_p", days_ago=2, phase="meta", data_run="data-new")
    assert decided(plan(root, no_profiles, keep=1)) == {"data-old": True, "data-new": False, "meta-old": True,
                                                        "meta-new": False}


def test_run_pinned_by_a_workspace_profile_stays(root, tmp_path):
    profiles = tmp_path / "profiles"
    shutil.copytree(default_profiles_dir(), profiles)
    storage.write_text(profiles / "pinning_meta.yaml", yaml.safe_dump({
        "description": "pins a finished sleeve run",
        "meta": {"sleeves": [{"id": "a", "profile": "demo_crypto_long", "run_id": "sleeve-old"},
                             {"id": "b", "profile": "demo_crypto_short"}]}}))
    make_run(root, "sleeve-old", "demo_crypto_long", days_ago=50, phase="sleeve")
    make_run(root, "sleeve-other", "demo_crypto_long", days_ago=40, phase="sleeve")
    make_run(root, "sleeve-new", "demo_crypto_long", days_ago=1, phase="sleeve")
    p = plan_prune(root, keep=1, profiles_dir=profiles, now=NOW)
    assert decided(p) == {"sleeve-old": False, "sleeve-other": True, "sleeve-new": False}
    assert "pinning_meta" in next(d.reason for d in p.decisions if d.entry.run_id == "sleeve-old")


def test_unreadable_manifest_and_non_run_folders_are_left_alone(root, no_profiles):
    make_run(root, "a-new", "a", days_ago=1)
    storage.write_text(root / "broken" / "manifest.json", "{not json")
    storage.write_text(root / "_static" / "plotly-1.min.js", "/* shared */")
    p = plan(root, no_profiles, keep=0)
    assert decided(p) == {"a-new": True, "broken": False}
    apply_prune(p)
    assert (root / "broken" / "manifest.json").exists() and (root / "_static" / "plotly-1.min.js").exists()


@pytest.mark.parametrize("kw, message", [
    ({}, "give --keep N"),
    ({"keep": -1}, "--keep must be >= 0"),
    ({"older_than_days": -2.0}, "--older-than must be >= 0"),
])
def test_plan_rejects_bad_criteria(root, no_profiles, kw, message):
    make_run(root, "a", "a", days_ago=1)
    with pytest.raises(WorkbookError, match=message):
        plan(root, no_profiles, **kw)


# ---------------------------------------------------------------------------------------------- CLI
def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("argv, message", [
    (["--keep", "-1"], "--keep must be >= 0, got -1"),
    (["--keep", "two"], "--keep must be a whole number >= 0, got 'two'"),
    (["--older-than", "-3"], "--older-than must be a finite number of days >= 0"),
    (["--older-than", "nan"], "--older-than must be a finite number of days >= 0"),
    ([], "give --keep N"),
])
def test_cli_bad_input_is_one_line_exit_2(capsys, root, argv, message):
    make_run(root, "a-old", "a", days_ago=10)
    code, out, err = run_cli(capsys, "--runs-dir", str(root), "runs", "prune", *argv)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("error: runs prune: ") and message in err, err
    assert (root / "a-old").is_dir()


def test_cli_dry_run_then_yes(capsys, root, monkeypatch, no_profiles):
    monkeypatch.setattr("quantlib.engine.prune.list_profiles", lambda _dir=None: [])
    old = make_run(root, "a-old", "a", days_ago=10, payload=5000)
    make_run(root, "a-new", "a", days_ago=1)
    size = dir_bytes(old)
    code, out, _ = run_cli(capsys, "--runs-dir", str(root), "runs", "prune", "--keep", "1")
    assert code == 0 and old.is_dir()
    assert "dry run" in out and "free" in out and f"{size:,} bytes" in out and "--yes" in out
    assert any(line.split()[:2] == ["delete", "a-old"] for line in out.splitlines())
    assert any(line.split()[:2] == ["keep", "a-new"] for line in out.splitlines())

    code, out, _ = run_cli(capsys, "--runs-dir", str(root), "runs", "prune", "--keep", "1", "--yes")
    assert code == 0 and not old.exists() and (root / "a-new").is_dir()
    assert "deleted 1 run(s), freed" in out and f"{size:,} bytes" in out

    code, out, _ = run_cli(capsys, "--runs-dir", str(root), "runs")  # plain `runs` still lists
    assert code == 0 and "a-new" in out and "a-old" not in out
