import json

import pytest
from pydantic import ValidationError

from quantlib.core import storage
from quantlib.core.errors import DataError, IdentifierError, ProfileError, WorkbookError
from quantlib.core.profiles import load_profile
from quantlib.core.runs import Run, list_runs, new_run_id, newest_run


def test_create_records_definition_hashes_versions_and_resolved_profile(tmp_path):
    resolved = load_profile("demo", env={"FW_DATA__WORKERS": "3"})
    run = Run.create(tmp_path, resolved, "data", tmp_path, run_id="r1")
    inputs = run.manifest["inputs"]
    assert {"profiles/demo.yaml", "profiles/base.yaml", "profiles/scanners/binance_spot_base.yaml",
            "profiles/scanners/rating_ma_short.yaml"} <= set(inputs)
    assert all(len(h) == 64 for h in inputs.values())
    assert run.manifest["versions"]["pandas"] and run.manifest["env_overrides"] == {"data": {"workers": 3}}
    assert Run.open(tmp_path, "r1").profile == resolved.profile  # resolved profile round-trips
    assert (tmp_path / "r1" / "profile.resolved.yaml").read_text().count("workers: 3") == 2  # value and recorded override


def test_unknown_scanner_fails_at_run_creation(tmp_path):
    resolved = load_profile("demo", env={"FW_DATA__SCANNERS": "[no_such_scanner]"})
    with pytest.raises(ProfileError, match="scanner 'no_such_scanner' not found"):
        Run.create(tmp_path, resolved, "data", tmp_path)


def test_existing_or_bad_run_id(tmp_path):
    resolved = load_profile("demo")
    Run.create(tmp_path, resolved, "data", tmp_path, run_id="same")
    with pytest.raises(WorkbookError, match="already exists; resume it with --run-id same"):
        Run.create(tmp_path, resolved, "data", tmp_path, run_id="same")
    with pytest.raises(IdentifierError):
        Run.create(tmp_path, resolved, "data", tmp_path, run_id="../escape")
    with pytest.raises(DataError, match="no run 'missing'"):
        Run.open(tmp_path, "missing")
    assert new_run_id("demo").startswith("demo-")


def test_listing_newest_and_unreadable(tmp_path):
    resolved = load_profile("demo")
    a = Run.create(tmp_path, resolved, "data", tmp_path, run_id="a")
    a.manifest["created_at"], a.manifest["status"] = "2026-01-01T00:00:00+00:00", "PASS"
    a.save()
    b = Run.create(tmp_path, resolved, "data", tmp_path, run_id="b")
    b.manifest["created_at"], b.manifest["status"] = "2026-01-02T00:00:00+00:00", "FAIL"
    b.save()
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "manifest.json").write_text("{broken")
    rows = {r["run_id"]: r for r in list_runs(tmp_path)}
    assert rows["c"]["status"] == "UNREADABLE"
    assert newest_run(tmp_path, "demo") == "b"
    assert newest_run(tmp_path, "demo", complete=True) == "a"
    assert newest_run(tmp_path, "other") is None


def test_run_paths_cannot_escape(tmp_path):
    run = Run.create(tmp_path, load_profile("demo"), "data", tmp_path, run_id="r")
    assert run.path("artifacts/x.json") == (tmp_path / "r" / "artifacts" / "x.json").resolve()
    with pytest.raises(DataError, match="escapes run directory"):
        run.path("../other/manifest.json")
    storage.write_json(run.path("artifacts/x.json"), {"ok": True})
    assert json.loads(run.path("artifacts/x.json").read_text()) == {"ok": True}


def test_a_run_records_its_writer_and_reads_stale_once_that_process_is_gone(tmp_path):
    import os
    import subprocess
    import sys

    from quantlib.core.runs import process_alive, process_start, run_status

    run = Run.create(tmp_path, load_profile("demo"), "data", tmp_path, run_id="r")
    owner = run.manifest["process"]
    assert owner["pid"] == os.getpid() and owner["host"] and owner["started"] == process_start(os.getpid())
    assert process_alive(os.getpid(), owner["started"]) and run.status == "RUNNING"
    assert not process_alive(os.getpid(), "1"), "same pid, another start time: a reused pid is not the writer"
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    assert not process_alive(proc.pid)
    doc = {**run.manifest, "process": {**owner, "pid": proc.pid}}
    assert run_status(doc, run.dir / "manifest.json") == "STALE"
    assert run_status({**doc, "status": "FAIL"}) == "FAIL"  # only a RUNNING run can be stale
    assert run_status({k: v for k, v in doc.items() if k != "process"}) == "RUNNING"  # older manifests: as recorded


def test_set_options_changes_the_remaining_stages_options_and_is_validated(tmp_path):
    resolved = load_profile("base", env={})
    run = Run.create(tmp_path, resolved, "data", tmp_path, run_id="opts")
    assert run.options.cache is True
    run.set_options(cache=False)
    assert run.options.cache is False and run.manifest["options"]["cache"] is False
    run.save()
    assert Run.open(tmp_path, "opts").options.cache is False
    with pytest.raises(ValidationError):
        run.set_options(depth=-1)
    assert run.options.depth == 0 and run.options.cache is False
