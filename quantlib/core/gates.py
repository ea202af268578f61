"""One gate type: a `GateResult` of `Check`s, one file shape, one `enforce`.

Every verdict the workbook computes (sign tests, the sleeve audit, simulator parity, the meta's
completeness and sign-test gates, the meta report, the look-ahead audit) is a `GateResult`, written
as JSON in one shape::

    {"gate": "audit", "passed": true,
     "checks": [{"code": "RETURNS", "passed": true, "required": true, "detail": "...", "subject": null}],
     "info": {...}}

`passed` is computed, never stored separately: at least one required check, and every required check
passed. A check that is not required (a warning) is reported but never fails the gate; a gate with no
required check at all was not checked (`checked` False, shown as "not checked"). INDEX.md, the meta's
gates and `enforce` read only this shape.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from quantlib.core.errors import GateError

if TYPE_CHECKING:  # imported by `table` when used: INDEX.md and `show` read verdicts without pandas
    import pandas as pd


@dataclass(frozen=True)
class Check:
    """One verified fact: `code` names the check, `subject` what it is about (a sleeve, an atom, a
    risk profile; None for the whole), `required` False makes a failure a warning."""

    code: str
    passed: bool
    detail: str
    required: bool = True
    subject: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "passed", bool(self.passed))

    def label(self) -> str:
        return f"{self.code}:{self.subject}" if self.subject else self.code


@dataclass(frozen=True)
class GateResult:
    """The outcome of gate `gate`: its checks and gate-specific facts (`info`, JSON-serializable)."""

    gate: str
    checks: tuple[Check, ...]
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "checks", tuple(self.checks))

    @property
    def checked(self) -> bool:
        return any(c.required for c in self.checks)

    @property
    def passed(self) -> bool:
        return self.checked and all(c.passed for c in self.checks if c.required)

    @property
    def failed(self) -> list[Check]:
        """Required checks that failed (what makes the gate FAIL)."""
        return [c for c in self.checks if c.required and not c.passed]

    @property
    def warnings(self) -> list[Check]:
        return [c for c in self.checks if not c.required and not c.passed]

    def check(self, code: str, subject: str | None = None) -> Check:
        """The check `code` (of `subject`); KeyError when the gate has none."""
        for c in self.checks:
            if c.code == code and (subject is None or c.subject == subject):
                return c
        raise KeyError(f"gate {self.gate} has no check {code!r}" + (f" for {subject!r}" if subject else ""))

    def summary(self) -> str:
        """One line: the failed checks (or how many passed)."""
        if self.passed:
            return f"{len(self.checks)} check(s) passed" + (f", {len(self.warnings)} warning(s)" if self.warnings else "")
        if not self.checked:
            return "not checked: " + ("; ".join(c.detail for c in self.checks) or "no checks recorded")
        return "; ".join(f"{c.label()}: {c.detail}" for c in self.failed)

    def table(self) -> pd.DataFrame:
        """The checks as a frame (for notebooks)."""
        import pandas as pd

        return pd.DataFrame([asdict(c) for c in self.checks], columns=["code", "subject", "passed", "required", "detail"])

    def to_dict(self) -> dict[str, Any]:
        return {"gate": self.gate, "passed": self.passed, "checks": [asdict(c) for c in self.checks],
                "info": self.info}

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> "GateResult":
        return cls(doc["gate"], tuple(Check(**c) for c in doc.get("checks", [])), doc.get("info") or {})


def gate_label(name: str) -> str:
    """How messages name a gate: `audit gate`, but `meta_sign_test_gate` (never "... gate gate")."""
    return name if name.endswith("gate") else f"{name} gate"


def enforce(result: GateResult, fix: str) -> GateResult:
    """Raise GateError naming the failed checks and `fix` (what to do); return `result` if it passed."""
    if not result.passed:
        raise GateError(f"{gate_label(result.gate)} failed: {result.summary()}; {fix}")
    return result


def verdict(doc: Any) -> bool | None:
    """PASS/FAIL of a gate file's content (None when it is not a gate result or was not checked)."""
    if isinstance(doc, dict) and "gate" in doc and isinstance(doc.get("checks"), list):
        try:
            result = GateResult.from_dict(doc)
        except (TypeError, KeyError):
            return None
        return result.passed if result.checked else None
    return None
