"""One enum per concept, shared by profiles, the optimizer, the meta allocation and the book.

They are `str` enums: a profile YAML, a JSON artifact and a parquet column hold the plain value
("hrp", "LONG", "completed"), and comparisons with plain strings keep working.
"""
from __future__ import annotations

from enum import Enum


class Direction(str, Enum):
    """The side of a position: a LONG atom holds the asset, a SHORT atom sells it."""

    LONG = "LONG"
    SHORT = "SHORT"

    @property
    def sign(self) -> int:
        return 1 if self is Direction.LONG else -1


class RiskMethod(str, Enum):
    """A sleeve optimizer risk profile (`optimizer.profiles`)."""

    HRP = "hrp"
    MIN_VARIANCE = "min_variance"
    MAX_SHARPE = "max_sharpe"
    RISK_PARITY = "risk_parity"
    EQUAL_WEIGHT = "equal_weight"


class MetaMethod(str, Enum):
    """How a meta portfolio allocates across its sleeves (`meta.allocation.method`)."""

    RISK_PARITY = "risk_parity"
    HRP = "hrp"
    MIN_VARIANCE = "min_variance"


class Linkage(str, Enum):
    """Hierarchical-clustering linkage (scipy's names) for HRP and the selection's clusters."""

    SINGLE = "single"
    COMPLETE = "complete"
    AVERAGE = "average"
    WEIGHTED = "weighted"
    CENTROID = "centroid"
    MEDIAN = "median"
    WARD = "ward"


class Engine(str, Enum):
    """Who solves a risk profile: our native solvers or riskfolio-lib."""

    NATIVE = "native"
    RISKFOLIO = "riskfolio"


class Executor(str, Enum):
    """Where a meta runs its sleeves: Ray tasks, or one after another in this process."""

    RAY = "ray"
    LOCAL = "local"


class StageStatus(str, Enum):
    """A stage's state in a run's manifest."""

    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    SKIPPED = "skipped"
