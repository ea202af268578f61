"""One small exception hierarchy. Every message names the file/key/stage at fault and the fix.

`run_book.py` prints ``str(error)`` on one line and exits non-zero for any ``WorkbookError``.
"""
from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class WorkbookError(Exception):
    """Base class: a failure the user can act on (message = what is wrong + how to fix it)."""


class ProfileError(WorkbookError):
    """An invalid profile or scanner file: unknown key, bad type, missing file, cyclic `extends`."""


class IdentifierError(WorkbookError):
    """A symbol or run id that does not match its pattern (rejected before it touches a path)."""


class SourceError(WorkbookError):
    """A market-data source failed: bad symbol, authentication, network after retries."""


class DataError(WorkbookError):
    """Missing or corrupt lakehouse/run data."""


class ResumeError(WorkbookError):
    """A `--run-id` resume refused: another phase or profile, a live run, or a profile that changed."""


class StageError(WorkbookError):
    """A book stage failed (failing cell, timeout, missing declared output)."""


class GateError(WorkbookError):
    """A computed gate failed (health, sign test, audit)."""


class OptimizationError(GateError):
    """An optimization could not produce valid weights (message names method/profile and the fix)."""


class RunInterrupted(KeyboardInterrupt):
    """SIGTERM (or SIGINT) while a run executes: handled like Ctrl-C, never a WorkbookError.

    A KeyboardInterrupt subclass, so every cleanup that already runs on Ctrl-C (kernels, Ray) runs."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def first_line(text: object) -> str:
    """The first non-blank line of `text` (an exception's message in a one-line error)."""
    lines = [line for line in str(text).splitlines() if line.strip()]
    return lines[0].strip() if lines else ""


@contextmanager
def interruptible() -> Iterator[dict]:
    """SIGTERM and SIGINT raise `RunInterrupted` in the main thread (in another thread, where Python cannot
    install handlers, nothing changes); with `state["hold"]` set, a signal is kept in `state["pending"]`."""
    state: dict = {"hold": False, "pending": None}
    if threading.current_thread() is not threading.main_thread():
        yield state
        return

    def handler(signum: int, frame) -> None:
        if state["hold"]:
            state["pending"] = state["pending"] or signum
            return
        raise RunInterrupted(signum)

    previous = {signum: signal.signal(signum, handler) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield state
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)
