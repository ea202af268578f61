"""Verify a finished run against its own audit record (`run_book.py verify RUN_ID`); nothing is written.

Each finding is an `Item` (status, item, detail); a run verifies when no item is CHANGED, MISSING or
MISMATCH. What is checked, per run:

- files: every stage output, executed notebook and HTML export the manifest records is re-hashed
  (a notebook of a run made before notebooks were hashed is UNRECORDED, not a failure); every output
  the registry declares for a completed stage must be recorded;
- inputs: every file the run recorded reading (profile and scanner definitions, lakehouse files, the
  data run's exports: the manifest's `inputs`) is re-hashed, CHANGED naming what changed since; the
  `data_inputs` artifact must agree with the manifest; lakehouse tables a data run wrote and a later
  run rewrote are INFO (rewriting them is what the next data run does);
- gates: every gate file is self-consistent and, where a pure function exists, recomputed from the
  run's artifacts and compared (`verify_gates`); a meta's weights are recomputed from its sleeves;
- a meta recurses into its sleeve runs (`sleeves/<id>/`) and into its pinned sleeve runs;
- environment: recorded package versions and git revision against the current ones (INFO only; a
  nested or pinned run is compared with the top run's record).
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from quantlib.core import registry, storage
from quantlib.core.errors import WorkbookError
from quantlib.core.integrity import recorded_files
from quantlib.core.runs import MANIFEST, REPORT, RESOLVED_PROFILE, Run, git_revision, package_versions
from quantlib.core.workspace import Workspace
from quantlib.engine.verify_gates import Item, gate_items, meta_sleeves

FAILING = ("CHANGED", "MISSING", "MISMATCH")
#: statuses whose rows the default table folds per group (what a folded row says)
FOLDED = {"OK": "as recorded", "UNRECORDED": "no hash recorded (a run made before these files were hashed)"}
DATA_INPUTS = "data_inputs"


@dataclass
class Verification:
    """Every item found for a run (its nested and pinned sleeve runs included)."""

    run_id: str
    items: list[Item] = field(default_factory=list)

    @property
    def failures(self) -> list[Item]:
        return [i for i in self.items if i.status in FAILING]

    @property
    def passed(self) -> bool:
        return not self.failures

    def rows(self, every: bool = False) -> list[Item]:
        """The table: every item, or (default) OK and UNRECORDED items folded into one row per group."""
        if every:
            return list(self.items)
        sizes: dict[tuple[str, str], int] = {}
        for item in self.items:
            if item.status in FOLDED and item.group:
                sizes[(item.status, item.group)] = sizes.get((item.status, item.group), 0) + 1
        out: list[Item] = []
        shown: set[tuple[str, str]] = set()
        for item in self.items:
            key = (item.status, item.group)
            if sizes.get(key, 1) == 1:
                out.append(item)
            elif key not in shown:
                shown.add(key)
                out.append(Item(item.status, item.group, f"{sizes[key]} items: {FOLDED[item.status]}", item.group))
        return out

    def summary(self) -> str:
        counts = {s: sum(i.status == s for i in self.items) for s in (*FAILING, "UNRECORDED", "INFO")}
        notes = ", ".join(f"{n} {s.lower()}" for s, n in counts.items() if n and s not in FAILING)
        if self.passed:
            return (f"VERIFIED: {len(self.items)} items of run {self.run_id} match its record"
                    + (f" ({notes})" if notes else ""))
        bad = ", ".join(f"{n} {s.lower()}" for s, n in counts.items() if n and s in FAILING)
        return (f"NOT VERIFIED: {len(self.failures)} of {len(self.items)} items of run {self.run_id} do not match "
                f"its record ({bad})" + (f"; {notes}" if notes else ""))


def verify_run(run: Run) -> Verification:
    """Verify `run` (and, for a meta, its sleeve runs) against its manifest; reads only."""
    result = Verification(run.id)
    result.items += _environment(run.manifest)
    result.items += list(_verify(run, "", run.manifest, set()))
    return result


def _verify(run: Run, prefix: str, top: dict, seen: set[Path]) -> Iterator[Item]:
    seen.add(run.dir.resolve())
    if prefix:
        yield from _environment(run.manifest, prefix, reference=top)
    status = run.manifest.get("status")
    if status != "PASS":
        yield Item("INFO", f"{prefix}{MANIFEST}", f"the run's status is {status!r}, not PASS")
    try:
        run.resolved  # noqa: B018 -- parsed once here; inputs, gates and declared outputs need it
    except WorkbookError as exc:
        yield Item("MISMATCH", f"{prefix}{RESOLVED_PROFILE}", str(exc))
        yield from _files(run, prefix, declared=False)
        return
    yield from _files(run, prefix)
    yield from _inputs(run, prefix)
    yield from gate_items(run, prefix)
    if run.manifest.get("phase") == "meta":
        yield from _sleeve_runs(run, prefix, top, seen)


# ------------------------------------------------------------------------------------------- files

def _hash(path: Path) -> str | None:
    return storage.sha256_file(path) if path.is_file() else None


def _file_item(prefix: str, rel: str, path: Path, recorded: str | None, what: str, group: str,
               changed: str = "", gone: str = "not on disk") -> Item:
    """The row of one recorded file: OK, MISSING (`gone`), UNRECORDED or CHANGED (`changed` said first)."""
    now = _hash(path)
    if now is None:
        return Item("MISSING", prefix + rel, f"{what}: {gone} ({path})")
    if recorded is None:
        return Item("UNRECORDED", prefix + rel, f"{what}: the manifest records no hash for it", group)
    if now != recorded:
        return Item("CHANGED", prefix + rel,
                    f"{what}: {changed}sha256 {now[:12]}… differs from the recorded {recorded[:12]}…")
    return Item("OK", prefix + rel, f"{what}: sha256 as recorded", group)


def _files(run: Run, prefix: str, declared: bool = True) -> Iterator[Item]:
    """Every recorded stage output, notebook and HTML export; declared outputs of completed stages recorded."""
    groups = {"output": "artifacts", "notebook": "notebooks", "html": "notebooks (html)"}
    for rec in recorded_files(run.manifest):
        what = {"output": f"output of stage {rec.stage}", "notebook": f"executed notebook of stage {rec.stage}",
                "html": f"HTML export of stage {rec.stage}"}[rec.kind]
        try:
            path = run.path(rec.rel)
        except WorkbookError as exc:
            yield Item("MISMATCH", prefix + rec.rel, str(exc))
            continue
        yield _file_item(prefix, rec.rel, path, rec.sha256, what, f"{prefix}{groups[rec.kind]}")
    report = run.manifest.get("report") or {}
    if report.get("sha256"):  # the run's page (engine.run_report), written after its last stage
        yield _file_item(prefix, REPORT, run.dir / REPORT, report["sha256"], "the run's report page", f"{prefix}report")
    if not declared:
        return
    stages = run.manifest.get("stages") or {}
    for stage in registry.stages(run.manifest.get("phase", "")):
        record = stages.get(stage.name) or {}
        if record.get("status") != "completed":
            continue
        for rel in stage.expanded_outputs(run.profile):
            if rel not in (record.get("outputs") or {}):
                yield Item("MISMATCH", prefix + rel, f"declared output of completed stage {stage.name} is not "
                                                     f"recorded in the manifest")


# ------------------------------------------------------------------------------------------ inputs

def _input_path(run: Run, label: str, workspace: Workspace, lake: Path) -> Path:
    """Where an `inputs` label points: profiles/… (the run's workspace), lakehouse/…, <data run>/…."""
    head, _, rest = label.partition("/")
    if head == "profiles":
        return workspace.profiles / rest
    if head == "lakehouse":
        return lake / rest
    return run.runs_root / head / rest


def _inputs(run: Run, prefix: str) -> Iterator[Item]:
    workspace = Workspace(run.workspace)
    lake = workspace.resolve(run.profile.data.lakehouse)
    inputs = run.manifest.get("inputs") or {}
    for label, digest in inputs.items():
        path = _input_path(run, label, workspace, lake)
        yield _file_item(prefix, label, path, digest, "input", f"{prefix}inputs",
                         changed=f"changed since the run read it ({path}): ", gone="the run read it, gone now")
    yield from _data_inputs(run, prefix, inputs)
    lake_writes = {rel: (stage, digest) for stage, rec in (run.manifest.get("stages") or {}).items()
                   for rel, digest in ((rec or {}).get("lakehouse_outputs") or {}).items()}
    for rel, (stage, digest) in lake_writes.items():
        now = _hash(lake / rel)
        if now == digest:
            yield Item("OK", f"{prefix}lakehouse/{rel}", f"written by stage {stage}: unchanged since",
                       f"{prefix}lakehouse written")
        else:
            yield Item("INFO", f"{prefix}lakehouse/{rel}", f"written by stage {stage}; "
                       + ("gone now" if now is None else "rewritten since (a later data run)"))


def _data_inputs(run: Run, prefix: str, inputs: dict) -> Iterator[Item]:
    """The `data_inputs` artifact (what the aggregate stage read) must agree with the manifest."""
    phase = run.manifest.get("phase", "")
    try:
        rel = registry.path(phase, DATA_INPUTS)
    except WorkbookError:
        return
    path = run.path(rel)
    if not path.is_file():
        return  # a missing recorded output is reported with the files
    try:
        doc = storage.read_json(path)
        files = doc.get("files") or {}
    except (WorkbookError, AttributeError) as exc:
        yield Item("MISMATCH", prefix + rel, f"unreadable: {exc}")
        return
    problems = [f"{label}: {digest[:12]}… but the manifest records {str(inputs.get(label))[:12]}…"
                for label, digest in files.items() if inputs.get(label) != digest]
    if doc.get("data_run") != run.manifest.get("data_run"):
        problems.append(f"data run {doc.get('data_run')!r} but the manifest records {run.manifest.get('data_run')!r}")
    if problems:
        yield Item("MISMATCH", prefix + rel, "disagrees with the manifest's inputs: " + "; ".join(problems))
    else:
        yield Item("OK", prefix + rel, f"its {len(files)} file hashes and data run agree with the manifest",
                   f"{prefix}inputs")


# ------------------------------------------------------------------------------------- sleeve runs

def _sleeve_runs(run: Run, prefix: str, top: dict, seen: set[Path]) -> Iterator[Item]:
    """A meta's sleeve runs: nested (`sleeves/<id>/`) and pinned, each verified in turn."""
    try:
        refs = meta_sleeves(run)
    except WorkbookError as exc:
        yield Item("MISMATCH", prefix + registry.path("meta", "sleeves"), f"cannot list the sleeves: {exc}")
        return
    for ref, pinned in refs:
        where = f"{prefix}pinned:{ref.id}/" if pinned else f"{prefix}sleeves/{ref.id}/"
        if ref.run_dir is None or not (Path(ref.run_dir) / MANIFEST).is_file():
            yield Item("MISSING", where + MANIFEST, f"sleeve {ref.id}: no run at {ref.run_dir}")
            continue
        if Path(ref.run_dir).resolve() in seen:
            continue
        try:
            child = Run.at(ref.run_dir)
        except WorkbookError as exc:
            yield Item("MISMATCH", where + MANIFEST, str(exc))
            continue
        yield from _verify(child, where, top, seen)


# ------------------------------------------------------------------------------------- environment

def _environment(manifest: dict, prefix: str = "", reference: dict | None = None) -> list[Item]:
    """Recorded versions and git revision vs the current environment (or, with `reference`, vs the
    top run's record); INFO when they differ, never a failure."""
    if reference is None:
        against, versions, revision = ("the current environment", package_versions(),
                                       git_revision(Workspace.current().root))
    else:
        against, versions, revision = "the top run's record", reference.get("versions") or {}, reference.get("git_revision")
    recorded = manifest.get("versions") or {}
    diffs = [f"{name} {recorded.get(name, '-')} -> {versions.get(name, '-')}"
             for name in sorted(set(recorded) | set(versions)) if recorded.get(name) != versions.get(name)]
    items = [Item("INFO" if diffs else "OK", f"{prefix}versions",
                  (f"differ from {against}: " + ", ".join(diffs)) if diffs else f"same as {against}",
                  "" if diffs else f"{prefix}environment")]
    old = manifest.get("git_revision")
    items.append(Item("INFO" if old != revision else "OK", f"{prefix}git_revision",
                      f"recorded {old}, {against}: {revision}" if old != revision else f"{old}, same as {against}",
                      "" if old != revision else f"{prefix}environment"))
    return items
