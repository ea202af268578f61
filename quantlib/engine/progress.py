"""The terminal's view of a running stage: what its kernel reports through `core.live` (walk-forward
windows, ingestion, backfill chunks, a meta's sleeves as each finishes), rendered on stderr while the
stage runs -- a tqdm bar with ETA per label on a terminal, plain lines otherwise (CI logs: a bar's first
and last step and at most one line per `PLAIN_EVERY_S` in between).

`LiveProgress` owns a private file for one run (`kernel_env` hands its path to the kernel in
`core.live.ENV_VAR`) and a thread that reads what is appended to it. Disabled (a meta's sleeve run,
whose `say` is its log), it hands the kernel an environment without the variable, so a nested kernel
never writes into its parent's terminal.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import IO

from quantlib.core.live import ENV_VAR

PLAIN_EVERY_S = 10.0  # without a terminal: at most one line per bar this often (plus its first and last)
POLL_S = 0.25


def eta_seconds(elapsed_s: float, done: int, total: int) -> float | None:
    """Seconds left at the mean pace so far (None before the first unit is done)."""
    if done <= 0 or total <= 0:
        return None
    return elapsed_s / done * max(total - done, 0)


def duration(seconds: float) -> str:
    """`42 s`, `3 min 05 s`, `1 h 02 min`."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def plain_line(label: str, done: int, total: int, elapsed_s: float) -> str:
    """`  walk-forward windows 12/40 (30 %) · 8 s · ETA 19 s` (no ETA before the first unit, none when done)."""
    pct = f" ({100 * done // total} %)" if total else ""
    eta = eta_seconds(elapsed_s, done, total)
    tail = f" · ETA {duration(eta)}" if eta is not None and done < total else ""
    return f"  {label} {done}/{total}{pct} · {duration(elapsed_s)}{tail}"


class LiveProgress:
    """Progress reported by a run's kernel, shown on `stream` (stderr) while the run executes."""

    def __init__(self, enabled: bool = True, stream: IO[str] | None = None, tty: bool | None = None) -> None:
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.path: Path | None = None
        self.bars: dict[str, dict] = {}  # label -> {"start", "last_print", "bar" (tqdm, TTY only)}
        self._offset = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if enabled:
            fd, name = tempfile.mkstemp(prefix="fw-progress-", suffix=".jsonl")
            os.close(fd)
            self.path = Path(name)
            self._thread = threading.Thread(target=self._follow, name="fw-live-progress", daemon=True)
            self._thread.start()

    def kernel_env(self) -> dict[str, str]:
        """The environment a stage kernel starts with: this process's, plus (or minus) the progress file."""
        env = {k: v for k, v in os.environ.items() if k != ENV_VAR}
        if self.path is not None:
            env[ENV_VAR] = str(self.path)
        return env

    def feed(self, line: str, now: float | None = None) -> None:
        """Render one reported line (a JSON object with `note`, or `step`, `done` and `total`)."""
        try:
            doc = json.loads(line)
        except ValueError:
            return
        now = time.monotonic() if now is None else now
        if "note" in doc:
            self._write(f"  {doc['note']}")
        elif "step" in doc:
            self._step(str(doc["step"]), int(doc.get("done", 0)), int(doc.get("total", 0)), now)

    def _step(self, label: str, done: int, total: int, now: float) -> None:
        state = self.bars.get(label)
        if state is None or done == 0 or done < state["done"]:  # a new bar (a label may run again)
            self._close_bar(label)
            state = self.bars[label] = {"start": now, "last_print": None, "done": 0, "bar": None}
        state["done"] = done
        if self.tty:
            if state["bar"] is None:
                from tqdm import tqdm

                size = shutil.get_terminal_size((100, 20))  # a pty that reports 0 x 0 would hide the bar
                state["bar"] = tqdm(total=total, desc=f"  {label}", unit="", file=self.stream, leave=True,
                                    ncols=min(size.columns, 120), nrows=size.lines, mininterval=0.2)
            state["bar"].n = done
            state["bar"].refresh()
            if done >= total:
                self._close_bar(label)
            return
        due = state["last_print"] is None or done >= total or now - state["last_print"] >= PLAIN_EVERY_S
        if due:
            state["last_print"] = now
            self._write(plain_line(label, done, total, now - state["start"]))
        if done >= total:
            self.bars.pop(label, None)

    def _close_bar(self, label: str) -> None:
        state = self.bars.pop(label, None)
        if state and state["bar"] is not None:
            state["bar"].close()

    def _write(self, text: str) -> None:
        if self.tty and any(s["bar"] is not None for s in self.bars.values()):
            from tqdm import tqdm

            tqdm.write(text, file=self.stream)
        else:
            self.stream.write(text + "\n")
            self.stream.flush()

    def _read_new(self) -> None:
        if self.path is None:
            return
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self._offset)
                chunk = fh.read()
        except OSError:
            return
        complete = chunk[:chunk.rfind(b"\n") + 1]  # a line still being written waits for the next read
        self._offset += len(complete)
        for line in complete.decode("utf-8", errors="replace").splitlines():
            self.feed(line)

    def _follow(self) -> None:
        while not self._stop.wait(POLL_S):
            self._read_new()
            for state in list(self.bars.values()):  # a terminal bar's elapsed time moves between steps
                if state["bar"] is not None:
                    state["bar"].refresh()

    def close(self) -> None:
        """Stop following, render what is left, close the bars and remove the file."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
            self._read_new()
        for label in list(self.bars):
            self._close_bar(label)
        if self.path is not None:
            self.path.unlink(missing_ok=True)
            self.path = None
