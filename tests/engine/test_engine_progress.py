"""engine.progress (named apart from tests/core/test_progress.py: the test folders are not packages)."""
import io
import json
import os
import subprocess
import sys
import time

import pytest

from quantlib.core.live import ENV_VAR
from quantlib.engine.progress import PLAIN_EVERY_S, LiveProgress, duration, eta_seconds, plain_line


@pytest.mark.parametrize("elapsed, done, total, eta", [(10.0, 2, 10, 40.0), (9.0, 3, 3, 0.0), (5.0, 0, 4, None),
                                                       (1.0, 1, 0, None)])
def test_eta_is_the_mean_pace_times_what_is_left(elapsed, done, total, eta):
    assert eta_seconds(elapsed, done, total) == eta


@pytest.mark.parametrize("seconds, text", [(0.4, "0 s"), (42.6, "43 s"), (185, "3 min 05 s"), (3720, "1 h 02 min")])
def test_duration(seconds, text):
    assert duration(seconds) == text


def test_plain_line():
    assert plain_line("walk-forward windows", 12, 40, 8.0) == "  walk-forward windows 12/40 (30 %) · 8 s · ETA 19 s"
    assert plain_line("sleeves", 0, 3, 0.0) == "  sleeves 0/3 (0 %) · 0 s"
    assert plain_line("sleeves", 3, 3, 95.0) == "  sleeves 3/3 (100 %) · 1 min 35 s"


def _lines(docs: list[tuple[float, dict]], tty: bool = False) -> list[str]:
    out = io.StringIO()
    live = LiveProgress(enabled=False, stream=out, tty=tty)
    for now, doc in docs:
        live.feed(json.dumps(doc), now=now)
    live.close()
    return out.getvalue().splitlines()


def test_without_a_terminal_a_bar_prints_its_first_and_last_step_and_one_line_per_interval():
    steps = [(float(k), {"step": "windows", "done": k, "total": 30}) for k in range(31)]
    lines = _lines(steps + [(31.0, {"note": "sleeve a (demo_crypto_long) PASS in 31.0 s [1/3]"})])
    assert lines == [plain_line("windows", 0, 30, 0.0), plain_line("windows", 10, 30, 10.0),
                     plain_line("windows", 20, 30, 20.0), plain_line("windows", 30, 30, 30.0),
                     "  sleeve a (demo_crypto_long) PASS in 31.0 s [1/3]"]
    assert PLAIN_EVERY_S == 10.0


def test_a_label_that_starts_again_is_a_new_bar_and_junk_is_ignored():
    lines = _lines([(0.0, {"step": "x", "done": 0, "total": 2}), (1.0, {"step": "x", "done": 2, "total": 2}),
                    (5.0, {"step": "x", "done": 0, "total": 4})])
    assert lines == [plain_line("x", 0, 2, 0), plain_line("x", 2, 2, 1.0), plain_line("x", 0, 4, 0)]
    live = LiveProgress(enabled=False, stream=io.StringIO(), tty=False)
    live.feed("not json")
    live.feed("{\"what\": 1}")
    assert live.stream.getvalue() == ""


def test_on_a_terminal_a_tqdm_bar_shows_the_count_and_notes_print_above_it():
    out = "\n".join(_lines([(0.0, {"step": "walk-forward windows", "done": 0, "total": 4}),
                            (1.0, {"note": "hello"}),
                            (2.0, {"step": "walk-forward windows", "done": 4, "total": 4})], tty=True))
    assert "walk-forward windows" in out and "4/4" in out and "hello" in out


def test_the_kernel_env_names_the_file_only_when_enabled(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "/parent/meta/progress")  # inherited from a meta's kernel
    off = LiveProgress(enabled=False)
    assert ENV_VAR not in off.kernel_env() and off.kernel_env()["PATH"] == os.environ["PATH"]
    on = LiveProgress(enabled=True, stream=io.StringIO(), tty=False)
    try:
        assert on.kernel_env()[ENV_VAR] == str(on.path) and on.path.exists()
    finally:
        on.close()
    assert on.path is None


def test_reports_from_another_process_reach_the_terminal_while_it_runs():
    """The follower thread renders what a child process (as a stage kernel would) appends, before close()."""
    out = io.StringIO()
    live = LiveProgress(enabled=True, stream=out, tty=False)
    code = ("from quantlib.core import live\nfor _ in live.track(range(3), 'backfill chunks', 3): pass\n"
            "live.note('done here')")
    try:
        subprocess.run([sys.executable, "-c", code], env=live.kernel_env(), check=True, timeout=60)
        deadline = time.monotonic() + 10
        while "done here" not in out.getvalue() and time.monotonic() < deadline:
            time.sleep(0.05)
        seen = out.getvalue().splitlines()
    finally:
        live.close()
    assert seen[0].startswith("  backfill chunks 0/3") and seen[1].startswith("  backfill chunks 3/3 (100 %)")
    assert seen[-1] == "  done here"
