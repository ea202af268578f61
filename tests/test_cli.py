"""`run_book.py`: help texts, exit codes (0 pass, 1 run FAIL, 2 user error) and one-line error messages.

Most cases call `run_book.main([...])` in-process (cheap); one subprocess per exit path checks that the
script wires `main()`'s return value to the process exit code. Every run directory is in `tmp_path`.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import re
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
    ("[{id: a, profile: demo_crypto_long}, {id: b, profile: demo}]",
     "sleeve 'b' names data profile 'demo'; a sleeve needs a sleeve profile"),
    ("[{id: a, profile: demo_crypto_long}, {id: b, profile: demo_meta_pair}]",
     "sleeve 'b' names meta profile 'demo_meta_pair' as `profile`; use `meta_profile: demo_meta_pair`"),
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


# ---------------------------------------------------------------------------------------------- conventions
def test_version_prints_the_package_version_and_workspace(capsys):
    code, out, _ = cli(capsys, "--version")
    assert code == 0 and out.startswith("fractal-workbook ") and "python 3." in out and str(ROOT) in out


def test_runs_dir_is_accepted_after_the_command_too(capsys, runs_dir, tmp_path):
    run = make_run(runs_dir, tmp_path, status="PASS")
    for argv in (["runs", "--runs-dir", str(runs_dir)], ["--runs-dir", str(tmp_path / "elsewhere"), "runs",
                                                          "--runs-dir", str(runs_dir)]):
        code, out, _ = cli(capsys, *argv)
        assert code == 0 and run.id in out, (argv, out)
    code, out, _ = cli(capsys, "show", run.id, "--runs-dir", str(runs_dir))
    assert code == 0 and f"# Run `{run.id}`" in out
    code, out, _ = cli(capsys, "runs", "prune", "--keep", "1", "--runs-dir", str(runs_dir))
    assert code == 0 and str(runs_dir) in out


@pytest.mark.parametrize("argv, suggestion", [
    (["sleev", "demo_crypto_long"], "did you mean 'sleeve'?"),
    (["audit-lookahed", "R"], "did you mean 'audit-lookahead'?"),
    (["baseline", "rating_al"], "did you mean 'rating_all'?"),
])
def test_a_mistyped_command_or_choice_suggests_the_closest(capsys, argv, suggestion):
    code, _, err = cli(capsys, *argv)
    assert code == 2 and suggestion in err.strip().splitlines()[-1], err


def test_a_mistyped_profile_suggests_the_closest(capsys, env, runs_dir):
    code, _, err = cli(capsys, "--runs-dir", str(runs_dir), "sleeve", "demo_crypto_lnog")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "'demo_crypto_lnog' not found" in err and "did you mean 'demo_crypto_long'?" in err
    assert not runs_dir.exists()


@pytest.mark.parametrize("argv, wanted", [
    (["sleeve", "demo_meta"], "profile 'demo_meta' is a meta profile, not a sleeve profile; run it with "
                              "`run_book.py meta demo_meta`"),
    (["sleeve", "demo"], "profile 'demo' is a data profile, not a sleeve profile; run it with "
                         "`run_book.py data --profile demo`"),
    (["data", "--profile", "demo_crypto_long"], "profile 'demo_crypto_long' is a sleeve profile, not a data "
                                                "profile; run it with `run_book.py sleeve demo_crypto_long`"),
    (["meta", "demo_crypto_long"], "'demo_crypto_long' is not a meta profile"),
])
def test_every_run_command_checks_the_profile_kind_before_a_run_exists(capsys, env, runs_dir, argv, wanted):
    code, out, err = cli(capsys, "--runs-dir", str(runs_dir), *argv)
    assert code == 2 and out == "", (out, err)
    assert len(err.strip().splitlines()) == 1 and wanted in err, err
    assert not runs_dir.exists(), "a refused profile leaves no run"


def test_p_overrides_are_attributed_to_the_option(capsys, env, runs_dir):
    code, _, err = cli(capsys, "--runs-dir", str(runs_dir), "data", "--profile", "demo", "-p", "data.lookbak_days=3")
    assert code == 2 and err.startswith("error: -p data.lookbak_days=3: key 'data.lookbak_days': unknown key"), err
    code, _, err = cli(capsys, "--runs-dir", str(runs_dir), "data", "-p", "lookback_days=3")
    assert code == 2 and "expected section.key=value" in err and len(err.strip().splitlines()) == 1
    code, _, err = cli(capsys, "--runs-dir", str(runs_dir), "data", "-p", "dta.lookback_days=3")
    assert code == 2 and "-p dta.lookback_days=3: unknown profile section 'dta'" in err
    assert not runs_dir.exists()


def test_p_overrides_are_recorded_and_resumed_like_fw_variables(capsys, env, runs_dir, tmp_path):
    from quantlib.core.profiles import ParamEnv
    from quantlib.engine.resume import reopen

    given = ParamEnv(env, ["book.cell_timeout_s=7", "data.anchors=[SIM:BTCUSDT]"])
    run = Run.create(runs_dir, load_profile("demo", env=given), "data", tmp_path)
    assert run.manifest["env_overrides"]["book"] == {"cell_timeout_s": 7}
    assert run.profile.book.cell_timeout_s == 7 and run.profile.data.anchors == ["SIM:BTCUSDT"]
    run.manifest["status"] = "FAIL"
    run.save()
    same = {**env, "FW_BOOK__CELL_TIMEOUT_S": "7", "FW_DATA__ANCHORS": "[SIM:BTCUSDT]"}  # the same, as variables
    assert reopen(runs_dir, run.id, "data", None, env=same).id == run.id
    assert reopen(runs_dir, run.id, "data", None, env=ParamEnv(env, ["book.cell_timeout_s=7",
                                                                      "data.anchors=[SIM:BTCUSDT]"])).id == run.id
    code, out, err = cli(capsys, "--runs-dir", str(runs_dir), "data", "--run-id", run.id)  # without them: refused
    assert code == 2 and out == "" and "book.cell_timeout_s: 7 → " in err
    assert "overrides then: FW_BOOK__CELL_TIMEOUT_S=7" in err


def test_runs_dir_that_is_a_file_is_one_line(capsys, env, tmp_path):
    afile = tmp_path / "not-a-dir"
    afile.write_text("x")
    for argv in (["runs"], ["data"], ["show", "R"]):
        code, out, err = cli(capsys, "--runs-dir", str(afile), *argv)
        assert code == 2 and out == "", (argv, out)
        assert err.strip() == f"error: --runs-dir {afile}: a file, not a directory; point --runs-dir at a directory " \
                              f"(it is created if missing)", err


def _unwritable(tmp_path: Path) -> Path:
    """A directory this process cannot create files in (root ignores modes: /sys, where nothing can be created)."""
    if os.geteuid() != 0:
        path = tmp_path / "read-only"
        path.mkdir()
        path.chmod(0o555)
        return path
    if not Path("/sys").is_dir() or os.access("/sys", os.W_OK) and Path("/sys/fw-probe").exists():
        pytest.skip("no unwritable directory for root")
    return Path("/sys")


def test_a_read_only_runs_dir_is_one_line(capsys, env, tmp_path):
    readonly = _unwritable(tmp_path)
    code, out, err = cli(capsys, "--runs-dir", str(readonly / "runs"), "data")
    assert code == 2 and out == ""
    assert err.startswith(f"error: --runs-dir {readonly / 'runs'}: not writable (") and "--runs-dir" in err
    assert len(err.strip().splitlines()) == 1


def test_an_unwritable_lakehouse_names_data_lakehouse(capsys, env, runs_dir, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for lake in (blocker / "lake", _unwritable(tmp_path) / "lake"):
        code, out, err = cli(capsys, "--runs-dir", str(runs_dir), "data", "-p", f"data.lakehouse={lake}")
        assert code == 2 and out == "", err
        assert err.startswith(f"error: data.lakehouse {lake}: not writable (") and "FW_DATA__LAKEHOUSE" in err, err
    assert not runs_dir.exists()


def test_audit_lookahead_refuses_a_bad_date_and_a_data_run(capsys, runs_dir, tmp_path):
    run = make_run(runs_dir, tmp_path, status="PASS")
    code, out, err = cli(capsys, "--runs-dir", str(runs_dir), "audit-lookahead", run.id, "--at", "not-a-date")
    assert code == 2 and out == ""
    assert err.strip() == "error: --at 'not-a-date': not a date; give an ISO date such as 2026-06-01"
    for command in ("audit-lookahead", "replay"):
        code, _, err = cli(capsys, "--runs-dir", str(runs_dir), command, run.id)
        assert code == 2 and len(err.strip().splitlines()) == 1
        assert f"run {run.id} is a data run, not a sleeve run" in err, err


def _meta_tree(runs_dir: Path, tmp_path: Path) -> tuple[Run, list[Run]]:
    """A meta run with sleeves a, nested (a meta holding x) and b, as `runs/<META>/sleeves/<id>/` (no stage runs)."""
    def create(where: Path, profile: str, phase: str, run_id: str | None = None) -> Run:
        run = Run.create(where, load_profile(profile), phase, workspace=tmp_path, run_id=run_id)
        run.manifest["status"] = "PASS"
        run.save()
        return run

    meta = create(runs_dir, "demo_meta", "meta")
    nested = create(meta.dir / "sleeves", "demo_meta_pair", "meta", "nested")
    return meta, [create(meta.dir / "sleeves", "demo_crypto_long", "sleeve", "a"), nested,
                  create(nested.dir / "sleeves", "demo_crypto_short", "sleeve", "x"),
                  create(meta.dir / "sleeves", "demo_equities_long", "sleeve", "b")]


def test_runs_shows_a_metas_sleeve_runs_as_a_tree(capsys, runs_dir, tmp_path):
    meta, _ = _meta_tree(runs_dir, tmp_path)
    data = make_run(runs_dir, tmp_path, status="PASS")
    code, out, _ = cli(capsys, "--runs-dir", str(runs_dir), "runs")
    assert code == 0
    labels = [re.split(r"\s{2,}", line)[0] if not line.startswith(" ") else
              "   " + re.split(r"\s{2,}", line[3:])[0] for line in out.splitlines()[1:]]
    assert labels == [data.id, meta.id, f"├─ {meta.id}/a", f"├─ {meta.id}/b", f"└─ {meta.id}/nested",
                      f"   └─ {meta.id}/nested/x"], out
    row = next(line for line in out.splitlines() if line.startswith(f"├─ {meta.id}/a"))
    assert row.split()[2:5] == ["demo_crypto_long", "sleeve", "PASS"]


def test_show_and_audit_lookahead_take_meta_slash_sleeve(capsys, runs_dir, tmp_path):
    meta, (a, _, x, _) = _meta_tree(runs_dir, tmp_path)
    code, out, _ = cli(capsys, "--runs-dir", str(runs_dir), "show", f"{meta.id}/a")
    assert code == 0 and out.startswith("# Run `a`") and "`demo_crypto_long`" in out
    code, out, _ = cli(capsys, "--runs-dir", str(runs_dir), "show", f"{meta.id}/nested/x")
    assert code == 0 and "`demo_crypto_short`" in out
    code, _, err = cli(capsys, "--runs-dir", str(runs_dir), "show", f"{meta.id}/zz")
    assert code == 2 and f"no sleeve run 'zz' in {meta.id} (its sleeves: a, b, nested)" in err
    code, out, err = cli(capsys, "--runs-dir", str(runs_dir), "audit-lookahead", f"{meta.id}/a")
    assert code == 2 and "look-ahead audit of a:" in out  # resolved: the sleeve run has no stage outputs
    assert "missing file" in err and "sleeves/a/artifacts/universe.json" in err and len(err.strip().splitlines()) == 1


def test_meta_report_is_named_only_when_it_exists(capsys, tmp_path):
    from quantlib.commands.phases import print_meta_report

    print_meta_report(tmp_path)
    assert capsys.readouterr().out.strip() == f"no meta report (the run stopped before it): {tmp_path / 'INDEX.md'}"
    (tmp_path / "meta_portfolio_report.md").write_text("# report")
    print_meta_report(tmp_path)
    assert capsys.readouterr().out.strip() == f"meta report: {tmp_path / 'meta_portfolio_report.md'}"


# ---------------------------------------------------------------------------------------------- lazy commands
def test_every_command_resolves_and_help_imports_no_command():
    """Each "module:function" of the parser imports; `--help` / `runs` / `show` start without scipy, pandas or
    the walk-forward (each command's module is imported only when it runs)."""
    from quantlib.cli import build_parser, resolve

    parser = build_parser()
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    funcs = [p.get_default("func") for p in actions[0].choices.values()]
    assert all(isinstance(f, str) and callable(resolve(f)) for f in funcs), funcs
    code = ("import sys; from quantlib.cli import build_parser, resolve; build_parser(); print(sorted(m for m in "
            "('scipy', 'pandas', 'quantlib.backtest.walkforward', 'quantlib.engine.executor') if m in sys.modules)); "
            "resolve('quantlib.commands.listing:runs'); resolve('quantlib.commands.listing:show'); "
            "print(sorted(m for m in ('scipy', 'pandas', 'quantlib.backtest.walkforward') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}).stdout.splitlines()
    assert out == ["[]", "[]"], out


def test_the_baseline_names_the_parser_offers_are_the_ones_the_command_runs():
    """cli keeps its own copy (importing commands.phases would load the executor for `--help`)."""
    from quantlib import cli
    from quantlib.commands import phases

    assert cli.BASELINES == tuple(phases.BASELINES)
