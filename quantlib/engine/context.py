"""The notebook side of the book: open a stage's context from the `run_dir` parameter.

An empty `run_dir` means "interactive" (JupyterLab): use the newest run of the profile, or create one,
so every stage notebook also runs top to bottom with its default parameters.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from quantlib.engine.executor import Stage, find_stage
from quantlib.core.errors import DataError
from quantlib.data.lakehouse import Lakehouse
from quantlib.core.profiles import Profile, load_profile
from quantlib.core.runs import Run, newest_run
from quantlib.core.workspace import Workspace
from quantlib.data.sources import MarketDataSource, make_source



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
    def lake(self) -> Lakehouse:
        return Lakehouse(self.run.workspace / self.profile.data.lakehouse)

    def source(self) -> MarketDataSource:
        return make_source(self.profile.source)

    def path(self, relative: str) -> Path:
        """A run-relative artifact path (directories created)."""
        target = self.run.path(relative)
        target.parent.mkdir(parents=True, exist_ok=True)
        return target

    def require(self, relative: str) -> Path:
        """An input artifact that must exist (DataError names the stage that writes it)."""
        target = self.run.path(relative)
        if not target.exists():
            resume = (f"python run_book.py data --profile {self.run.manifest['profile']} --run-id {self.run.id}"
                      if self.phase == "data" else
                      f"python run_book.py {self.phase} {self.run.manifest['profile']} --run-id {self.run.id}")
            raise DataError(f"stage {self.stage.name}: missing input {target}; run the earlier stages "
                            f"of run {self.run.id} first ({resume})")
        return target


def open_stage(run_dir: str, stage: str, phase: str = "data", profile: str = "demo") -> StageContext:
    """Context for `stage` of `phase` in `run_dir` (or the newest/new run of `profile` if empty)."""
    if run_dir:
        run = Run.at(run_dir)
    else:
        workspace = Workspace.current()
        runs_dir = workspace.runs
        run_id = newest_run(runs_dir, profile, phase)
        if run_id:
            run = Run.open(runs_dir, run_id)
        else:
            run = Run.create(runs_dir, load_profile(profile, env=os.environ), phase, workspace.root)
    _, spec = find_stage(phase, stage)
    return StageContext(run=run, phase=phase, stage=spec)
