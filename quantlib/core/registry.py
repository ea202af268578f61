"""The artifact contract: every stage of every phase, the function it runs, what it reads and writes.

Each artifact is declared once, here, by the stage that writes it: a name (what code says), a path
relative to the run directory (the only place a path is written) and, for JSON verdicts, that it is a
gate. A stage declares the artifacts it reads by name. The executor (what to run, resume, INDEX.md),
a stage's context (`ctx.read` / `ctx.write` refuse what the stage did not declare), the sleeve audit,
the meta's completeness gate and the look-ahead audit all read these declarations.

Paths may hold `{scanner}` (one file per data scanner) or `{profile}` (one per optimizer risk profile).
This module is pure data: it names stage functions as ``"module:function"`` strings, so every layer
may import it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from quantlib.core.errors import WorkbookError
from quantlib.core.ids import check_name

FORMATS = {".parquet": "parquet", ".json": "json", ".md": "text", ".csv": "text", ".html": "text", ".txt": "text"}


@dataclass(frozen=True)
class Artifact:
    """One file a stage writes into its run: `name` (unique in its phase), `path` (run-relative)."""

    name: str
    path: str
    gate: bool = False  # a JSON verdict `{passed, checks}` (core.gates), shown in INDEX.md

    @property
    def format(self) -> str:
        """parquet | json | text, from the file suffix."""
        return FORMATS[PurePosixPath(self.path).suffix]

    @property
    def field(self) -> str | None:
        """The placeholder the path is expanded over (`scanner` / `profile`), if any."""
        return next((f for f in ("scanner", "profile") if "{" + f + "}" in self.path), None)

    def resolve(self, **fields: str) -> str:
        """The run-relative path, its placeholder filled from `fields` (a plain name: a value such as
        `../artifacts/x` would reach another artifact's file)."""
        if self.field is None:
            return self.path
        if self.field not in fields:
            raise WorkbookError(f"artifact {self.name!r} ({self.path}) needs {self.field}=...")
        return self.path.format(**{self.field: check_name(str(fields[self.field]), self.field)})

    def expand(self, profile: Any) -> list[str]:
        """Every path of this artifact for a resolved profile (data scanners / risk profiles)."""
        if self.field == "scanner":
            return [self.resolve(scanner=s) for s in profile.data.scanners]
        if self.field == "profile":
            return [self.resolve(profile=str(p)) for p in profile.optimizer.profiles]  # str(enum) is its value
        return [self.path]


@dataclass(frozen=True)
class Stage:
    """One notebook of a phase: the function it runs, the artifacts it writes and reads (by name)."""

    name: str
    notebook: str  # relative to the workspace's notebooks/
    runs: str  # "module:function" the notebook calls with the stage's context
    writes: tuple[Artifact, ...]
    reads: tuple[str, ...] = ()  # artifact names of the same run, written by earlier stages
    lakehouse_writes: tuple[str, ...] = ()  # files in the shared lakehouse (hashes recorded)
    optional: bool = False  # skipped by a CLI flag (--skip-validation / --skip-analysis)
    description: str = ""
    external: str | None = None  # "module:function" fingerprinting what it reads outside its run (stage cache)

    @property
    def gates(self) -> tuple[Artifact, ...]:
        return tuple(a for a in self.writes if a.gate)

    def writes_name(self, name: str) -> bool:
        return any(a.name == name for a in self.writes)

    def expanded_outputs(self, profile: Any) -> list[str]:
        """Every run-relative path the stage must have written (placeholders expanded)."""
        return [path for artifact in self.writes for path in artifact.expand(profile)]


def _a(name: str, path: str, gate: bool = False) -> Artifact:
    return Artifact(name, path, gate)


DATA_EXTERNAL = "quantlib.stages.external:data_inputs"  # every data stage reads the source and/or the lakehouse


PHASES: dict[str, tuple[Stage, ...]] = {
    "data": (
        Stage("universe", "data/01_universe.ipynb", "quantlib.stages.data:discover_universe",
              (_a("universe", "artifacts/universe.json"), _a("markets", "artifacts/markets.parquet"),
               _a("tickers", "artifacts/tickers.parquet")),
              external=DATA_EXTERNAL, description="market-level scan: the symbols to ingest"),
        Stage("ingest", "data/02_ingest.ipynb", "quantlib.stages.data:ingest_universe",
              (_a("ingest_report", "artifacts/ingest_report.parquet"),),
              reads=("universe",), lakehouse_writes=("registry.parquet",),
              external=DATA_EXTERNAL, description="parallel OHLCV ingestion with the toxic guard"),
        Stage("metadata", "data/03_metadata.ipynb", "quantlib.stages.data:refresh_metadata",
              (_a("metadata_report", "artifacts/metadata_report.json"),),
              reads=("markets",), lakehouse_writes=("symbols.parquet",), external=DATA_EXTERNAL,
              description="tick/lot sizes and fees"),
        Stage("features", "data/04_features.ipynb", "quantlib.stages.data:technicals",
              (_a("technicals", "artifacts/technicals.parquet"),),
              reads=("universe",), lakehouse_writes=("technicals.parquet",),
              external=DATA_EXTERNAL, description="technical ratings snapshot"),
        Stage("scan", "data/05_scan.ipynb", "quantlib.stages.data:full_scan",
              (_a("export", "export/{scanner}.json"), _a("scan_summary", "artifacts/scan_summary.json")),
              reads=("technicals", "markets", "tickers"),
              external=DATA_EXTERNAL, description="full scanners -> candidate lists"),
        Stage("backfill", "data/06_backfill.ipynb", "quantlib.stages.data:backfill_matrix",
              (_a("backfill_report", "artifacts/backfill_report.json"),),
              lakehouse_writes=("features_matrix.parquet",),
              external=DATA_EXTERNAL, description="point-in-time features matrix"),
    ),
    "sleeve": (
        Stage("aggregate", "sleeve/01_aggregate.ipynb", "quantlib.stages.sleeve:aggregate",
              (_a("returns", "artifacts/returns.parquet"), _a("benchmark", "artifacts/benchmark.parquet"),
               _a("screener", "artifacts/screener.parquet"), _a("candidates", "artifacts/candidates.parquet"),
               _a("funnel", "artifacts/funnel.parquet"), _a("health", "artifacts/health.json"),
               _a("universe", "artifacts/universe.json"), _a("data_inputs", "artifacts/data_inputs.json")),
              external="quantlib.stages.external:sleeve_inputs",
              description="base-universe returns, point-in-time screener and the production universe "
                          "(the only stage that reads the lakehouse)"),
        Stage("select", "sleeve/02_select.ipynb", "quantlib.stages.sleeve:select",
              (_a("selection", "artifacts/selection.parquet"), _a("selection_audit", "artifacts/selection_audit.json")),
              reads=("returns", "candidates"), description="HTR natural selection"),
        Stage("synthesize", "sleeve/03_synthesize.ipynb", "quantlib.stages.sleeve:synthesize",
              (_a("atoms", "artifacts/atoms.parquet"), _a("synthetic_returns", "artifacts/synthetic_returns.parquet"),
               _a("sign_test_pre_opt", "artifacts/sign_test_pre_opt.json", gate=True)),
              reads=("returns", "selection"), description="strategy atoms and the pre-opt sign test"),
        Stage("pre_opt", "sleeve/04_pre_opt.ipynb", "quantlib.stages.sleeve:pre_opt",
              (_a("clusters", "artifacts/clusters.json"), _a("antifragility", "artifacts/antifragility.parquet"),
               _a("regime", "artifacts/regime.json")),
              reads=("synthetic_returns",), description="clusters, antifragility, regime caps"),
        Stage("optimize", "sleeve/05_optimize.ipynb", "quantlib.stages.sleeve:optimize",
              (_a("weights", "artifacts/weights.parquet"), _a("flattened", "artifacts/flattened.parquet"),
               _a("sign_test", "artifacts/sign_test.json", gate=True),
               _a("optimization", "artifacts/optimization.json")),
              reads=("synthetic_returns", "atoms", "clusters", "regime"),
              description="risk profiles, Stable Sum Gate, flattening"),
        Stage("report", "sleeve/06_report.ipynb", "quantlib.stages.sleeve:report",
              (_a("weights_csv", "artifacts/weights.csv"), _a("flattened_csv", "artifacts/flattened.csv"),
               _a("tearsheet", "reports/tearsheet.md"), _a("tearsheet_html", "reports/tearsheet_{profile}.html"),
               _a("audit", "artifacts/audit.json", gate=True)),
              reads=("returns", "benchmark", "selection", "selection_audit", "atoms", "synthetic_returns",
                     "sign_test_pre_opt", "weights", "flattened", "sign_test", "optimization"),
              description="tearsheets, weight files and the atomic audit gate"),
        Stage("validate", "sleeve/07_validate.ipynb", "quantlib.stages.sleeve:validate",
              (_a("wf_returns", "backtest/returns.parquet"), _a("wf_benchmarks", "backtest/benchmarks.parquet"),
               _a("wf_metrics", "backtest/metrics.parquet"), _a("wf_windows", "backtest/windows.parquet"),
               _a("wf_universe", "backtest/universe.parquet"), _a("wf_funnel", "backtest/funnel.parquet"),
               _a("wf_holdings", "backtest/holdings.parquet"), _a("wf_events", "backtest/events.parquet"),
               _a("wf_turnover", "backtest/turnover.parquet"), _a("wf_costs", "backtest/costs.parquet"),
               _a("wf_eligibility", "backtest/eligibility.parquet"), _a("wf_selection", "backtest/selection.parquet"),
               _a("parity", "backtest/parity.json", gate=True)),
              reads=("returns", "screener", "universe", "benchmark"), optional=True,
              description="walk-forward validation on point-in-time universes, two simulators, benchmarks"),
        Stage("post_analysis", "sleeve/08_post_analysis.ipynb", "quantlib.stages.sleeve:post_analysis",
              (_a("cluster_map", "plots/cluster_map.html"), _a("factor_map", "plots/factor_map.html"),
               _a("drift_plot", "plots/drift_{profile}.html"), _a("clusters_plot", "plots/clusters_{profile}.html"),
               _a("drift", "artifacts/drift.parquet")),
              reads=("synthetic_returns", "weights", "clusters", "wf_holdings"), optional=True,
              description="cluster map, factor map, drift monitors"),
    ),
    "meta": (
        Stage("sleeves", "meta/01_sleeves.ipynb", "quantlib.stages.meta:run_sleeves",
              (_a("sleeves", "artifacts/sleeves.json"),),
              description="every unpinned sleeve's whole book, in parallel on Ray"),
        Stage("gates", "meta/02_gates.ipynb", "quantlib.stages.meta:gates",
              (_a("meta_sign_test_gate", "artifacts/meta_sign_test_gate.json", gate=True),
               _a("completeness", "artifacts/completeness.json", gate=True)),
              reads=("sleeves",), description="sign-test and sleeve-completeness gates"),
        Stage("allocate", "meta/03_allocate.ipynb", "quantlib.stages.meta:allocate",
              (_a("sleeve_returns", "artifacts/sleeve_returns.parquet"),
               _a("meta_weights", "artifacts/meta_weights.parquet"),
               _a("meta_weights_history", "artifacts/meta_weights_history.parquet"),
               _a("meta_returns", "artifacts/meta_returns.parquet"), _a("aggregation", "artifacts/aggregation.json")),
              reads=("sleeves",), description="sleeves become assets; meta weights; out-of-sample stream"),
        Stage("flatten", "meta/04_flatten.ipynb", "quantlib.stages.meta:flatten",
              (_a("meta_flattened", "artifacts/meta_flattened.parquet"),
               _a("meta_flattened_csv", "artifacts/meta_flattened.csv"), _a("exposures", "artifacts/exposures.json")),
              reads=("sleeves", "meta_weights"), description="physical weights, exposures, cap check"),
        Stage("report", "meta/05_report.ipynb", "quantlib.stages.meta:report",
              (_a("meta_report_md", "meta_portfolio_report.md"), _a("meta_report", "artifacts/meta_report.json", gate=True)),
              reads=("sleeves", "completeness", "meta_sign_test_gate", "meta_weights", "aggregation", "sleeve_returns",
                     "meta_returns", "meta_weights_history", "meta_flattened", "exposures"),
              description="meta_portfolio_report.md with computed verdicts"),
    ),
}

#: phases whose stages the stage cache may restore; a meta's stages read its sleeve runs (fresh ids each
#: time, pinned runs that may have changed) and are cheap: they always run, while its sleeves use the cache
CACHED_PHASES = ("data", "sleeve")

#: artifacts written into a finished run by a command, not by a stage
COMMAND_ARTIFACTS: dict[str, tuple[Artifact, ...]] = {
    "sleeve": (_a("lookahead_audit", "backtest/lookahead_audit.json", gate=True),),
}


def stages(phase: str) -> tuple[Stage, ...]:
    if phase not in PHASES:
        raise WorkbookError(f"unknown phase {phase!r}; known: {', '.join(PHASES)}")
    return PHASES[phase]


def find_stage(phase: str, name: str) -> tuple[int, Stage]:
    """(1-based position, stage) of stage `name` in `phase`."""
    for i, stage in enumerate(stages(phase), start=1):
        if stage.name == name:
            return i, stage
    raise WorkbookError(f"unknown stage {name!r} in phase {phase!r}; known: "
                        f"{', '.join(s.name for s in stages(phase))}")


def artifact(phase: str, name: str) -> Artifact:
    """The declaration of artifact `name` of `phase` (stage outputs, then command outputs)."""
    for item in (*[a for s in stages(phase) for a in s.writes], *COMMAND_ARTIFACTS.get(phase, ())):
        if item.name == name:
            return item
    raise WorkbookError(f"no artifact {name!r} in phase {phase!r} (quantlib.core.registry)")


def writer(phase: str, name: str) -> Stage:
    """The stage of `phase` that writes artifact `name`."""
    for stage in stages(phase):
        if stage.writes_name(name):
            return stage
    raise WorkbookError(f"no stage of phase {phase!r} writes {name!r} (quantlib.core.registry)")


def path(phase: str, name: str, **fields: str) -> str:
    """Run-relative path of artifact `name` of a `phase` run."""
    return artifact(phase, name).resolve(**fields)


def _check_registry() -> None:
    """Names unique per phase, reads declared by an earlier stage: checked at import (a typo fails fast)."""
    for phase, plan in PHASES.items():
        seen: dict[str, str] = {}
        for stage in plan:
            for name in stage.reads:
                if name not in seen:
                    raise WorkbookError(f"registry: stage {phase}/{stage.name} reads {name!r}, "
                                        f"which no earlier stage writes")
            for item in stage.writes:
                if item.name in seen:
                    raise WorkbookError(f"registry: artifact {phase}/{item.name} declared twice")
                seen[item.name] = stage.name
        for item in COMMAND_ARTIFACTS.get(phase, ()):
            if item.name in seen:
                raise WorkbookError(f"registry: artifact {phase}/{item.name} declared twice")


_check_registry()
