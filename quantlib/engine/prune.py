"""`run_book.py runs prune`: delete old runs under a runs root, never one that another run depends on.

Only top-level runs (`<runs root>/<RUN_ID>/` with a `manifest.json`) are candidates; a meta's sleeve
runs (`<META>/sleeves/<id>/`) go with their meta, and folders that are not runs (`_static/`, the shared
plotly.js of the HTML reports) are never touched. A run is deleted only if it is outside the newest
`keep` runs of its profile (when `keep` is given) *and* created more than `older_than_days` ago (when
that is given), and it is not protected:
- its status is RUNNING (a live run, or one whose process died: inspect it, then delete it by hand);
- its manifest cannot be read (the plan cannot tell what it is);
- a profile in the workspace pins it (`meta.sleeves[].run_id`, `sleeve.data_run_id`);
- a run that stays pins it as a meta sleeve (its resolved profile's `meta.sleeves[].run_id` or a
  `pinned` entry of its `artifacts/sleeves.json`), or recorded reading it as its data run (manifest
  `data_run`, its own or that of any sleeve run inside it).
Protection is transitive: a protected run stays, so the runs it depends on stay too.

`plan_prune` only reads; `apply_prune` deletes. A deletion first renames the run into
`<runs root>/.pruning/` (one atomic rename: a half-deleted run never looks like a run), then removes it.
"""
from __future__ import annotations

import os
import secrets
import shutil
import stat
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import yaml

from quantlib.core import registry, storage
from quantlib.core.errors import WorkbookError
from quantlib.core.profiles import list_profiles, load_profile
from quantlib.core.runs import MANIFEST, RESOLVED_PROFILE

TRASH = ".pruning"
"""Folder (inside the runs root) a run is renamed into before it is removed."""


@dataclass(frozen=True)
class RunEntry:
    """One top-level run directory as the plan sees it."""

    run_id: str
    dir: Path
    profile: str
    phase: str
    status: str
    created: datetime | None
    bytes: int


@dataclass(frozen=True)
class Decision:
    """Delete or keep one run, and why."""

    entry: RunEntry
    delete: bool
    reason: str


@dataclass
class PrunePlan:
    """Every top-level run under `runs_root` with its decision (newest first)."""

    runs_root: Path
    keep: int | None
    older_than_days: float | None
    decisions: list[Decision] = field(default_factory=list)

    @property
    def deletions(self) -> list[Decision]:
        return [d for d in self.decisions if d.delete]

    @property
    def bytes_freed(self) -> int:
        return sum(d.entry.bytes for d in self.deletions)


# ----------------------------------------------------------------------------------------------
# arguments
# ----------------------------------------------------------------------------------------------
def parse_keep(text: str | None) -> int | None:
    """`--keep N`: a whole number >= 0 (None when not given)."""
    if text is None:
        return None
    try:
        value = int(text)
    except ValueError:
        raise WorkbookError(f"runs prune: --keep must be a whole number >= 0, got {text!r}") from None
    if value < 0:
        raise WorkbookError(f"runs prune: --keep must be >= 0, got {value}")
    return value


def parse_days(text: str | None) -> float | None:
    """`--older-than DAYS`: a number of days >= 0 (fractions allowed; None when not given)."""
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        raise WorkbookError(f"runs prune: --older-than must be a number of days >= 0, got {text!r}") from None
    if not value >= 0 or value == float("inf"):  # also rejects nan
        raise WorkbookError(f"runs prune: --older-than must be a finite number of days >= 0, got {text}")
    return value


# ----------------------------------------------------------------------------------------------
# the plan
# ----------------------------------------------------------------------------------------------
def plan_prune(runs_root: Path, keep: int | None = None, older_than_days: float | None = None,
               profiles_dir: Path | None = None, now: datetime | None = None) -> PrunePlan:
    """Decide, for every top-level run under `runs_root`, whether `runs prune` deletes it (reads only)."""
    if keep is None and older_than_days is None:
        raise WorkbookError("runs prune: give --keep N (newest runs kept per profile) and/or --older-than DAYS")
    if keep is not None and keep < 0:
        raise WorkbookError(f"runs prune: --keep must be >= 0, got {keep}")
    if older_than_days is not None and not older_than_days >= 0:
        raise WorkbookError(f"runs prune: --older-than must be >= 0, got {older_than_days}")
    root = Path(runs_root)
    if not root.is_dir():
        raise WorkbookError(f"runs prune: no runs folder {root}; choose one with --runs-dir")
    now = now or datetime.now(timezone.utc)
    entries, unreadable = _scan(root)
    reasons: dict[str, str] = {}   # run id -> why it stays
    candidates: dict[str, str] = {}  # run id -> why it would go
    by_profile: dict[str, list[RunEntry]] = {}
    for entry in entries:
        by_profile.setdefault(entry.profile, []).append(entry)
    for profile, runs in by_profile.items():
        for rank, entry in enumerate(runs):  # newest first
            why_go = []
            if keep is not None:
                if rank < keep:
                    reasons[entry.run_id] = f"among the newest {keep} of {profile}"
                    continue
                why_go.append(f"not among the newest {keep} of {profile}")
            if older_than_days is not None:
                if entry.created is None or entry.created > now - timedelta(days=older_than_days):
                    reasons[entry.run_id] = (f"created less than {older_than_days:g} days ago" if entry.created
                                             else "no readable created_at")
                    continue
                why_go.append(f"older than {older_than_days:g} days")
            candidates[entry.run_id] = ", ".join(why_go)
    for entry in entries:
        if entry.run_id in candidates and entry.status == "RUNNING":
            reasons[entry.run_id] = "status RUNNING"
            del candidates[entry.run_id]
    for run_id, why in profile_pins(profiles_dir).items():
        if run_id in candidates:
            reasons[run_id] = why
            del candidates[run_id]
    _protect_dependencies(root, [e.run_id for e in entries + unreadable], candidates, reasons)
    decisions = [Decision(e, e.run_id in candidates, candidates.get(e.run_id) or reasons.get(e.run_id, ""))
                 for e in entries]
    decisions += [Decision(e, False, "unreadable manifest: left alone") for e in unreadable]
    decisions.sort(key=lambda d: (d.entry.created or datetime.min.replace(tzinfo=timezone.utc)), reverse=True)
    return PrunePlan(root, keep, older_than_days, decisions)


def _protect_dependencies(root: Path, run_ids: list[str], candidates: dict[str, str], reasons: dict[str, str]) -> None:
    """Move every candidate that a staying run depends on (transitively) from `candidates` to `reasons`."""
    queue = [r for r in run_ids if r not in candidates]
    seen: set[str] = set()
    while queue:
        run_id = queue.pop()
        if run_id in seen:
            continue
        seen.add(run_id)
        for target, why in run_references(root / run_id).items():
            if target in candidates:
                reasons[target] = why
                del candidates[target]
                queue.append(target)


def _scan(root: Path) -> tuple[list[RunEntry], list[RunEntry]]:
    """(readable runs newest first, runs with an unreadable manifest) directly under `root`."""
    entries, unreadable = [], []
    for manifest in sorted(root.glob(f"*/{MANIFEST}")):
        run_dir = manifest.parent
        try:
            doc = storage.read_json(manifest)
            if not isinstance(doc, dict):
                raise WorkbookError("not an object")
        except WorkbookError:
            unreadable.append(RunEntry(run_dir.name, run_dir, "?", "?", "UNREADABLE", None, dir_bytes(run_dir)))
            continue
        entries.append(RunEntry(run_dir.name, run_dir, str(doc.get("profile", "?")), str(doc.get("phase", "?")),
                                str(doc.get("status", "?")), _timestamp(doc.get("created_at")), dir_bytes(run_dir)))
    oldest = datetime.min.replace(tzinfo=timezone.utc)
    entries.sort(key=lambda e: (e.created or oldest, e.run_id), reverse=True)
    return entries, unreadable


def _timestamp(value) -> datetime | None:
    try:
        stamp = datetime.fromisoformat(str(value))
    except ValueError:
        return None
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=timezone.utc)


def dir_bytes(path: Path) -> int:
    """Bytes of every regular file under `path` (symbolic links are not followed)."""
    total = 0
    for folder, _, files in os.walk(path):
        for name in files:
            try:
                info = os.lstat(os.path.join(folder, name))
            except OSError:  # removed meanwhile
                continue
            total += info.st_size if stat.S_ISREG(info.st_mode) else 0
    return total


# ----------------------------------------------------------------------------------------------
# references
# ----------------------------------------------------------------------------------------------
def run_references(run_dir: Path) -> dict[str, str]:
    """Run ids (in the same runs root) that the run at `run_dir` or a sleeve run inside it depends on,
    each with the reason: pinned meta sleeves and the data runs they read."""
    refs: dict[str, str] = {}
    for tree_dir in _run_tree(run_dir):
        name = tree_dir.relative_to(run_dir.parent).as_posix()
        try:
            manifest = storage.read_json(tree_dir / MANIFEST)
        except WorkbookError:
            manifest = {}
        if isinstance(manifest, dict) and manifest.get("data_run"):
            refs.setdefault(str(manifest["data_run"]), f"data run read by {name}")
        profile = _resolved_profile(tree_dir)
        pinned_data = (profile.get("sleeve") or {}).get("data_run_id")
        if pinned_data:
            refs.setdefault(str(pinned_data), f"data run pinned by {name}")
        for sleeve in (profile.get("meta") or {}).get("sleeves") or []:
            if isinstance(sleeve, dict) and sleeve.get("run_id"):
                refs.setdefault(str(sleeve["run_id"]), f"sleeve {sleeve.get('id')!r} pinned by meta {name}")
        sleeves = tree_dir / registry.path("meta", "sleeves")
        if sleeves.exists():
            try:
                doc = storage.read_json(sleeves)
            except WorkbookError:
                doc = {}
            for sleeve in (doc.get("sleeves") or []) if isinstance(doc, dict) else []:
                if isinstance(sleeve, dict) and sleeve.get("pinned") and sleeve.get("run_id"):
                    refs.setdefault(str(sleeve["run_id"]), f"sleeve {sleeve.get('id')!r} pinned by meta {name}")
    return refs


def _run_tree(run_dir: Path) -> list[Path]:
    """The run and every sleeve run nested inside it (`sleeves/<id>/`, recursively)."""
    found = [run_dir]
    for child in sorted((run_dir / "sleeves").glob(f"*/{MANIFEST}")):
        found += _run_tree(child.parent)
    return found


def _resolved_profile(run_dir: Path) -> dict:
    """The `profile` mapping of a run's `profile.resolved.yaml` ({} if missing or unreadable)."""
    try:
        doc = yaml.safe_load((run_dir / RESOLVED_PROFILE).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return {}
    profile = doc.get("profile") if isinstance(doc, dict) else None
    return profile if isinstance(profile, dict) else {}


def profile_pins(profiles_dir: Path | None = None) -> dict[str, str]:
    """Run ids pinned by the workspace's profiles (`meta.sleeves[].run_id`, `sleeve.data_run_id`).

    A profile that does not load pins nothing here (running it fails with its own message)."""
    pins: dict[str, str] = {}
    for name in list_profiles(profiles_dir):
        try:
            profile = load_profile(name, profiles_dir).profile
        except WorkbookError:
            continue
        if profile.sleeve.data_run_id:
            pins.setdefault(profile.sleeve.data_run_id, f"data run pinned by profile {name} (sleeve.data_run_id)")
        for sleeve in profile.meta.sleeves:
            if sleeve.run_id:
                pins.setdefault(sleeve.run_id, f"pinned by profile {name} (meta.sleeves[{sleeve.id}].run_id)")
    return pins


# ----------------------------------------------------------------------------------------------
# deletion and output
# ----------------------------------------------------------------------------------------------
def apply_prune(plan: PrunePlan) -> list[Path]:
    """Delete every run the plan deletes; return their former directories.

    Each run's manifest is read again first: a run that became RUNNING since the plan stays. What an
    interrupted earlier prune left in `.pruning/` (runs it had already taken out) is removed too."""
    trash = plan.runs_root / TRASH
    for leftover in sorted(trash.iterdir()) if trash.is_dir() else []:
        if leftover.is_dir() and not leftover.is_symlink():
            shutil.rmtree(leftover)
        else:
            leftover.unlink()
    deleted = []
    for decision in plan.deletions:
        run_dir = decision.entry.dir
        try:
            if storage.read_json(run_dir / MANIFEST).get("status") == "RUNNING":
                continue
        except (WorkbookError, AttributeError):
            continue
        trash.mkdir(exist_ok=True)
        parked = trash / f"{run_dir.name}.{secrets.token_hex(4)}"
        os.replace(run_dir, parked)  # atomic: from here on it is no longer a run
        shutil.rmtree(parked)
        deleted.append(run_dir)
    if trash.is_dir() and not any(trash.iterdir()):
        trash.rmdir()
    return deleted


def human_bytes(n: int) -> str:
    """`21.3 MB` (powers of 1024)."""
    value = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GB"


def plan_lines(plan: PrunePlan) -> list[str]:
    """The plan as text: one line per run (delete/keep, id, profile, status, size, reason)."""
    lines = []
    for d in plan.decisions:
        e = d.entry
        lines.append(f"  {'delete' if d.delete else 'keep  '}  {e.run_id:<44} {e.profile:<20} {e.status:<10} "
                     f"{human_bytes(e.bytes):>9}  {d.reason}")
    return lines
