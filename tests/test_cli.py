"""`run_book.py`: help texts, exit codes (0 pass, 1 run FAIL, 2 user error) and one-line error messages.

Most cases call `run_book.main([...])` in-process (cheap); one subprocess per exit path checks that the
script wires `main()`'s return value to the process exit code. Every run directory is in `tmp_path`.
"""
from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from quantlib.engine.index import write_index
from quantlib.core.errors import ProfileError
from quantlib.core.profiles import default_profiles_dir, list_profiles, load_profile
from quantlib.core.runs import Run

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "run_book.py"


def _load_run_book():
    spec = importlib.util.spec_from_file_location("run_book", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


run_book = _load_run_book()


@pytest.fixture
def env(tmp_path, monkeypatch):
    """Isolated environment: lakehouse in tmp, fixed sim clock, small universe."""
    values = {"FW_DATA__LAKEHOUSE": str(tmp_path / "lakehouse"), "FW_SOURCE__AS_OF": "2026-11-25T06:00:00Z",
              "FW_SOURCE__N_BASES": "25", "FW_DATA__LOOKBACK_DAYS": "300"}
    for key in [k for k in os.environ if k.startswith("FW_")]:
        monkeypatch.delenv(key)
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    return {**os.environ, **values}


@pytest.fixture
def runs_dir(tmp_path) -> Path:
    return tmp_path / "runs"


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    """Run `main(argv)` in-process; return (exit code, stdout, stderr). argparse exits are caught."""
    try:
        code = run_book.main(list(argv))
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    out, err = capsys.readouterr()
    return code, out, err


def subprocess_cli(*argv: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *argv], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)


def make_run(runs_dir: Path, tmp_path: Path, status: str | None = None, phase: str = "data") -> Run:
    resolved = load_profile("demo", env={"FW_DATA__LAKEHOUSE": str(tmp_path / "lakehouse")})
    run = Run.create(runs_dir, resolved, phase, workspace=tmp_path)
    if status:
        run.manifest["status"] = status
        run.save()
    return run


# ---------------------------------------------------------------------------------------------- help
def test_top_level_help_lists_every_command_and_runs_dir(capsys):
    code, out, _ = cli(capsys, "--help")
    assert code == 0
    for command in ("data", "sleeve", "meta", "baseline", "demo", "audit-lookahead", "runs", "show"):
        assert f"\n    {command} " in out, out
    assert "--runs-dir" in out
    assert "Phase 1" in out and "list runs" in out and "INDEX.md" in out


@pytest.mark.parametrize("command, purpose", [
    ("data", ["data phase", "--profile", "--run-id", "resume"]),
    ("demo", ["simulated", "Data phase", "demo_meta", "--executor", "--ray-address"]),
    ("sleeve", ["PROFILE", "--skip-validation", "--skip-analysis", "--run-id", "audit"]),
    ("meta", ["PROFILE", "Ray", "--executor", "--ray-address", "completeness"]),
    ("baseline", ["rating_all", "long and short", "audit"]),
    ("audit-lookahead", ["RUN_ID", "--at", "perturbed"]),
    ("runs", ["List runs"]),
    ("show", ["INDEX.md", "RUN_ID"]),
])
def test_command_help_states_its_purpose(capsys, command, purpose):
    code, out, _ = cli(capsys, command, "--help")
    assert code == 0
    assert out.startswith(f"usage: run_book.py {command}")
    for phrase in purpose:
        assert phrase in out, (phrase, out)


def test_help_via_subprocess_exits_zero(env):
    result = subprocess_cli("--help", env=env)
    assert result.returncode == 0 and "usage: run_book.py" in result.stdout


def test_missing_command_is_a_usage_error(capsys):
    code, _, err = cli(capsys)
    assert code == 2 and "COMMAND" in err


# ---------------------------------------------------------------------------------------------- profiles
def test_unknown_profile_exits_2_naming_it_and_the_known_ones(env, runs_dir):
    result = subprocess_cli("--runs-dir", str(runs_dir), "data", "--profile", "no_such_profile", env=env)
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "no_such_profile" in lines[0] and "not found" in lines[0]
    for known in ("demo", "demo_equities"):
        assert known in lines[0]
    assert "Traceback" not in result.stderr
    assert not runs_dir.exists() or not any(runs_dir.iterdir()), "no run dir for a rejected profile"


def test_profile_name_with_a_path_is_rejected(capsys, env, runs_dir):
    code, _, err = cli(capsys, "--runs-dir", str(runs_dir), "data", "--profile", "../profiles/demo")
    assert code == 2
    assert "invalid profile" in err and "../profiles/demo" in err
    assert not runs_dir.exists() or not any(runs_dir.iterdir())


def test_unknown_env_override_key_exits_2_naming_the_variable_and_key(capsys, env, runs_dir, monkeypatch):
    monkeypatch.setenv("FW_DATA__LOOKBAK_DAYS", "10")  # typo of lookback_days
    code, _, err = cli(capsys, "--runs-dir", str(runs_dir), "data", "--profile", "demo")
    assert code == 2
    assert len(err.strip().splitlines()) == 1
    assert err.startswith("error: environment FW_DATA__LOOKBAK_DAYS='10': key 'data.lookbak_days': unknown key"), err
    assert "demo.yaml" not in err  # the variable is wrong, not the profile file
    assert not runs_dir.exists() or not any(runs_dir.iterdir())


def test_a_bad_env_value_is_attributed_to_the_variable(capsys, env, runs_dir, monkeypatch):
    monkeypatch.setenv("FW_DATA__LOOKBACK_DAYS", "abc")
    code, _, err = cli(capsys, "--runs-dir", str(runs_dir), "data", "--profile", "demo")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "environment FW_DATA__LOOKBACK_DAYS='abc': key 'data.lookback_days'" in err and "valid integer" in err
    assert "profiles/demo.yaml" not in err


def test_unknown_key_in_a_profile_file_names_the_file_and_key(tmp_path):
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    (profiles / "base.yaml").write_text((default_profiles_dir() / "base.yaml").read_text())
    (profiles / "typo.yaml").write_text(yaml.safe_dump({
        "description": "a profile with a misspelt filter key",
        "data": {"lookback_dayz": 200}}))
    with pytest.raises(ProfileError) as info:
        load_profile("typo", profiles_dir=profiles)
    message = str(info.value)
    assert str(profiles / "typo.yaml") in message
    assert "data.lookback_dayz" in message and "unknown key" in message

    (profiles / "toplevel.yaml").write_text("description: x\nfilters: []\n")
    with pytest.raises(ProfileError, match=r"toplevel\.yaml.*'filters'.*unknown key"):
        load_profile("toplevel", profiles_dir=profiles)
    assert "typo" in list_profiles(profiles)


# ---------------------------------------------------------------------------------------------- show
def test_show_missing_run_exits_2(capsys, runs_dir):
    code, out, err = cli(capsys, "--runs-dir", str(runs_dir), "show", "no-such-run")
    assert code == 2 and out == ""
    assert "no-such-run" in err and len(err.strip().splitlines()) == 1


def test_show_prints_index_of_a_run(capsys, runs_dir, tmp_path):
    run = make_run(runs_dir, tmp_path, status="FAIL")
    write_index(run, "data")
    code, out, _ = cli(capsys, "--runs-dir", str(runs_dir), "show", run.id)
    assert code == 0
    assert f"# Run `{run.id}`" in out and "**Status:** FAIL" in out and "`demo`" in out


@pytest.mark.parametrize("bad", ["../evil", "a/../evil", "a/..", "/etc/passwd", "a b"])
def test_show_rejects_path_traversal_run_ids(capsys, runs_dir, tmp_path, bad):
    # a real run one level up: `show ../evil` must not open it
    evil = make_run(tmp_path, tmp_path)  # created under tmp_path, i.e. runs_dir/..
    (tmp_path / "evil").mkdir(exist_ok=True)
    (tmp_path / "evil" / "manifest.json").write_text((evil.dir / "manifest.json").read_text())
    code, out, err = cli(capsys, "--runs-dir", str(runs_dir), "show", bad)
    assert code == 2 and out == ""
    assert "invalid run id" in err


@pytest.mark.parametrize("bad", ["../evil", "a/b"])
def test_data_rejects_path_traversal_run_ids(capsys, env, runs_dir, tmp_path, bad):
    runs_dir.mkdir()
    code, _, err = cli(capsys, "--runs-dir", str(runs_dir), "data", "--run-id", bad)
    assert code == 2
    assert "invalid run id" in err
    assert not (tmp_path / "evil").exists() and not (runs_dir / "a").exists()
    assert list(runs_dir.iterdir()) == []


def test_path_traversal_via_subprocess_exits_2(env, runs_dir):
    result = subprocess_cli("--runs-dir", str(runs_dir), "show", "../evil", env=env)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()] and "invalid run id" in result.stderr


# ---------------------------------------------------------------------------------------------- runs
def test_runs_lists_created_runs_with_status(capsys, runs_dir, tmp_path):
    passed = make_run(runs_dir, tmp_path, status="PASS")
    failed = make_run(runs_dir, tmp_path, status="FAIL")
    running = make_run(runs_dir, tmp_path)
    code, out, _ = cli(capsys, "--runs-dir", str(runs_dir), "runs")
    assert code == 0
    rows = {line.split()[0]: line.split() for line in out.splitlines()[1:]}
    assert set(rows) == {passed.id, failed.id, running.id}
    assert rows[passed.id][1:4] == ["demo", "data", "PASS"]
    assert rows[failed.id][3] == "FAIL"
    assert rows[running.id][3] == "RUNNING"


def test_runs_on_an_empty_dir_says_so(capsys, runs_dir):
    code, out, _ = cli(capsys, "--runs-dir", str(runs_dir), "runs")
    assert code == 0 and "no runs" in out


def test_runs_lists_a_corrupt_manifest_as_unreadable(capsys, runs_dir, tmp_path):
    good = make_run(runs_dir, tmp_path, status="PASS")
    (runs_dir / "broken-run").mkdir(parents=True)
    (runs_dir / "broken-run" / "manifest.json").write_text("{not json")
    code, out, _ = cli(capsys, "--runs-dir", str(runs_dir), "runs")
    assert code == 0
    assert any(line.split()[:1] == ["broken-run"] and "UNREADABLE" in line for line in out.splitlines()), out
    assert good.id in out


# ---------------------------------------------------------------------------------------------- meta tree
@pytest.mark.parametrize("sleeves, expected", [
    ("[{id: a, profile: demo_crypto_long}]", "meta.sleeves lists 1 sleeve"),
    ("[{id: a, profile: demo_crypto_long}, {id: a, profile: demo_crypto_short}]", "duplicated sleeve id(s) ['a']"),
    ("[{id: a, profile: demo_crypto_long, run_id: ../../etc}, {id: b, profile: demo_crypto_short}]",
     "sleeve 'a': pinned run: invalid run id '../../etc'"),
])
def test_a_bad_meta_tree_is_refused_before_any_run_exists(capsys, env, runs_dir, monkeypatch, sleeves, expected):
    monkeypatch.setenv("FW_META__SLEEVES", sleeves)
    code, out, err = cli(capsys, "--runs-dir", str(runs_dir), "meta", "demo_meta_pair", "--executor", "local")
    assert code == 2, (out, err)
    assert len(err.strip().splitlines()) == 1 and expected in err and "demo_meta_pair" in err
    assert not runs_dir.exists(), "nothing may be written for a refused meta"


# ---------------------------------------------------------------------------------------------- resume
def test_resuming_a_run_as_another_phase_or_profile_exits_2_and_writes_nothing(capsys, env, runs_dir, tmp_path):
    resolved = load_profile("demo_crypto_long", env={"FW_DATA__LAKEHOUSE": env["FW_DATA__LAKEHOUSE"]})
    run = Run.create(runs_dir, resolved, "sleeve", workspace=tmp_path, run_id="S")
    run.manifest["status"] = "PASS"
    run.save()
    write_index(run, "sleeve")
    before = {p: p.read_bytes() for p in run.dir.rglob("*") if p.is_file()}
    for argv, wanted in ((["data", "--run-id", "S"], "not a data run"),
                         (["data", "--profile", "demo", "--run-id", "S"], "not a data run of 'demo'"),
                         (["sleeve", "demo_crypto_short", "--run-id", "S", "--force"], "not a sleeve run of 'demo_crypto_short'")):
        code, out, err = cli(capsys, "--runs-dir", str(runs_dir), *argv)
        assert code == 2 and out == "", (argv, out, err)
        assert len(err.strip().splitlines()) == 1 and wanted in err and "sleeve demo_crypto_long --run-id S" in err
    assert {p: p.read_bytes() for p in run.dir.rglob("*") if p.is_file()} == before
    assert "## Gates" in (run.dir / "INDEX.md").read_text()


def test_resuming_with_other_profile_values_exits_2_naming_them(capsys, env, runs_dir, tmp_path, monkeypatch):
    run = Run.create(runs_dir, load_profile("demo", env={**env, "FW_BOOK__CELL_TIMEOUT_S": "1"}), "data", tmp_path)
    run.manifest["status"] = "FAIL"
    run.save()
    monkeypatch.setenv("FW_BOOK__CELL_TIMEOUT_S", "600")
    before = (run.dir / "manifest.json").read_bytes()
    code, out, err = cli(capsys, "--runs-dir", str(runs_dir), "data", "--run-id", run.id)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and "book.cell_timeout_s: 1 → 600" in err and "--force" in err
    assert (run.dir / "manifest.json").read_bytes() == before
    code, out, _ = cli(capsys, "data", "--help")
    assert "--force" in out


# ---------------------------------------------------------------------------------------------- RUNNING / STALE
def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_runs_and_show_read_a_running_run_whose_process_is_gone_as_stale(capsys, runs_dir, tmp_path):
    live = make_run(runs_dir, tmp_path)  # RUNNING, written by this (live) process
    gone = make_run(runs_dir, tmp_path)
    gone.manifest["process"]["pid"] = _dead_pid()
    gone.save()
    far = make_run(runs_dir, tmp_path)  # another host: its pid cannot be checked, the manifest's age decides
    far.manifest["process"]["host"] = "elsewhere.example"
    far.save()
    old = make_run(runs_dir, tmp_path)
    old.manifest["process"]["host"] = "elsewhere.example"
    old.save()
    long_ago = time.time() - 13 * 3600
    os.utime(old.dir / "manifest.json", (long_ago, long_ago))

    code, out, _ = cli(capsys, "--runs-dir", str(runs_dir), "runs")
    rows = {line.split()[0]: line.split()[3] for line in out.splitlines()[1:]}
    assert code == 0 and rows == {live.id: "RUNNING", gone.id: "STALE", far.id: "RUNNING", old.id: "STALE"}
    assert Run.open(runs_dir, gone.id).manifest["status"] == "RUNNING"  # computed when read, never written

    assert not (gone.dir / "INDEX.md").exists()
    code, out, _ = cli(capsys, "--runs-dir", str(runs_dir), "show", gone.id)
    assert code == 0 and out.startswith(f"# Run `{gone.id}`") and "{'run_id'" not in out
    assert "**Status:** STALE" in out and f"pid {gone.manifest['process']['pid']}" in out and "is gone" in out
    code, out, _ = cli(capsys, "--runs-dir", str(runs_dir), "show", old.id)
    assert "**Status:** STALE" in out and "elsewhere.example) has not written the manifest for 12 h" in out


@pytest.mark.e2e
def test_sigterm_during_a_run_exits_143_with_the_run_interrupted(env, runs_dir):
    proc = subprocess.Popen([sys.executable, str(SCRIPT), "--runs-dir", str(runs_dir), "data", "--run-id", "T"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    manifest = runs_dir / "T" / "manifest.json"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and '"status": "running"' not in (manifest.read_text() if manifest.exists() else ""):
        time.sleep(0.2)
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, (out, err)
    assert "INTERRUPTED" in err and "--run-id T" in err and "Traceback" not in err
    run = Run.open(runs_dir, "T")
    assert run.manifest["status"] == run.status == "INTERRUPTED" and run.manifest["interrupted"]["by"] == "SIGTERM"
    assert run.manifest["stages"][run.manifest["interrupted"]["stage"]]["status"] == "interrupted"
    assert "**Status:** INTERRUPTED" in (run.dir / "INDEX.md").read_text()
