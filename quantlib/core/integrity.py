"""What a run's manifest says its files hashed to, and whether they still do.

The executor records, per stage, the sha256 of every declared output (`outputs`), of the executed
notebook (`notebook_sha256`) and of its HTML export (`html_sha256`). `recorded_files` lists them;
`file_status` compares one file with its record; `output_problems` is the list the meta's
completeness gate and `run_book.py verify` report (a missing file, a changed file, a required
artifact the manifest records no hash for). Nothing here writes.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quantlib.core import storage

OK, MISSING, CHANGED, UNRECORDED = "ok", "missing", "changed", "unrecorded"


@dataclass(frozen=True)
class Recorded:
    """One file a manifest records: run-relative `rel`, its `sha256` (None: named but not hashed, as
    in runs made before notebooks were hashed), `kind` (output | notebook | html) and its `stage`."""

    rel: str
    sha256: str | None
    kind: str
    stage: str


def recorded_files(manifest: dict[str, Any]) -> list[Recorded]:
    """Every file the manifest's stage records name: outputs, executed notebooks, HTML exports."""
    out: list[Recorded] = []
    for stage, record in (manifest.get("stages") or {}).items():
        if not isinstance(record, dict):
            continue
        for rel, digest in (record.get("outputs") or {}).items():
            out.append(Recorded(rel, digest, "output", stage))
        for kind in ("notebook", "html"):
            if record.get(kind):
                out.append(Recorded(record[kind], record.get(f"{kind}_sha256"), kind, stage))
    return out


def file_status(path: Path, digest: str | None) -> str:
    """ok | missing | changed | unrecorded (the file exists but the manifest holds no hash for it)."""
    if not path.is_file():
        return MISSING
    if digest is None:
        return UNRECORDED
    return OK if storage.sha256_file(path) == digest else CHANGED


def output_problems(run_dir: Path, manifest: dict[str, Any], required: Iterable[str] = ()) -> tuple[int, list[str]]:
    """(outputs checked, problems) for the stage outputs a run's manifest records; each `required`
    run-relative path must be among them (a file the manifest does not vouch for is a problem)."""
    recorded = {r.rel: r for r in recorded_files(manifest) if r.kind == "output"}
    problems = [f"{rel} has no recorded hash in {Path(run_dir) / 'manifest.json'}"
                for rel in required if rel not in recorded]
    for rel, item in recorded.items():
        status = file_status(Path(run_dir) / rel, item.sha256)
        if status == MISSING:
            problems.append(f"{rel} missing (recorded by stage {item.stage})")
        elif status == CHANGED:
            problems.append(f"{rel} changed since stage {item.stage} wrote it (sha256 differs from the manifest)")
    return len(recorded), problems
