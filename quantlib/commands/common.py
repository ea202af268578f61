"""What every command reads from its arguments: the runs root and the runs named on the command line."""
from __future__ import annotations

import argparse
from pathlib import Path

from quantlib.core.errors import DataError
from quantlib.core.runs import Run, open_run
from quantlib.core.workspace import Workspace


def runs_dir(args: argparse.Namespace) -> Path:
    """`--runs-dir` (before or after the command), else the workspace's runs/; a file there is refused."""
    path = Path(args.runs_dir).resolve() if getattr(args, "runs_dir", None) else Workspace.current().runs
    if path.exists() and not path.is_dir():
        raise DataError(f"--runs-dir {path}: a file, not a directory; point --runs-dir at a directory "
                        f"(it is created if missing)")
    return path


def run_at(args: argparse.Namespace, ref: str) -> Run:
    """The run `ref` names: a run directory, a run id under --runs-dir, or META/SLEEVE (a meta's sleeve)."""
    return open_run(ref, runs_dir(args))
