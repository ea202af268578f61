"""The executor's papermill engine: the executed notebook is written at the start and at the end, not on
every cell (papermill's own manager rewrote it twice per cell), and what an error message reads is there."""
from __future__ import annotations

import json

import nbformat
import papermill
import papermill.engines
import papermill.execute
import pytest

from quantlib.engine import notebook_engine


def notebook(path, *sources: str):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s) for s in sources])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, str(path))
    return path


@pytest.fixture
def writes(monkeypatch):
    """Every notebook write: by the engine's manager ("engine") and by papermill after execution ("papermill")."""
    seen: list[str] = []
    for module, who in ((papermill.engines, "engine"), (papermill.execute, "papermill")):
        original = module.write_ipynb
        monkeypatch.setattr(module, "write_ipynb",
                            lambda nb, path, _o=original, _w=who: (seen.append(_w), _o(nb, path))[1])
    return seen


def test_a_passing_notebook_is_written_at_the_start_and_once_by_papermill(tmp_path, writes):
    source = notebook(tmp_path / "in.ipynb", *[f"x{i} = {i}" for i in range(12)], "print(x11)")
    out = tmp_path / "out.ipynb"
    papermill.execute_notebook(str(source), str(out), kernel_name="python3", progress_bar=False,
                               engine_name=notebook_engine.register())
    assert writes == ["engine", "papermill"]  # papermill's manager: 2 x 13 cells + 2
    cells = json.loads(out.read_text())["cells"]
    assert cells[-1]["outputs"][0]["text"] == ["11\n"]
    assert {c["metadata"]["papermill"]["status"] for c in cells} == {"completed"}


def test_a_timed_out_notebook_is_written_with_its_cell_failed(tmp_path, writes):
    source = notebook(tmp_path / "in.ipynb", "a = 1", "import time; time.sleep(30)", "b = 2")
    out = tmp_path / "out.ipynb"
    with pytest.raises(Exception, match="(?i)timeout|timed out"):
        papermill.execute_notebook(str(source), str(out), kernel_name="python3", progress_bar=False,
                                   execution_timeout=2, engine_name=notebook_engine.register())
    assert writes == ["engine", "engine"]  # the start, and the state when execution raised
    status = [c["metadata"]["papermill"]["status"] for c in json.loads(out.read_text())["cells"]]
    assert status == ["completed", "failed", "pending"]


def test_a_long_stage_is_saved_while_it_runs(tmp_path, writes, monkeypatch):
    monkeypatch.setattr(notebook_engine, "SAVE_EVERY_S", 0.0)  # every cell start / end is past the interval
    source = notebook(tmp_path / "in.ipynb", "a = 1", "b = 2")
    papermill.execute_notebook(str(source), str(tmp_path / "out.ipynb"), kernel_name="python3",
                               progress_bar=False, engine_name=notebook_engine.register())
    assert writes.count("engine") >= 5  # start, 2 x (cell start, cell end), end
