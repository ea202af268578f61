"""The notebook side of the book: a stage's context, opened from the `run_dir` parameter.

`ctx.read(name)` / `ctx.write(name, obj)` / `ctx.path(name)` go through the registry
(`quantlib.core.registry`): a stage reads only the artifacts it declares and writes only its own, so
the registry is the contract the executor, resume, INDEX.md and the gates rely on. An empty `run_dir`
means "interactive" (JupyterLab): use the newest run of the profile in the current workspace, or
create one, so every stage notebook also runs top to bottom with its default parameters.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quantlib.core import registry, storage
from quantlib.core.errors import DataError, WorkbookError
from quantlib.core.profiles import Profile, load_profile
from quantlib.core.registry import Artifact, Stage
from quantlib.core.runs import Run, newest_run
from quantlib.core.workspace import Workspace
from quantlib.data.lakehouse import Lakehouse
from quantlib.data.scanners import Scanner, load_scanner
from quantlib.data.sources import MarketDataSource, make_source


class UndeclaredArtifactError(WorkbookError):
    """A stage read or wrote an artifact its registry entry does not declare."""


@dataclass
class StageContext:
    """What a stage notebook needs: its run, the resolved profile, the lakehouse and its source."""

    run: Run
    phase: str
    stage: Stage

    @property
    def profile(self) -> Profile:
        return self.run.profile

    @property
    def workspace(self) -> Workspace:
        return Workspace(self.run.workspace)

    @property
    def lake(self) -> Lakehouse:
        return Lakehouse(self.workspace.resolve(self.profile.data.lakehouse))

    def source(self) -> MarketDataSource:
        return make_source(self.profile.source)

    def scanners(self, names: list[str]) -> list[Scanner]:
        """Scanner definitions from where this run reads its code (`Run.code_root`)."""
        return [load_scanner(name, Workspace(self.run.code_root).profiles) for name in names]

    # ------------------------------------------------------------------------------- artifacts
    def _declared(self, name: str, writing: bool) -> Artifact:
        declared = self.stage.writes_name(name) or (not writing and name in self.stage.reads)
        if not declared:
            verb = "writes" if writing else "reads"
            raise UndeclaredArtifactError(
                f"stage {self.phase}/{self.stage.name} {verb} artifact {name!r}, which its registry entry does not "
                f"declare; add it to the stage's {'writes' if writing else 'reads'} in quantlib/core/registry.py")
        return registry.artifact(self.phase, name)

    def path(self, name: str, **fields: str) -> Path:
        """Where this stage writes artifact `name` (directories created)."""
        target = self.run.path(self._declared(name, writing=True).resolve(**fields))
        target.parent.mkdir(parents=True, exist_ok=True)
        return target

    def write(self, name: str, obj: Any, **fields: str) -> Path:
        """Write artifact `name` atomically in its declared format (parquet: a frame; json: a document;
        text: a string)."""
        artifact = self._declared(name, writing=True)
        target = self.path(name, **fields)
        if artifact.format == "parquet":
            return storage.write_parquet(target, obj)
        if artifact.format == "json":
            return storage.write_json(target, obj)
        return storage.write_text(target, obj)

    def exists(self, name: str, **fields: str) -> bool:
        """Whether a declared input (e.g. an optional stage's output) is present."""
        return self.run.path(self._declared(name, writing=False).resolve(**fields)).exists()

    def read(self, name: str, **fields: str) -> Any:
        """A declared input artifact (DataError naming the stage that writes it when it is missing)."""
        artifact = self._declared(name, writing=False)
        target = self.run.path(artifact.resolve(**fields))
        if not target.exists():
            writer = registry.writer(self.phase, name).name
            raise DataError(f"stage {self.stage.name}: missing input {target} (written by stage {writer}); run "
                            f"the earlier stages of run {self.run.id} first ({self.resume_command()})")
        if artifact.format == "parquet":
            return storage.read_parquet(target)
        if artifact.format == "json":
            return storage.read_json(target)
        return target.read_text(encoding="utf-8")

    def resume_command(self) -> str:
        profile = self.run.manifest["profile"]
        if self.phase == "data":
            return f"python run_book.py data --profile {profile} --run-id {self.run.id}"
        return f"python run_book.py {self.phase} {profile} --run-id {self.run.id}"


def open_stage(run_dir: str, stage: str, phase: str = "data", profile: str = "demo") -> StageContext:
    """Context for `stage` of `phase` in `run_dir` (or the newest/new run of `profile` if empty)."""
    if run_dir:
        run = Run.at(run_dir)
    else:
        workspace = Workspace.current()
        run_id = newest_run(workspace.runs, profile, phase)
        if run_id:
            run = Run.open(workspace.runs, run_id)
        else:
            run = Run.create(workspace.runs, load_profile(profile, env=os.environ), phase, workspace.root)
    _, spec = registry.find_stage(phase, stage)
    return StageContext(run=run, phase=phase, stage=spec)
