"""Live progress for the terminal: a long loop (walk-forward windows, ingestion, backfill chunks, a meta's
sleeves) reports `step(label, done, total)` or `note(text)`.

A stage runs in a Jupyter kernel whose output goes to its notebook, not to the terminal. So the executor
names a file in `FW_LIVE_PROGRESS` when it starts the kernel (`engine.progress.LiveProgress`); each
report is appended to it as one JSON line (a single short write: lines from several processes never
interleave), and the orchestrator renders them on its terminal. Without the variable (a notebook run by
hand, a test, a meta's sleeve whose output nobody watches) nothing is written.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from typing import TypeVar

ENV_VAR = "FW_LIVE_PROGRESS"  # no "__": never read as a profile override (core.profiles.env_overrides)
T = TypeVar("T")


def _emit(doc: dict) -> None:
    path = os.environ.get(ENV_VAR)
    if not path:
        return
    try:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(doc) + "\n")
    except OSError:  # progress is best effort: never fail a stage for it
        pass


def step(label: str, done: int, total: int) -> None:
    """`done` of `total` units of `label` are finished."""
    _emit({"step": label, "done": int(done), "total": int(total)})


def note(text: str) -> None:
    """One line for the terminal (e.g. a sleeve that finished)."""
    _emit({"note": text})


def track(items: Iterable[T], label: str, total: int) -> Iterator[T]:
    """`items`, reporting `label` 0/total first and k/total after the k-th item."""
    step(label, 0, total)
    for done, item in enumerate(items, start=1):
        yield item
        step(label, done, total)
