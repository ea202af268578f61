"""Compare two runs artifact by artifact: did the same inputs produce the same content?

Every artifact the registry declares for the run's phase (and, for a meta, every nested sleeve run)
is compared by content: parquet frames exactly (values, dtypes, index), JSON documents exactly apart
from what names a particular run (run ids, run directories, creation times, wall-clock seconds), text
files (markdown, CSV) exactly once run ids are masked. HTML pages are not compared (plotly gives each
figure a random id); their figures come from the artifacts that are.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from quantlib.core import registry, storage
from quantlib.core.runs import Run
from quantlib.core.workspace import Workspace

#: JSON keys whose values describe a run's identity or timing, not its result
VOLATILE_KEYS = frozenset({"run_id", "generated_at", "created_at", "started_at", "ended_at", "finished_at",
                           "seconds", "ray_start_seconds", "run_dir", "runs_dir", "ray_logs", "log"})
RUN_ID = re.compile(r"[a-z0-9_]+-\d{8}T\d{6}-[0-9a-f]{4}")


@dataclass(frozen=True)
class Difference:
    path: str  # run-relative (nested sleeves: sleeves/<id>/...)
    what: str


def _mask(text: str, roots: tuple[str, ...]) -> str:
    for root in roots:
        text = text.replace(root, "<ROOT>")
    return RUN_ID.sub("<RUN>", text)


def _normalize(doc: Any, roots: tuple[str, ...]) -> Any:
    """`doc` without volatile keys, with run ids and roots masked; the recorded hash of a file inside
    another run (a data run's export, which carries that run's id and time) is masked too."""
    if isinstance(doc, dict):
        out = {}
        for key, value in doc.items():
            if key in VOLATILE_KEYS:
                continue
            masked = _mask(str(key), roots)
            out[masked] = "<hash of a run's file>" if masked.startswith("<RUN>/") else _normalize(value, roots)
        return out
    if isinstance(doc, list):
        return [_normalize(v, roots) for v in doc]
    if isinstance(doc, str):
        return _mask(doc, roots)
    return doc


def _first_json_difference(a: Any, b: Any, where: str = "") -> str | None:
    if type(a) is not type(b):
        return f"{where or '/'}: {type(a).__name__} vs {type(b).__name__}"
    if isinstance(a, dict):
        for key in sorted(set(a) | set(b)):
            if key not in a or key not in b:
                return f"{where}/{key}: only in {'B' if key not in a else 'A'}"
            found = _first_json_difference(a[key], b[key], f"{where}/{key}")
            if found:
                return found
        return None
    if isinstance(a, list):
        if len(a) != len(b):
            return f"{where}: {len(a)} vs {len(b)} items"
        return next((d for i, (x, y) in enumerate(zip(a, b)) if (d := _first_json_difference(x, y, f"{where}[{i}]"))), None)
    return None if a == b else f"{where}: {a!r} vs {b!r}"


def _compare_file(a: Path, b: Path, fmt: str, roots: tuple[str, ...]) -> str | None:
    if not a.exists() or not b.exists():
        return f"missing in {'A' if not a.exists() else 'B'}"
    if fmt == "parquet":
        try:
            pd.testing.assert_frame_equal(storage.read_parquet(a), storage.read_parquet(b), check_exact=True)
        except AssertionError as exc:
            return " ".join(str(exc).split())[:300]
        return None
    if fmt == "json":
        return _first_json_difference(_normalize(storage.read_json(a), roots), _normalize(storage.read_json(b), roots))
    if a.suffix == ".html":
        return None
    ta, tb = (_mask(p.read_text(encoding="utf-8"), roots) for p in (a, b))
    if ta == tb:
        return None
    line = next(i for i, (x, y) in enumerate(zip(ta.splitlines() + [""], tb.splitlines() + [""]), 1) if x != y)
    return f"text differs from line {line}"


def compare_runs(a: Run, b: Run, prefix: str = "") -> tuple[int, list[Difference]]:
    """(artifacts compared, differences) between two runs of the same phase, nested sleeves included."""
    if a.manifest["phase"] != b.manifest["phase"]:
        return 0, [Difference(prefix or ".", f"phases differ: {a.manifest['phase']} vs {b.manifest['phase']}")]
    lakes = [Workspace(r.workspace).resolve(r.profile.data.lakehouse) for r in (a, b)]
    roots = tuple(dict.fromkeys(str(p) for p in (a.dir.parent.resolve(), b.dir.parent.resolve(), a.dir.parent,
                                                 b.dir.parent, *lakes)))
    compared, differences = 0, []
    for stage in registry.stages(a.manifest["phase"]):
        for artifact in stage.writes:
            for rel in artifact.expand(a.profile):
                compared += 1
                found = _compare_file(a.path(rel), b.path(rel), artifact.format, roots)
                if found:
                    differences.append(Difference(prefix + rel, found))
    for child in sorted((a.dir / "sleeves").glob("*/manifest.json")):
        other = b.dir / "sleeves" / child.parent.name
        if not (other / "manifest.json").exists():
            differences.append(Difference(f"{prefix}sleeves/{child.parent.name}", "missing in B"))
            continue
        n, found = compare_runs(Run.at(child.parent), Run.at(other), f"{prefix}sleeves/{child.parent.name}/")
        compared, differences = compared + n, differences + found
    return compared, differences
