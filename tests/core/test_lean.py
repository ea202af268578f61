"""The imports the workbook's processes skip: nbformat, papermill and plotly.io still work without them."""
from __future__ import annotations

import importlib.util
import subprocess
import sys

from quantlib.core import lean
from quantlib.engine.kernel import SharedKernel

PROBE = """
import sys, time
{setup}
start = time.perf_counter()
import nbformat, plotly.io
nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("1")])
nbformat.validate(nb)
nbformat.reads(nbformat.writes(nb), as_version=4)
print(sys.modules.get("rfc3987_syntax") is None, round(time.perf_counter() - start, 2))
"""


def probe(setup: str) -> tuple[bool, float]:
    out = subprocess.run([sys.executable, "-c", PROBE.format(setup=setup)], capture_output=True, text=True, check=True)
    skipped, seconds = out.stdout.split()
    return skipped == "True", float(seconds)


def test_skipped_in_the_driver_and_nbformat_still_validates():
    assert probe("from quantlib.core.lean import skip_unused_imports; skip_unused_imports()")[0]
    if importlib.util.find_spec("rfc3987_syntax"):  # installed with JupyterLab: without the skip it is imported
        assert not probe("")[0]


def test_skipped_in_a_stage_kernel_by_its_first_code():
    assert SharedKernel("import pandas").warm.startswith(lean.KERNEL_SOURCE)
    assert probe(lean.KERNEL_SOURCE)[0]
