"""A meta portfolio's sleeves: finished runs of a sleeve profile or of a nested meta profile.

A `SleeveRef` locates one sleeve's run; its files are found through the registry (`quantlib.core.registry`)
under the phase of the run (a sleeve run: phase "sleeve", a nested meta: phase "meta"), so no artifact
path is written here. What a meta reads from a sleeve run:

- its out-of-sample stream: sleeve `wf_returns` (one column per risk profile), nested meta `meta_returns`
  (column "meta");
- its book: sleeve `flattened` (rows per risk profile), nested meta `meta_flattened`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quantlib.core import registry

#: The kinds of sleeve a meta holds (the phase of the sleeve's run).
KINDS: tuple[str, ...] = ("sleeve", "meta")

#: The column of a nested meta's stream (`meta_returns`).
META_STREAM_COLUMN = "meta"

#: Columns a readable parquet artifact must carry: (phase, artifact name) -> columns.
REQUIRED_COLUMNS: dict[tuple[str, str], tuple[str, ...]] = {
    ("sleeve", "flattened"): ("profile", "symbol", "net_weight", "gross_weight"),
    ("sleeve", "atoms"): ("atom_id", "symbol", "logic", "direction"),
    ("meta", "meta_flattened"): ("symbol", "net_weight", "gross_weight"),
    ("meta", "meta_returns"): (META_STREAM_COLUMN,),
}


def value(x: Any) -> str:
    """The plain string of a profile choice given as a str enum (RiskMethod, MetaMethod) or a str."""
    return str(getattr(x, "value", x))


@dataclass(frozen=True)
class SleeveRef:
    """One resolved sleeve of a meta profile.

    `run_dir` None means the sleeve has no run (never ran / missing). `kind` "meta" is a nested meta
    run: its stream is the meta's `meta_returns` column "meta" and its book `meta_flattened` (symbol,
    net_weight, gross_weight).
    """

    id: str
    run_dir: Path | None
    kind: str = "sleeve"

    @property
    def phase(self) -> str:
        """The registry phase of the sleeve's run (anything but "meta" is read as a sleeve run)."""
        return "meta" if self.kind == "meta" else "sleeve"

    def path(self, name: str) -> Path:
        """Where artifact `name` (of the run's phase) is in the sleeve's run (the run must exist)."""
        if self.run_dir is None:
            raise ValueError(f"sleeve {self.id} has no run directory")
        return Path(self.run_dir) / registry.path(self.phase, name)

    def stream(self, risk_profile: Any) -> tuple[str, str]:
        """(artifact name, column) of the sleeve's out-of-sample stream for `risk_profile`."""
        if self.kind == "meta":
            return "meta_returns", META_STREAM_COLUMN
        return "wf_returns", value(risk_profile)

    @property
    def book(self) -> str:
        """The artifact name of the sleeve's flattened book."""
        return "meta_flattened" if self.kind == "meta" else "flattened"


def sleeve_refs(doc: dict) -> list[SleeveRef]:
    """The sleeves of a meta run's `sleeves` artifact (as written by its sleeves stage)."""
    return [SleeveRef(s["id"], Path(s["run_dir"]) if s.get("run_dir") else None, s.get("kind", "sleeve"))
            for s in doc["sleeves"]]
