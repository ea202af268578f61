"""The stage cache: a stage whose code, parameters and inputs are unchanged is restored from an earlier
run under the same runs root instead of being recomputed.

A stage's key is one sha256 over
- the stage (phase, name) and its code: the notebook and every source file of the `quantlib` package,
  plus the package versions the run records;
- the resolved profile without `book` (timeouts and HTML exports do not change a result) and the
  scanner definitions the run read;
- the recorded hashes of the run artifacts it reads (registry `reads`, written by earlier stages);
- for a stage that reads outside its run, its `external` fingerprint (registry): the source snapshot
  and lakehouse content for a data stage, the data run and lakehouse content for a sleeve's aggregate.
  A fingerprint of None (a live exchange) makes the stage uncacheable.

A candidate is a completed stage of another run with the same key whose outputs and executed notebook
still have their recorded hashes, and which left its external inputs as it found them (a data stage
that wrote new bars is not replayed by copying its run files). A hit hard-links (or copies) the
candidate's outputs, executed notebook and HTML export into the run and records `cached_from` (a page
from a run at another depth, e.g. a meta's sleeve, is exported again: its `_static/` links are relative).
"""
from __future__ import annotations

import hashlib
import importlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

from quantlib.core import registry, storage
from quantlib.core.errors import WorkbookError
from quantlib.core.registry import Stage
from quantlib.core.runs import MANIFEST, Run, utc_now
from quantlib.engine.context import StageContext
from quantlib.engine.nodes import package_fingerprint

KEY_VERSION = "fw-stage-cache/1"


@dataclass(frozen=True)
class StageKey:
    """A stage's cache key, and its external fingerprint (recorded so a candidate can be checked)."""

    key: str
    external: str | None


def external_fingerprint(run: Run, phase: str, stage: Stage) -> str | None:
    """The stage's `external` hook evaluated now (None: no hook, or a live source)."""
    if stage.external is None:
        return None
    module, function = stage.external.split(":")
    return getattr(importlib.import_module(module), function)(StageContext(run, phase, stage))


def stage_key(run: Run, phase: str, stage: Stage, notebook: Path) -> StageKey | None:
    """The stage's key in `run`, or None when the stage cannot be cached (its phase, a live source, or
    an input whose state cannot be fingerprinted, e.g. no data run yet: the stage then runs and says so)."""
    if phase not in registry.CACHED_PHASES:
        return None
    try:
        external = external_fingerprint(run, phase, stage)
    except WorkbookError:
        return None
    if stage.external is not None and external is None:
        return None
    profile = run.profile.model_dump(mode="json", exclude={"book"})
    scanners = {k: v for k, v in run.manifest["inputs"].items() if k.startswith("profiles/scanners/")}
    inputs = {name: _artifact_hashes(run, phase, name) for name in stage.reads}
    doc = {"version": KEY_VERSION, "phase": phase, "stage": stage.name, "package": package_fingerprint(),
           "notebook": storage.sha256_file(notebook), "versions": run.manifest.get("versions", {}),
           "profile": profile, "scanners": scanners, "inputs": inputs, "external": external}
    key = hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()
    return StageKey(key, external)


def _artifact_hashes(run: Run, phase: str, name: str) -> dict[str, str | None]:
    """Recorded hashes of artifact `name`'s files in this run (None for a file its writer did not write,
    e.g. the output of a skipped optional stage)."""
    writer = registry.writer(phase, name)
    outputs = run.manifest["stages"].get(writer.name, {}).get("outputs", {})
    return {rel: outputs.get(rel) for rel in registry.artifact(phase, name).expand(run.profile)}


@dataclass(frozen=True)
class Hit:
    """A completed stage of another run that can stand in for this one."""

    run: Run
    record: dict


def find(run: Run, stage: Stage, key: StageKey) -> Hit | None:
    """The newest intact candidate for `key` under the run's runs root (nested sleeve runs included)."""
    candidates = []
    for manifest in Path(run.runs_root).rglob(MANIFEST):
        if manifest.parent.resolve() == run.dir.resolve():
            continue
        try:
            doc = storage.read_json(manifest)
        except WorkbookError:
            continue
        record = doc.get("stages", {}).get(stage.name, {})
        if record.get("cache_key") == key.key and record.get("status") == "completed":
            # ended_at has whole seconds: two runs that ended in the same second are told apart by their
            # manifest's last write (the later one's is the newer record)
            candidates.append(((record.get("ended_at", ""), manifest.stat().st_mtime_ns), Run(manifest.parent, doc),
                               record))
    for _, other, record in sorted(candidates, key=lambda c: c[0], reverse=True):
        if _intact(other, record, key):
            return Hit(other, record)
    return None


def _intact(other: Run, record: dict, key: StageKey) -> bool:
    """Outputs and notebook as recorded, external inputs left as found."""
    if record.get("external_after") != key.external:
        return False
    files = dict(record.get("outputs", {}))
    if record.get("notebook"):
        files[record["notebook"]] = record.get("notebook_sha256")
    for rel, digest in files.items():
        path = other.dir / rel
        if digest is None or not path.is_file() or storage.sha256_file_memo(path) != digest:
            return False
    return True


def restore(run: Run, stage: Stage, hit: Hit, key: StageKey, notebook_rel: str) -> float:
    """Link the candidate's outputs, executed notebook and HTML export into `run`; record the stage
    (its `html` None when the page must be exported again: the candidate sits at another depth)."""
    start = time.perf_counter()
    source = hit.record
    for rel in source["outputs"]:
        storage.link_or_copy(hit.run.dir / rel, run.path(rel))
    storage.link_or_copy(hit.run.dir / source["notebook"], run.path(notebook_rel))
    html = None  # an HTML page links the runs root's _static/ relative to its depth: relinked only at the same depth
    same_depth = hit.run.options.depth == run.options.depth
    if same_depth and source.get("html") and (hit.run.dir / source["html"]).is_file():
        html = str(Path(notebook_rel).with_suffix(".html"))
        storage.link_or_copy(hit.run.dir / source["html"], run.path(html))
    seconds = time.perf_counter() - start
    run.stage(stage.name).update(
        status="completed", started_at=utc_now(), ended_at=utc_now(), seconds=round(seconds, 3),
        notebook=notebook_rel, notebook_sha256=source["notebook_sha256"], html=html,
        html_sha256=source.get("html_sha256") if html else None, error=None,
        outputs=dict(source["outputs"]), lakehouse_outputs=dict(source.get("lakehouse_outputs", {})),
        cache_key=key.key, external_after=key.external,
        cached_from=hit.run.id, cached_from_path=_relative(run, hit.run), cached_seconds=source.get("seconds"))
    return seconds


def _relative(run: Run, other: Run) -> str:
    """Where the candidate lives, relative to the runs root (nested sleeves: `<meta>/sleeves/<id>`)."""
    try:
        return other.dir.resolve().relative_to(Path(run.runs_root).resolve()).as_posix()
    except ValueError:
        return str(other.dir)


def record_computed(run: Run, phase: str, stage: Stage, key: StageKey | None) -> None:
    """After a computed stage: its key and its external inputs as it left them."""
    if key is None:
        return
    after = external_fingerprint(run, phase, stage) if stage.external else None
    run.stage(stage.name).update(cache_key=key.key, external_after=after)
