"""Where a replayed record first differs from the recorded one: frames cell by cell, JSON key by key.

Equality is exact. Frames: column names and order, row count, index (values, dtype, name), column
dtypes, then every value (floats compared with ==, so only an identical number matches; NaN equals
NaN, NaT equals NaT); `pandas.testing.assert_frame_equal(check_exact=True)` is the final word, so
nothing it would call a difference passes. JSON documents are compared as parsed from their files:
same keys in any order, lists element by element, scalars of the same type and value (1 and 1.0
differ: their files differ). The first difference is reported in reading order -- columns, rows,
index, dtypes, then the lowest row holding a different value (its leftmost such column); for JSON
the first key path in the recorded document's order.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

MISSING = "(missing)"


@dataclass(frozen=True)
class Difference:
    """The first field where a replay differs from its record."""

    artifact: str      # run-relative path, with the selection compared (e.g. `[decision=2026-06-01]`)
    field: str         # column, JSON key path, or `columns`, `rows`, `index`, `<column> (dtype)`
    row: str           # row number with its key columns ("" for JSON and whole-frame fields)
    recorded: Any
    replayed: Any

    def __str__(self) -> str:
        where = self.field + (f", row {self.row}" if self.row else "")
        return f"{self.artifact}: {where}: recorded {show(self.recorded)}, replayed {show(self.replayed)}"


def show(value: Any) -> str:
    """A value as printed in a difference: floats with every digit (repr), strings quoted."""
    if isinstance(value, (float, np.floating)):
        return repr(float(value))
    if isinstance(value, str) and value != MISSING:
        return repr(value)
    return str(value)


def _is_na(value: Any) -> bool:
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):  # arrays and lists
        return False


def same_value(a: Any, b: Any) -> bool:
    """One cell: equal values, or both missing; lists and arrays element by element."""
    if isinstance(a, (list, tuple, np.ndarray)) or isinstance(b, (list, tuple, np.ndarray)):
        if not isinstance(a, (list, tuple, np.ndarray)) or not isinstance(b, (list, tuple, np.ndarray)):
            return False
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b))
    if _is_na(a) or _is_na(b):
        return _is_na(a) and _is_na(b)
    return bool(a == b)


def _unequal(a: pd.Series, b: pd.Series) -> np.ndarray:
    """Row mask where two columns of one dtype hold different values."""
    if isinstance(a.dtype, np.dtype) and a.dtype.kind == "f":
        x, y = a.to_numpy(), b.to_numpy()
        return (x != y) & ~(np.isnan(x) & np.isnan(y))
    if isinstance(a.dtype, np.dtype) and a.dtype.kind in "iub":
        return a.to_numpy() != b.to_numpy()
    if isinstance(a.dtype, pd.DatetimeTZDtype) or pd.api.types.is_datetime64_dtype(a.dtype):
        na = a.isna().to_numpy() & b.isna().to_numpy()
        return (a.to_numpy() != b.to_numpy()) & ~na
    x, y = a.to_numpy(dtype=object), b.to_numpy(dtype=object)
    try:
        flagged = np.asarray(x != y, dtype=bool)
    except (ValueError, TypeError):  # cells holding arrays: compare them one by one
        flagged = np.ones(len(x), dtype=bool)
    for i in np.flatnonzero(flagged):
        flagged[i] = not same_value(x[i], y[i])
    return flagged


def _row(frame: pd.DataFrame, i: int, keys: Sequence[str]) -> str:
    labels = [f"{k}={frame[k].iloc[i]}" for k in keys if k in frame.columns]
    if frame.index.name is not None:
        labels.insert(0, f"{frame.index.name}={frame.index[i]}")
    return f"{i}" + (f" ({', '.join(labels)})" if labels else "")


def frame_difference(artifact: str, recorded: pd.DataFrame | None, replayed: pd.DataFrame,
                     keys: Sequence[str] = ()) -> Difference | None:
    """The first difference between a recorded frame and its replay (None: equal). `keys` name the
    columns that identify a row in the report."""
    if recorded is None:
        return Difference(artifact, "file", "", MISSING, f"{len(replayed)} rows")
    rc, pc = [str(c) for c in recorded.columns], [str(c) for c in replayed.columns]
    if rc != pc:
        i = next((i for i, (a, b) in enumerate(zip(rc, pc)) if a != b), min(len(rc), len(pc)))
        return Difference(artifact, f"columns[{i}]", "", rc[i] if i < len(rc) else MISSING,
                          pc[i] if i < len(pc) else MISSING)
    if len(recorded) != len(replayed):
        return Difference(artifact, "rows", "", len(recorded), len(replayed))
    ri, pi = recorded.index, replayed.index
    if ri.name != pi.name or ri.dtype != pi.dtype:
        return Difference(artifact, "index", "", f"{ri.name} ({ri.dtype})", f"{pi.name} ({pi.dtype})")
    bad = _unequal(ri.to_series(), pi.to_series())
    if bad.any():
        i = int(np.argmax(bad))
        return Difference(artifact, f"index {ri.name or ''}".strip(), str(i), ri[i], pi[i])
    for col in recorded.columns:
        if recorded[col].dtype != replayed[col].dtype:
            return Difference(artifact, f"{col} (dtype)", "", str(recorded[col].dtype), str(replayed[col].dtype))
    first: tuple[int, str] | None = None
    for col in recorded.columns:
        bad = _unequal(recorded[col], replayed[col])
        if bad.any() and (first is None or int(np.argmax(bad)) < first[0]):
            first = (int(np.argmax(bad)), col)
    if first is not None:
        i, col = first
        return Difference(artifact, str(col), _row(recorded, i, keys), recorded[col].iloc[i], replayed[col].iloc[i])
    try:
        pd.testing.assert_frame_equal(recorded, replayed, check_exact=True)
    except AssertionError as exc:
        return Difference(artifact, "frame", "", "", " ".join(str(exc).split())[:200])
    return None


def json_difference(artifact: str, recorded: Any, replayed: Any, path: str = "") -> Difference | None:
    """The first difference between two parsed JSON documents (None: equal)."""
    here = path or "(document)"
    if isinstance(recorded, dict) and isinstance(replayed, dict):
        for key in [*recorded, *[k for k in replayed if k not in recorded]]:
            sub = f"{path}.{key}" if path else str(key)
            if key not in replayed or key not in recorded:
                return Difference(artifact, sub, "", recorded.get(key, MISSING), replayed.get(key, MISSING))
            found = json_difference(artifact, recorded[key], replayed[key], sub)
            if found:
                return found
        return None
    if isinstance(recorded, list) and isinstance(replayed, list):
        for i, (a, b) in enumerate(zip(recorded, replayed)):
            found = json_difference(artifact, a, b, f"{path}[{i}]")
            if found:
                return found
        if len(recorded) != len(replayed):
            return Difference(artifact, f"{here} (length)", "", len(recorded), len(replayed))
        return None
    if type(recorded) is not type(replayed) or recorded != replayed:
        return Difference(artifact, here, "", recorded, replayed)
    return None
