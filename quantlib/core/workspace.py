"""The workspace: the checkout a user works in -- `profiles/`, `notebooks/`, `runs/`, `lakehouse/`.

Every path the product reads or writes outside a run derives from one `Workspace(root)` passed
explicitly (a run records its workspace in its manifest). `Workspace.current()` is the one place that
guesses: `$FW_WORKSPACE`, else the nearest folder above the working directory holding
`profiles/base.yaml` (the checkout the user opened in JupyterLab or a shell), else the checkout this
package was installed from.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

INSTALLED_CHECKOUT = Path(__file__).resolve().parents[2]
ENV_VAR = "FW_WORKSPACE"


@dataclass(frozen=True)
class Workspace:
    """A checkout: where profiles, stage notebooks, runs and (by default) the lakehouse live."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root).resolve())

    @property
    def profiles(self) -> Path:
        return self.root / "profiles"

    @property
    def scanners(self) -> Path:
        return self.profiles / "scanners"

    @property
    def notebooks(self) -> Path:
        return self.root / "notebooks"

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    def resolve(self, path: str | Path) -> Path:
        """A profile path (e.g. `data.lakehouse`) relative to the workspace, absolute paths unchanged."""
        return self.root / path

    @classmethod
    def current(cls, start: str | Path | None = None) -> "Workspace":
        """$FW_WORKSPACE, else the checkout above `start` (default: the working directory), else the
        installed checkout."""
        if os.environ.get(ENV_VAR):
            return cls(Path(os.environ[ENV_VAR]))
        here = Path(start or Path.cwd()).resolve()
        for folder in (here, *here.parents):
            if (folder / "profiles" / "base.yaml").is_file() and (folder / "notebooks").is_dir():
                return cls(folder)
        return cls(INSTALLED_CHECKOUT)
