"""Resuming a run (`--run-id`): refused unless it would continue the same run with the same values.

`reopen` refuses (a `ResumeError`, nothing written) a resume that names another phase or profile than
the run's, a run whose writer is still alive, and a run whose profile no longer resolves as recorded
in its `profile.resolved.yaml` (profile files edited, other `FW_*` overrides) -- unless `force`, which
writes the new resolved profile and appends the change to the manifest's `profile_changes` (when, which
keys with old and new values, the previous overrides, the stages already completed with the old
values). A meta's existing sleeve runs are checked (and forced) with it, before anything runs.

This module decides *whether* a run may be resumed and with which profile; *which stages* then run is
`engine.executor.run_phase`'s decision (`stage_complete`: recorded `completed` and every output hashing
as recorded; after the first stage that re-runs, every later one re-runs).
"""
from __future__ import annotations

import json
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quantlib.core import storage
from quantlib.core.errors import ResumeError
from quantlib.core.profiles import (
    ResolvedProfile,
    load_profile,
    override_vars,
    profile_diff,
)
from quantlib.core.runs import (
    MANIFEST,
    RESOLVED_PROFILE,
    Run,
    definition_files,
    describe_process,
    run_status,
    utc_now,
)

SHOWN_KEYS = 6  # a refusal lists this many changed keys per run, then "+N more"


@dataclass
class Plan:
    """One run a resume would continue: the profile it would run with now and how that differs."""

    run: Run
    resolved: ResolvedProfile
    changes: list[tuple[str, Any, Any]]
    label: str  # how messages name the run


def reopen(runs_dir: Path, run_id: str, phase: str, profile: str | None, *, env: Mapping[str, str] | None = None,
           overrides: Mapping[str, Any] | None = None, force: bool = False, profiles_dir: Path | None = None) -> Run:
    """The run `run_id` ready to resume as `phase` of `profile` (None: the run's own), or a ResumeError.

    The profile is resolved again as a new run would be (`env` / `overrides`, from `profiles_dir`, default
    the current workspace's); with `force` a changed profile is recorded and written (this run and, for a
    meta, its existing sleeve runs)."""
    run = Run.open(runs_dir, run_id)
    check_target(run, phase, profile or run.manifest["profile"], f"run {run.id}")
    check_not_live(run, f"run {run.id}", force)
    resolved = load_profile(run.manifest["profile"], profiles_dir, env=env, overrides=overrides)
    plans = [Plan(run, resolved, changes_of(run, resolved), f"run {run.id}")]
    if phase == "meta":
        plans += sleeve_plans(run, resolved, force, profiles_dir)
    changed = [p for p in plans if p.changes]
    if changed and not force:
        raise ResumeError(refusal(changed))
    for plan in changed:
        record_change(plan.run, plan.resolved, plan.changes, profiles_dir)
    return run


def check_target(run: Run, phase: str, profile: str, label: str) -> None:
    """The run is a run of `phase` and `profile`, or a ResumeError naming the command that resumes it."""
    m = run.manifest
    if m.get("phase") != phase or m.get("profile") != profile:
        command = f"data --profile {m.get('profile')}" if m.get("phase") == "data" else f"{m.get('phase')} {m.get('profile')}"
        raise ResumeError(f"{label} is a {m.get('phase')} run of profile {m.get('profile')!r}, not a {phase} run of "
                          f"{profile!r}: resuming it so would rewrite it; resume it with `run_book.py {command} "
                          f"--run-id {run.id}` or choose another run id")


def check_not_live(run: Run, label: str, force: bool) -> None:
    """A RUNNING run whose writer is alive (this host) or may be (another host, not yet STALE) is refused;
    `force` accepts the second case (the user knows that process is gone)."""
    if run_status(run.manifest, run.dir / MANIFEST) != "RUNNING" or not run.manifest.get("process"):
        return
    here = run.manifest["process"].get("host") == socket.gethostname()
    if here or not force:
        fix = ("wait for it or stop it" if here else
               "if that process is gone, resume with --force (it reads STALE after 12 h without a write)")
        raise ResumeError(f"{label} is RUNNING ({describe_process(run.manifest)}); {fix}")


def changes_of(run: Run, resolved: ResolvedProfile) -> list[tuple[str, Any, Any]]:
    """How the profile resolved now differs from the run's recorded one (dotted keys, old, new)."""
    return profile_diff(run.profile.model_dump(mode="json"), resolved.profile.model_dump(mode="json"))


def sleeve_plans(meta: Run, resolved: ResolvedProfile, force: bool, profiles_dir: Path | None = None) -> list[Plan]:
    """The meta's existing sleeve runs (`sleeves/<id>/`, nested metas recursively) as the sleeves stage would
    resume them: same kind and profile, resolved with the meta's overrides (`engine.fanout.sleeve_specs`)."""
    plans = []
    for entry in resolved.profile.meta.sleeves:
        child_dir = meta.dir / "sleeves" / entry.id
        if entry.run_id or not (child_dir / MANIFEST).exists():
            continue
        child = Run.at(child_dir)
        label = f"sleeve run {meta.id}/sleeves/{entry.id}"
        phase = "meta" if entry.meta_profile else "sleeve"
        check_target(child, phase, entry.meta_profile or entry.profile, label)
        check_not_live(child, label, force)
        child_resolved = load_profile(child.manifest["profile"], profiles_dir, overrides=resolved.overrides)
        plans.append(Plan(child, child_resolved, changes_of(child, child_resolved), label))
        if phase == "meta":
            plans += sleeve_plans(child, child_resolved, force, profiles_dir)
    return plans


def _value(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 40 else text[:37] + "..."


def refusal(plans: list[Plan]) -> str:
    """One line: per run the changed keys (old -> new) and the overrides then and now; then the fix."""
    parts = []
    for p in plans:
        keys = ", ".join(f"{k}: {_value(a)} → {_value(b)}" for k, a, b in p.changes[:SHOWN_KEYS])
        more = f" (+{len(p.changes) - SHOWN_KEYS} more)" if len(p.changes) > SHOWN_KEYS else ""
        then, now = override_vars(p.run.resolved.overrides), override_vars(p.resolved.overrides)
        where = f"; overrides then: {' '.join(then) or 'none'}, now: {' '.join(now) or 'none'}" if then != now else ""
        parts.append(f"{p.label} was started with other profile values: {keys}{more}{where}")
    return ("; ".join(parts) + "; resume with --force to run the remaining stages with the new values (the change is "
            "recorded in the manifest and INDEX.md), or restore the old values (profile files, FW_* variables)")


def record_change(run: Run, resolved: ResolvedProfile, changes: list[tuple[str, Any, Any]],
                  profiles_dir: Path | None = None) -> None:
    """Record the change in the manifest (first: a crash in between leaves a record, never a silent change),
    then write the new resolved profile; the run's inputs get the new definition-file hashes."""
    before = dict(run.manifest.get("inputs", {}))
    entry = {"at": utc_now(), "changes": [{"key": k, "old": a, "new": b} for k, a, b in changes],
             "previous_env_overrides": run.manifest.get("env_overrides", {}),
             "previous_extends_chain": run.manifest.get("extends_chain", []),
             "completed_stages": [name for name, rec in run.manifest.get("stages", {}).items()
                                  if rec.get("status") == "completed"]}
    run.record_inputs(definition_files(resolved, profiles_dir))
    entry["previous_inputs"] = {k: v for k, v in before.items() if run.manifest["inputs"].get(k) != v}
    run.manifest.setdefault("profile_changes", []).append(entry)
    run.manifest.update(env_overrides=resolved.overrides, extends_chain=list(resolved.chain))
    run.save()
    storage.write_text(run.dir / RESOLVED_PROFILE, resolved.to_yaml())
    run.__dict__.pop("resolved", None)  # the cached profile is the old one
