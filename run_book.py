#!/usr/bin/env python
"""Fractal Workbook's command line: `python run_book.py --help` (the parser is `quantlib.cli`, the commands `quantlib.commands`).

Run from anywhere, it works on this checkout: its profiles, notebooks and runs.
"""
import os
import sys
from pathlib import Path

os.environ.setdefault("FW_WORKSPACE", str(Path(__file__).resolve().parent))

from quantlib.cli import main  # noqa: E402 (the workspace is set first)

if __name__ == "__main__":
    sys.exit(main())
