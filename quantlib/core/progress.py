"""Progress of a long loop, readable wherever it runs: a live bar in a terminal, one line elsewhere.

In an executed notebook (papermill, or JupyterLab's kernel) stdout is not a terminal and every `\\r`
refresh of a tqdm bar is saved as its own output (stderr: a pink block). `progress` therefore draws
tqdm's live bar only when the stream is a terminal; otherwise it prints tqdm's bar once, in its final
state (`ingest: 100%|██████████| 153/153 [00:06<00:00, 22.5sym/s]`), when the loop ends -- also when it
ends by an exception, so the line says how far it got.
"""
from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import IO, TypeVar

T = TypeVar("T")


def is_terminal(stream: IO) -> bool:
    """Whether `stream` is an interactive terminal (a notebook kernel's stdout is not)."""
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def summary_line(desc: str, n: int, total: int | None, elapsed: float, unit: str) -> str:
    """tqdm's bar for `n` of `total` items done in `elapsed` seconds (no trailing newline)."""
    from tqdm import tqdm

    return tqdm.format_meter(n, total, elapsed, prefix=desc, unit=unit, ncols=100)


def progress(iterable: Iterable[T], desc: str, unit: str = "it", total: int | None = None,
             file: IO | None = None, enabled: bool = True) -> Iterator[T]:
    """Yield `iterable`'s items, reporting progress on `file` (default: sys.stdout at call time).

    Terminal: tqdm's live bar. Anything else (notebook, pipe, log file): one summary line at the end.
    `enabled` False: no output at all. `total` defaults to `len(iterable)` when it has one."""
    stream = file if file is not None else sys.stdout
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    if not enabled:
        yield from iterable
        return
    if is_terminal(stream):
        from tqdm import tqdm

        yield from tqdm(iterable, desc=desc, unit=unit, total=total, file=stream, mininterval=0.5)
        return
    start, n = time.perf_counter(), 0
    try:
        for item in iterable:
            yield item
            n += 1
    finally:
        print(summary_line(desc, n, total, time.perf_counter() - start, unit), file=stream, flush=True)
