"""Shared fixtures: a small simulated venue with a fixed clock and a temporary lakehouse."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from quantlib.core import storage
from quantlib.core.runs import Run

from quantlib.data.lakehouse import Lakehouse
from quantlib.core.profiles import load_profile
from quantlib.data.sources.simulated import SimExchange

AS_OF = "2026-11-25T06:00:00Z"

#: headless Chromium (Debian's `chromium`; `.ci/run` installs it): browser tests skip without it on a
#: developer's machine, and fail under CI (`CI` set) -- a check that charts draw must not vanish there
CHROMIUM = shutil.which("chromium")
needs_chromium = pytest.mark.skipif(CHROMIUM is None and not os.environ.get("CI"),
                                    reason="`chromium` is not on PATH: cannot check that charts draw")
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync")


def dom(page: Path, budget_ms: int = 8000) -> str:
    """The page's DOM after its scripts ran, in headless Chromium from a file:// URL."""
    assert CHROMIUM, "`chromium` is not on PATH (CI installs Debian's chromium in .ci/run)"
    result = subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, "--dump-dom", f"--virtual-time-budget={budget_ms}",
                             page.resolve().as_uri()], capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


@pytest.fixture(scope="session")
def sim() -> SimExchange:
    return SimExchange("crypto", seed=7, as_of=AS_OF, n_bases=25)


@pytest.fixture
def lake(tmp_path) -> Lakehouse:
    return Lakehouse(tmp_path / "lakehouse")


@pytest.fixture
def data_cfg():
    """The base profile's data section with a shorter lookback (faster tests)."""
    profile = load_profile("demo", env={"FW_DATA__LOOKBACK_DAYS": "200", "FW_DATA__WORKERS": "4"}).profile
    return profile.data


# ------------------------------------------------------------------ one shared offline data phase
ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "run_book.py"
OVERRIDES = {"FW_SOURCE__AS_OF": "2026-11-25T06:00:00Z", "FW_SOURCE__N_BASES": "25",
             "FW_DATA__LOOKBACK_DAYS": "300"}


@dataclass
class DataRun:
    result: subprocess.CompletedProcess
    run: Run
    lake: Path
    lake_hashes: dict[str, str]  # lakehouse table -> sha256 right after this run


@dataclass
class Workspace:
    runs_dir: Path
    lake: Path
    env: dict[str, str]

    def book(self, *argv: str, env: dict[str, str] | None = None,
             runs_dir: Path | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(SCRIPT), "--runs-dir", str(runs_dir or self.runs_dir), *argv],
                              cwd=ROOT, env={**self.env, **(env or {})}, capture_output=True, text=True, timeout=900)

    def run_of(self, result: subprocess.CompletedProcess, runs_dir: Path | None = None) -> Run:
        """The run a `run_book.py` call created (its id is on the first `run ... (` line)."""
        match = re.search(r"^run (\S+) \(", result.stdout, flags=re.M)
        assert match, f"no run id in stdout:\n{result.stdout}\n{result.stderr}"
        return Run.open(runs_dir or self.runs_dir, match.group(1))

    def data_run(self) -> DataRun:
        result = self.book("data", "--profile", "demo")
        hashes = {p.name: storage.sha256_file(p) for p in self.lake.glob("*.parquet")}
        return DataRun(result, self.run_of(result), self.lake, hashes)


@pytest.fixture(scope="session")
def workspace(tmp_path_factory) -> Workspace:
    base = tmp_path_factory.mktemp("data_phase")
    lake = base / "lakehouse"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FW_")}
    env.update(OVERRIDES, FW_DATA__LAKEHOUSE=str(lake))
    return Workspace(base / "runs", lake, env)


@pytest.fixture(scope="session")
def first(workspace) -> DataRun:
    return workspace.data_run()


@pytest.fixture(scope="session")
def second(workspace, first) -> DataRun:
    """A second data run against the lakehouse the first one filled."""
    return workspace.data_run()


# ------------------------------------------------------------------ two demo sleeves on that data
SHORT_ENV = {"FW_SLEEVE__MIN_ASSETS_AFTER_HEALTH": "3"}  # the small test universe has few bearish names


def art(run: Run, rel: str):
    path = run.dir / rel
    return json.loads(path.read_text()) if rel.endswith(".json") else pd.read_parquet(path)


@pytest.fixture(scope="session")
def long_sleeve(workspace, first):
    """The full sleeve book, validation and post-analysis included."""
    result = workspace.book("sleeve", "demo_crypto_long")
    return result, workspace.run_of(result)


@pytest.fixture(scope="session")
def short_sleeve(workspace, first):
    result = workspace.book("sleeve", "demo_crypto_short", "--skip-validation", "--skip-analysis", env=SHORT_ENV)
    return result, workspace.run_of(result)


def stage_running(manifest: Path, stage: str | None = None) -> bool:
    """The run whose manifest this is has a stage (`stage`, or any) under way (RUNNING with that stage `running`)."""
    try:
        doc = json.loads(manifest.read_text())
    except (OSError, ValueError):
        return False
    stages = doc.get("stages", {})
    running = [stages.get(stage, {})] if stage else stages.values()
    return doc.get("status") == "RUNNING" and any(s.get("status") == "running" for s in running)


def spy_local_pools(monkeypatch) -> list[int]:
    """The sizes of the local process pools `core.parallel` starts from now on (the test's monkeypatch)."""
    from quantlib.core import parallel

    started: list[int] = []

    class Spy(parallel._LocalPool):
        def __init__(self, fn, shared, items, workers):
            started.append(workers)
            super().__init__(fn, shared, items, workers)

    monkeypatch.setattr(parallel, "_LocalPool", Spy)
    return started


#: fixtures that run whole phases with `run_book.py` in subprocesses (minutes each, shared per session)
END_TO_END_FIXTURES = frozenset({"workspace", "first", "second", "afternoon", "long_sleeve", "short_sleeve"})


def pytest_collection_modifyitems(items) -> None:
    """Mark every test that needs a real run `e2e`: `pytest -m "not e2e"` is the fast loop."""
    for item in items:
        if END_TO_END_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.e2e)
