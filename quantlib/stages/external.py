"""What a stage reads outside its run, fingerprinted for the stage cache (registry `external` hooks).

Kept apart from the stage functions so that computing a cache key imports nothing heavy: the driver
evaluates these hooks before each stage, while the stage kernel is still starting.
"""
from __future__ import annotations

from quantlib.core import storage
from quantlib.core.runs import Run, locate_data_run
from quantlib.engine.context import StageContext


def data_inputs(ctx: StageContext) -> str | None:
    """A data stage: the source's snapshot (None for a live venue: uncacheable) and the lakehouse's content."""
    snapshot = ctx.source().snapshot()
    if snapshot is None:
        return None
    return f"source {snapshot}; lakehouse {storage.tree_hash(ctx.lake.root)}"


def sleeve_data_run(ctx: StageContext) -> Run:
    """The data run the sleeve reads: `sleeve.data_run_id`, else the newest PASS one exporting its scanners --
    among those its meta pinned when it started, for a sleeve of a meta (`RunOptions.data_runs`)."""
    cfg = ctx.profile.sleeve
    return locate_data_run(ctx.run.runs_root, cfg.scanners, cfg.data_run_id, among=ctx.run.options.data_runs)


def sleeve_inputs(ctx: StageContext) -> str:
    """A sleeve's aggregate stage: the data run it would use now and the lakehouse's content."""
    return f"data run {sleeve_data_run(ctx).id}; lakehouse {storage.tree_hash(ctx.lake.root)}"
