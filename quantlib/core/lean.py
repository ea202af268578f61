"""Import-time costs the workbook's processes do not need to pay.

nbformat (imported by papermill, nbconvert and plotly.io, so by the driver, every stage kernel and every Ray
sleeve task) imports jsonschema, which imports `rfc3987_syntax` when it is installed (jupyter-events, a
JupyterLab dependency, asks for it). That module builds some thirty Earley parsers when imported: 1.1 s of
CPU per process. It serves only jsonschema's optional "iri" / "iri-reference" format checks, which no
schema the workbook validates uses (nbformat validates without format checks). A `None` entry in
`sys.modules` makes the import fail, and jsonschema then goes without those two checks, as it does when
the package is not installed. Applied only in the workbook's own processes, never in a user's Jupyter.
"""
from __future__ import annotations

import sys

SKIPPED = ("rfc3987_syntax",)
KERNEL_SOURCE = "import quantlib.core.lean as _lean; _lean.skip_unused_imports(); del _lean\n"
"""The same in a stage kernel (the driver's quantlib is first on its path): its first code, before the warm imports."""


def skip_unused_imports() -> None:
    """Block the imports in `SKIPPED` in this process (one already imported stays)."""
    for name in SKIPPED:
        sys.modules.setdefault(name, None)
