"""One enum per concept, shared by profiles, the optimizer, the meta allocation and the book.

They are `str` enums: a profile YAML, a JSON artifact and a parquet column hold the plain value
("hrp", "LONG", "completed"), and comparisons with plain strings keep working. `str()` and
f-strings give the plain value too (as Python 3.11's `enum.StrEnum`; the package supports 3.10), so
a member can go wherever a string went: labels, file names, error messages.
"""
from __future__ import annotations

from enum import Enum


class _StrEnum(str, Enum):
    """A str enum whose str() and format() are the value ("hrp"), not "RiskMethod.HRP"."""

    def __str__(self) -> str:
        return str.__str__(self)

    def __format__(self, spec: str) -> str:
        return str.__format__(str.__str__(self), spec)


class Direction(_StrEnum):
    """The side of a position: a LONG atom holds the asset, a SHORT atom sells it."""

    LONG = "LONG"
    SHORT = "SHORT"

    @property
    def sign(self) -> int:
        return 1 if self is Direction.LONG else -1


class RiskMethod(_StrEnum):
    """A sleeve optimizer risk profile (`optimizer.profiles`)."""

    HRP = "hrp"
    MIN_VARIANCE = "min_variance"
    MAX_SHARPE = "max_sharpe"
    RISK_PARITY = "risk_parity"
    EQUAL_WEIGHT = "equal_weight"


class MetaMethod(_StrEnum):
    """How a meta portfolio allocates across its sleeves (`meta.allocation.method`)."""

    RISK_PARITY = "risk_parity"
    HRP = "hrp"
    MIN_VARIANCE = "min_variance"


class Linkage(_StrEnum):
    """Hierarchical-clustering linkage (scipy's names) for HRP and the selection's clusters."""

    SINGLE = "single"
    COMPLETE = "complete"
    AVERAGE = "average"
    WEIGHTED = "weighted"
    CENTROID = "centroid"
    MEDIAN = "median"
    WARD = "ward"


class Engine(_StrEnum):
    """Who solves a risk profile: our native solvers or riskfolio-lib."""

    NATIVE = "native"
    RISKFOLIO = "riskfolio"


class Executor(_StrEnum):
    """Where a meta runs its sleeves: Ray tasks, or one after another in this process."""

    RAY = "ray"
    LOCAL = "local"


class StageStatus(_StrEnum):
    """A stage's state in a run's manifest."""

    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    SKIPPED = "skipped"


#: resources Ray schedules by its own arguments (`num_cpus`, ...): not custom resources a sleeve may ask for
RAY_BUILTIN_RESOURCES = ("CPU", "GPU", "memory", "object_store_memory")
