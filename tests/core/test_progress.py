"""core.progress: a live bar on a terminal, one summary line anywhere else."""
from __future__ import annotations

import io

import pytest

from quantlib.core.progress import is_terminal, progress, summary_line


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_not_a_terminal_prints_one_final_line():
    out = io.StringIO()
    assert list(progress(range(5), "windows", "window", file=out)) == [0, 1, 2, 3, 4]
    text = out.getvalue()
    assert text.count("\n") == 1 and "\r" not in text
    assert text.startswith("windows: 100%") and "5/5" in text and "window/s" in text


def test_total_given_for_an_iterator_and_a_stopped_loop_says_how_far_it_got():
    out = io.StringIO()
    with pytest.raises(ValueError):
        for i in progress(iter(range(10)), "ingest", "sym", total=10, file=out):
            if i == 3:
                raise ValueError("boom")
    assert "3/10" in out.getvalue() and " 30%" in out.getvalue()


def test_disabled_prints_nothing():
    out = io.StringIO()
    assert list(progress([1, 2], "x", file=out, enabled=False)) == [1, 2]
    assert out.getvalue() == ""


def test_terminal_gets_the_live_tqdm_bar():
    out = Tty()
    assert list(progress(range(3), "live", file=out)) == [0, 1, 2]
    assert "\r" in out.getvalue() and "3/3" in out.getvalue()


def test_is_terminal_and_summary_line():
    assert not is_terminal(io.StringIO()) and is_terminal(Tty())
    assert is_terminal(object()) is False  # no isatty at all
    assert summary_line("d", 2, 4, 1.0, "it").startswith("d:  50%")
