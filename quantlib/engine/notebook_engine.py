"""The papermill engine the executor runs stage notebooks with: nbclient's, saving less often.

papermill's `NotebookExecutionManager` rewrites the whole executed notebook (serialize + validate) when
every cell starts and ends; with a dozen cells and plotly outputs that was ~0.16 s a stage. Here the
notebook is written when execution starts, at most every `SAVE_EVERY_S` while cells run (so a long stage
can still be watched in the file), and once at the end when execution raised; papermill itself writes
the finished notebook after a successful run (or the one with its error cell after a failing cell).
A cell that timed out (or whose kernel died) is marked failed, and that state is always written: the
executor's error message names it.
"""
from __future__ import annotations

import time
from functools import lru_cache

ENGINE_NAME = "fractal"
SAVE_EVERY_S = 5.0


@lru_cache(maxsize=1)
def engine_class() -> type:
    """The engine class (built on first use: papermill is imported only by a process that executes a stage)."""
    from papermill.engines import NBClientEngine, NotebookExecutionManager

    class ThrottledSaves(NotebookExecutionManager):
        """papermill's execution manager, writing the notebook at most every `SAVE_EVERY_S` during execution."""

        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self.last_write = time.monotonic()
            self.started = None  # the cell that started last

        def save(self, force: bool = False, **kwargs) -> None:  # called by papermill on every cell start / end
            if force or time.monotonic() - self.last_write >= SAVE_EVERY_S:
                super().save(**kwargs)
                self.last_write = time.monotonic()

        def cell_start(self, cell, cell_index=None, **kwargs) -> None:
            self.started = cell
            super().cell_start(cell, cell_index, **kwargs)

        def notebook_start(self, **kwargs) -> None:
            super().notebook_start(**kwargs)
            self.save(force=True)  # the file exists (with every cell pending) from the start

    class FractalEngine(NBClientEngine):
        """nbclient execution with `ThrottledSaves` (papermill's `Engine.execute_notebook`, its manager replaced)."""

        @classmethod
        def execute_notebook(cls, nb, kernel_name, output_path=None, progress_bar=True, log_output=False,
                             autosave_cell_every=30, **kwargs):
            nb_man = ThrottledSaves(nb, output_path=output_path, progress_bar=progress_bar, log_output=log_output,
                                    autosave_cell_every=autosave_cell_every)
            nb_man.notebook_start()
            try:
                cls.execute_managed_notebook(nb_man, kernel_name, log_output=log_output, **kwargs)
            except BaseException:
                if nb_man.started is not None:  # papermill marks a cell completed even when it timed out or the
                    nb_man.cell_exception(nb_man.started)  # kernel died in it: it failed (the executor names it)
                nb_man.cleanup_pbar()
                nb_man.notebook_complete()
                nb_man.save(force=True)  # papermill writes nothing more when execution itself raised
                raise
            nb_man.cleanup_pbar()
            nb_man.notebook_complete()  # papermill writes the finished notebook next
            return nb_man.nb

    return FractalEngine


def register() -> str:
    """Register the engine with papermill (idempotent); returns its name for `execute_notebook(engine_name=)`."""
    from papermill.engines import papermill_engines

    papermill_engines.register(ENGINE_NAME, engine_class())
    return ENGINE_NAME
