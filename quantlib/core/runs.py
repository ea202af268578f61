"""Run directories: `runs/<RUN_ID>/` with the resolved profile, manifest, notebooks, artifacts, INDEX.md.

The orchestrator is the only writer of `manifest.json` and `INDEX.md` (notebooks write artifacts only),
so there is one writer per file. All writes are atomic.

The manifest records the writing process (`process`: pid, its start time, host). A run recorded
RUNNING whose writer is gone reads as STALE (`run_status`, computed when read, never written): on this
host when its pid is gone (or now belongs to a process started at another time); from another host,
whose pids cannot be checked, when its manifest has not been written for `STALE_AFTER_S` (12 h: a
stage writes the manifest when it starts and ends, and no demo stage comes near that).
"""
from __future__ import annotations

import os
import platform
import secrets
import socket
import subprocess
import time
from dataclasses import dataclass
from functools import cached_property
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field

from quantlib.core import registry, storage
from quantlib.core.enums import Executor
from quantlib.core.errors import DataError, IdentifierError, WorkbookError
from quantlib.core.ids import check_run_id
from quantlib.core.profiles import Profile, ResolvedProfile, default_profiles_dir, load_yaml_chain

MANIFEST = "manifest.json"
RESOLVED_PROFILE = "profile.resolved.yaml"
INDEX = "INDEX.md"
REPORT = "report.html"  # the one page a run is read from (engine.run_report), first link of INDEX.md
REPORT_PHASES = ("sleeve", "meta")  # the phases whose runs get a report.html
STALE_AFTER_S = 12 * 3600  # a RUNNING run of another host reads STALE once its manifest is this old
TRACKED_PACKAGES = ("fractal-workbook", "numpy", "pandas", "pyarrow", "scipy", "pydantic", "papermill",
                    "nbclient", "ccxt", "plotly", "riskfolio-lib", "vectorbt", "ray")


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def new_run_id(profile_name: str) -> str:
    """`<profile>-<UTC yyyymmddTHHMMSS>-<4 hex>`."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
    return check_run_id(f"{profile_name}-{stamp}-{secrets.token_hex(2)}")


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def git_revision(root: Path) -> str:
    """`<sha>` or `<sha>-dirty` for the workspace's repository, `unknown` outside git."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return f"{sha}-dirty" if dirty else sha
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def process_start(pid: int) -> str | None:
    """When process `pid` started (clock ticks since boot, Linux /proc), "zombie" for a dead child not yet
    reaped; None where /proc is not available or the process is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return "zombie" if fields[0] in ("Z", "X") else fields[19]  # fields 3 (state) and 22 (starttime) of proc(5)


def process_alive(pid: int, started: str | None = None) -> bool:
    """Whether `pid` is a live process on this host -- the same one if its start time `started` is known."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        pass
    now = process_start(pid)
    return now != "zombie" and (started is None or now is None or now == started)


def current_process() -> dict[str, Any]:
    """This process as a manifest records its writer."""
    return {"pid": os.getpid(), "started": process_start(os.getpid()), "host": socket.gethostname()}


def run_status(manifest: dict[str, Any], manifest_path: Path | None = None) -> str:
    """The status to show: the recorded one, except STALE for a RUNNING run whose writer is gone (module doc)."""
    status = manifest.get("status", "?")
    owner = manifest.get("process") or {}
    if status != "RUNNING" or not owner.get("pid"):
        return status
    if owner.get("host") == socket.gethostname():
        return status if process_alive(int(owner["pid"]), owner.get("started")) else "STALE"
    try:
        age = time.time() - Path(manifest_path).stat().st_mtime if manifest_path else 0.0
    except OSError:
        age = 0.0
    return "STALE" if age > STALE_AFTER_S else status


def describe_process(manifest: dict[str, Any]) -> str:
    """`pid 123 on host h` for messages (`unknown process` for manifests that do not record it)."""
    owner = manifest.get("process") or {}
    return f"pid {owner['pid']} on host {owner.get('host', '?')}" if owner.get("pid") else "unknown process"


class RunOptions(BaseModel):
    """How a run executes and where it sits, validated (stored as the manifest's `options`).

    `runs_root` is where its data run and pinned sleeves are looked up (a meta's sleeve lives under the
    meta's folder, so it points back at the meta's runs root); `parent_run` and `depth` place a sleeve
    in its meta tree; `cache` is handed down to a meta's sleeves; `data_runs` are the data runs a meta
    pinned when it started (`meta.tree.pin_data_runs`): its sleeves, nested metas' too, read one of
    them, never a data run that passed later. `code_dir` is where the run reads its profiles and stage notebooks
    when not from its workspace: the copy of the workspace Ray shipped to the node a sleeve task ran on
    (`--ray-address`, `engine.fanout`); the workspace stays the driver's (its lakehouse and runs resolve there)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    executor: Executor = Executor.RAY
    ray_address: str | None = None
    runs_root: str | None = None
    parent_run: str | None = None
    depth: int = Field(0, ge=0)
    cache: bool = True  # restore unchanged stages from earlier runs (`--no-cache`: compute every stage)
    data_runs: tuple[str, ...] | None = None
    code_dir: str | None = None  # None: the workspace


@dataclass
class Run:
    """One run directory and its manifest."""

    dir: Path
    manifest: dict[str, Any]

    # construction
    @classmethod
    def create(cls, runs_dir: Path, resolved: ResolvedProfile, phase: str, workspace: Path,
               run_id: str | None = None, options: RunOptions | None = None,
               profiles_dir: Path | None = None) -> "Run":
        """A new run directory with its resolved profile and manifest (its definition files hashed from
        `profiles_dir`, default the current workspace's)."""
        run_id = check_run_id(run_id) if run_id else new_run_id(resolved.name)
        run_dir = Path(runs_dir) / run_id
        if run_dir.exists():
            raise WorkbookError(f"run directory {run_dir} already exists; resume it with --run-id {run_id}")
        for sub in ("notebooks", "artifacts"):
            (run_dir / sub).mkdir(parents=True, exist_ok=True)
        storage.write_text(run_dir / RESOLVED_PROFILE, resolved.to_yaml())
        manifest = {
            "run_id": run_id, "profile": resolved.name, "phase": phase, "status": "RUNNING",
            "created_at": utc_now(), "workspace": str(Path(workspace).resolve()),
            "git_revision": git_revision(Path(workspace)), "versions": package_versions(),
            "extends_chain": list(resolved.chain), "env_overrides": resolved.overrides,
            "options": (options or RunOptions()).model_dump(mode="json"), "process": current_process(),
            "inputs": {}, "stages": {},
        }
        run = cls(run_dir, manifest)
        run.record_inputs(definition_files(resolved, profiles_dir))
        run.save()
        return run

    @classmethod
    def open(cls, runs_dir: Path, run_id: str) -> "Run":
        run_dir = Path(runs_dir) / check_run_id(run_id)
        if not (run_dir / MANIFEST).exists():
            raise DataError(f"no run {run_id!r} under {runs_dir} (missing {run_dir / MANIFEST}); "
                            f"list runs with `python run_book.py runs`")
        return cls(run_dir, storage.read_json(run_dir / MANIFEST))

    @classmethod
    def at(cls, run_dir: str | Path) -> "Run":
        run_dir = Path(run_dir)
        return cls.open(run_dir.parent, run_dir.name)

    # properties
    @property
    def id(self) -> str:
        return self.manifest["run_id"]

    @property
    def workspace(self) -> Path:
        return Path(self.manifest["workspace"])

    @property
    def code_root(self) -> Path:
        """Where this run reads its profiles and stage notebooks: `options.code_dir` (a shipped copy), else
        the workspace."""
        return Path(self.options.code_dir) if self.options.code_dir else self.workspace

    @cached_property
    def options(self) -> RunOptions:
        """The run's validated options (a manifest without them: the defaults)."""
        return RunOptions.model_validate(self.manifest.get("options") or {})

    @property
    def runs_root(self) -> Path:
        """Where this run's data run and pinned sleeves are looked up."""
        return Path(self.options.runs_root) if self.options.runs_root else self.dir.parent

    @cached_property
    def resolved(self) -> ResolvedProfile:
        """The run's resolved profile (parsed once: stages read it many times)."""
        from pydantic import ValidationError

        path = self.dir / RESOLVED_PROFILE
        try:
            doc = yaml.safe_load(path.read_text(encoding="utf-8"))
            return ResolvedProfile(Profile.model_validate(doc["profile"]), tuple(doc["extends_chain"]),
                                   doc.get("env_overrides") or {})
        except (OSError, yaml.YAMLError, KeyError, TypeError, ValidationError) as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise DataError(f"{path}: unreadable or from an older profile schema ({first}); "
                            f"start a new run instead of resuming {self.dir.name}") from None

    @property
    def profile(self) -> Profile:
        return self.resolved.profile

    @property
    def status(self) -> str:
        """The recorded status, or STALE for a RUNNING run whose writer is gone (`run_status`)."""
        return run_status(self.manifest, self.dir / MANIFEST)

    def path(self, relative: str) -> Path:
        """A path inside the run directory (rejects escapes)."""
        target = (self.dir / relative).resolve()
        if self.dir.resolve() not in target.parents and target != self.dir.resolve():
            raise DataError(f"path {relative!r} escapes run directory {self.dir}")
        return target

    # manifest updates (orchestrator only)
    def set_options(self, **changes: Any) -> RunOptions:
        """Change run options (validated) for the stages still to run, e.g. `--no-cache` on a resume."""
        options = RunOptions.model_validate({**self.options.model_dump(mode="json"), **changes})
        self.manifest["options"] = options.model_dump(mode="json")
        self.__dict__["options"] = options  # the cached property now gives the new value
        return options

    def save(self) -> None:
        storage.write_json(self.dir / MANIFEST, self.manifest)

    def stage(self, name: str) -> dict[str, Any]:
        return self.manifest["stages"].setdefault(name, {"status": "pending"})

    def record_read(self, doc: dict) -> None:
        """Record files a stage read outside the run (`{"data_run": id, "files": {label: sha256}}`)."""
        self.manifest["inputs"].update(doc.get("files", {}))
        if doc.get("data_run"):
            self.manifest["data_run"] = doc["data_run"]

    def record_inputs(self, files: dict[str, Path]) -> None:
        for label, path in files.items():
            if Path(path).exists():
                self.manifest["inputs"][label] = storage.sha256_file(path)


def open_run(ref: str | Path, runs_dir: Path) -> Run:
    """The run `ref` names: a run directory, else a run id under `runs_dir`, or `META/SLEEVE` -- a meta's
    sleeve run, `runs_dir/META/sleeves/SLEEVE` (`META/NESTED/SLEEVE` inside a nested meta); one-line errors."""
    path, ref = Path(ref), str(ref)
    if path.is_dir():
        if not (path / MANIFEST).exists():
            raise DataError(f"{ref}: a directory but not a run (no {MANIFEST})")
        return Run(path, storage.read_json(path / MANIFEST))
    parts = ref.split("/")
    for part in parts:
        try:
            check_run_id(part)
        except IdentifierError:
            raise IdentifierError(f"{ref!r}: neither a run directory nor a valid run id (invalid run id {part!r}: "
                                  f"letters, digits, '_', '-', '.'; a meta's sleeve: META/SLEEVE)") from None
    run_dir = ref_path(runs_dir, ref)
    if not (run_dir / MANIFEST).exists():
        parent = run_dir.parent.parent
        if len(parts) > 1 and (parent / MANIFEST).exists():
            known = ", ".join(sorted(p.parent.name for p in (parent / "sleeves").glob(f"*/{MANIFEST}"))) or "none"
            raise DataError(f"no sleeve run {parts[-1]!r} in {'/'.join(parts[:-1])} (its sleeves: {known}); "
                            f"list runs with `python run_book.py runs`")
        raise DataError(f"no run {ref!r} under {runs_dir} (and no such directory); "
                        f"list runs with `python run_book.py runs`")
    return Run(run_dir, storage.read_json(run_dir / MANIFEST))


def ref_path(runs_dir: Path, ref: str) -> Path:
    """Where run `ref` (a run id, or `META/SLEEVE` / `META/NESTED/SLEEVE`) lives under `runs_dir` (unchecked)."""
    head, *sleeves = str(ref).split("/")
    path = Path(runs_dir) / head
    for sleeve in sleeves:
        path = path / "sleeves" / sleeve
    return path


def nested_runs(run_dir: Path) -> list[tuple[int, dict[str, Any]]]:
    """(depth, summary as `list_runs` gives it, `run_id` as META/SLEEVE) of every sleeve run nested in the
    meta run at `run_dir` (`sleeves/<id>/`, nested metas' too), depth first, in sleeve-id order."""
    out = []

    def walk(directory: Path, prefix: str, depth: int) -> None:
        for manifest in sorted((directory / "sleeves").glob(f"*/{MANIFEST}")):
            row = summarize(manifest)
            row["run_id"] = f"{prefix}/{manifest.parent.name}"
            out.append((depth, row))
            walk(manifest.parent, row["run_id"], depth + 1)

    walk(Path(run_dir), Path(run_dir).name, 1)
    return out


def summarize(manifest: Path) -> dict[str, Any]:
    """One `list_runs` row for the run whose manifest is `manifest` (UNREADABLE when it cannot be read)."""
    try:
        doc = storage.read_json(manifest)
    except DataError:
        return {"run_id": manifest.parent.name, "profile": "?", "phase": "?",
                "status": "UNREADABLE", "created_at": "", "stages": ""}
    stages = doc.get("stages", {})
    done = sum(1 for s in stages.values() if s.get("status") in ("completed", "skipped"))
    return {"run_id": doc.get("run_id", manifest.parent.name), "profile": doc.get("profile", "?"),
            "phase": doc.get("phase", "?"), "status": run_status(doc, manifest),
            "created_at": doc.get("created_at", ""), "stages": f"{done}/{len(stages)}"}


def definition_files(resolved: ResolvedProfile, profiles_dir: Path | None = None) -> dict[str, Path]:
    """The YAML files that define a run: its profile chain and its scanners (with their parents)."""
    directory = profiles_dir or default_profiles_dir()
    files = {f"profiles/{name}.yaml": directory / f"{name}.yaml" for name in resolved.chain}
    for scanner in resolved.profile.data.scanners:
        _, chain = load_yaml_chain(scanner, directory / "scanners", kind="scanner")
        files.update({f"profiles/scanners/{name}.yaml": directory / "scanners" / f"{name}.yaml" for name in chain})
    return files


def list_runs(runs_dir: Path) -> list[dict[str, Any]]:
    """Summaries of every run under `runs_dir`, newest first; unreadable runs are listed as such."""
    rows = [summarize(manifest) for manifest in sorted(Path(runs_dir).glob(f"*/{MANIFEST}"))]
    return sorted(rows, key=lambda r: r["created_at"], reverse=True)


def newest_run(runs_dir: Path, profile: str, phase: str | None = None, complete: bool = False) -> str | None:
    """Id of the newest run of `profile` (optionally of a phase, optionally PASS only)."""
    for row in list_runs(runs_dir):
        if row["profile"] == profile and (phase is None or row["phase"] == phase):
            if not complete or row["status"] == "PASS":
                return row["run_id"]
    return None


def locate_data_run(runs_root: Path, scanners: list[str], pinned: str | None,
                    among: tuple[str, ...] | None = None) -> Run:
    """The pinned data run (`sleeve.data_run_id`), or the newest PASS data run that exported every one of
    `scanners` -- with `among` (the data runs a meta pinned when it started) the newest of those only."""
    def has_exports(run: Run) -> bool:
        return all(run.path(registry.path("data", "export", scanner=s)).exists() for s in scanners)

    if pinned:
        run = Run.open(runs_root, pinned)
        if run.manifest.get("phase") != "data" or run.manifest.get("status") != "PASS":
            raise DataError(f"aggregate: pinned data run {pinned} (sleeve.data_run_id) is not a passed data run; "
                            f"run `python run_book.py data` and pin its id")
        if not has_exports(run):
            raise DataError(f"aggregate: data run {pinned} has no candidate list for {scanners} "
                            f"(sleeve.scanners); run the data phase with those scanners")
        return run
    for row in list_runs(runs_root):
        if row["phase"] == "data" and row["status"] == "PASS" and (among is None or row["run_id"] in among):
            run = Run.open(runs_root, row["run_id"])
            if has_exports(run):
                return run
    if among is not None:
        raise DataError(f"aggregate: none of the data runs its meta pinned when it started ({', '.join(among) or 'none'}) "
                        f"under {runs_root} exports {scanners} (sleeve.scanners); start a new meta run")
    raise DataError(f"aggregate: no passed data run under {runs_root} exports {scanners} (sleeve.scanners); "
                    f"run `python run_book.py data` first")
