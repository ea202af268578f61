"""Profiles: YAML files with `extends:` inheritance, one strict pydantic schema, env overrides.

`profiles/base.yaml` is the one source of defaults: the schema declares types and bounds only, and
every profile implicitly extends `base` unless it names another parent. Mappings deep-merge, lists
replace. Unknown keys and cyclic inheritance are errors naming the file and key. Environment
variables `FW_<SECTION>__<KEY>=value` (value parsed as YAML) are applied last and recorded; the command
line's `-p section.key=value` becomes the same variable (`ParamEnv`), so it is recorded and resumed alike.
A profile's kind (data / sleeve / meta, `profile_kind`) decides which phase may run it (`check_kind`).
"""
from __future__ import annotations

import copy
import difflib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from quantlib.core.enums import RAY_BUILTIN_RESOURCES, Engine, Linkage, MetaMethod, RiskMethod
from quantlib.core.errors import IdentifierError, ProfileError
from quantlib.core.ids import check_name, check_run_id, check_symbol
from quantlib.core.workspace import Workspace

BASE_PROFILE = "base"
ANNUALIZATION = {"crypto": 365, "equities": 252}  # periods per year: 24x7 crypto, weekday equities
ENV_PREFIX = "FW_"
KINDS = ("data", "sleeve", "meta")


class Strict(BaseModel):
    """A frozen model that rejects unknown keys."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def _run_id_or_none(value: Any, what: str) -> Any:
    """A pinned run id must be a plain directory name (`ids.check_run_id`): checked when the profile loads,
    never first met as a path at stage time."""
    if value is None:
        return None
    try:
        return check_run_id(value)
    except IdentifierError as exc:
        raise ValueError(f"{what}: {exc}") from None


class SourceConfig(Strict):
    kind: Literal["sim", "ccxt"]
    venue: Literal["crypto", "equities"]
    exchange: str
    seed: int
    as_of: str | None
    n_bases: int | None = Field(ge=1)
    retries: int = Field(ge=0)
    backoff_s: float = Field(ge=0)

    @field_validator("as_of", mode="before")
    @classmethod
    def _iso(cls, value: Any) -> Any:
        """YAML turns `2026-11-25` into a date: keep it as ISO text."""
        return value.isoformat() if isinstance(value, (date, datetime)) else value


class DataConfig(Strict):
    """Phase 1 (SPEC §1.3). No freshness knob: a symbol is fresh while the source cannot have a newer
    closed bar than the last stored one (bar-period aware, judged from the data)."""

    timeframe: Literal["1d"]
    lookback_days: int = Field(ge=30)
    workers: int = Field(ge=1, le=64)
    toxic_return: float = Field(gt=0)
    flat_bars: int = Field(ge=2)
    scanners: list[str] = Field(min_length=1)
    anchors: list[str]
    backfill_chunk: int = Field(ge=1)
    lakehouse: str


class SleeveConfig(Strict):
    """Phase 2: which candidate lists a sleeve consumes and the window it studies (SPEC §2.1)."""

    scanners: list[str]
    data_run_id: str | None
    benchmark: str
    asset_class: Literal["crypto", "equities"]
    lookback_days: int = Field(ge=30)
    min_history_days: int = Field(ge=2)
    min_assets_after_health: int = Field(ge=2)
    train_days: int = Field(ge=20)

    @field_validator("data_run_id")
    @classmethod
    def _data_run_id(cls, value: str | None) -> str | None:
        return _run_id_or_none(value, "pinned data run")


class SelectionConfig(Strict):
    """HTR natural selection (SPEC §2.2); field names match `quantlib.sleeve.selection.SelectionParams`."""

    top_n: int = Field(ge=1)
    threshold: float = Field(gt=0)
    max_clusters: int = Field(ge=1)
    lookbacks: list[int] = Field(min_length=1)
    min_assets: int = Field(ge=2)
    max_assets: int = Field(ge=2)
    entropy_max: float | None = Field(gt=0, le=1)
    efficiency_min: float = Field(ge=0, le=1)
    hurst_band: tuple[float, float]
    hard_entropy_max: float = Field(gt=0, le=1)
    window: int = Field(ge=10)
    entropy_order: int = Field(ge=2, le=8)
    entropy_delay: int = Field(ge=1)
    weights: dict[str, float] | None
    dominant_signal: str | None


class OptimizerConfig(Strict):
    """Optimization (SPEC §2.5): engine, risk profiles, caps and the HRP linkage (any of scipy's).

    The caps are the profile's; the optimizer floors them (`quantlib.portfolio.caps.effective_caps`)."""

    engine: Engine
    profiles: list[RiskMethod] = Field(min_length=1)
    atom_cap: float = Field(gt=0, le=1)
    cluster_cap: float = Field(gt=0, le=1)
    linkage: Linkage


class BacktestConfig(Strict):
    """Walk-forward validation (SPEC §2.7); null values take the asset-class defaults."""

    train_days: int | None = Field(ge=20)
    test_days: int | None = Field(ge=1)
    slippage_bp: float | None = Field(ge=0)
    commission_bp: float | None = Field(ge=0)
    simulators: list[Literal["reference", "vectorbt"]] = Field(min_length=1)
    parity_tolerance: float = Field(gt=0)
    rolling_sharpe_days: int = Field(ge=5)
    workers: int | None = Field(ge=0, le=64)  # processes deciding the windows: None/0 = auto, 1 = sequential
    windows_on_ray: bool  # on a multi-node Ray cluster (FW_RAY_ADDRESS): the windows as Ray tasks there


class SleeveEntry(Strict):
    """One sleeve of a meta profile: a sleeve profile (optionally pinned to a finished run) or a nested meta.

    `resources` ({name: amount}) are custom Ray resources its task asks for, so it runs only on a node that
    has them (`ray start --resources='{"gpu_box": 1}'`, or `node:<ip>` for one machine); none by default."""

    id: str = Field(pattern=r"^[A-Za-z0-9_-]+$")
    profile: str | None = None
    meta_profile: str | None = None
    run_id: str | None = None
    resources: dict[str, float] | None = None

    @field_validator("run_id")
    @classmethod
    def _run_id(cls, value: str | None, info: ValidationInfo) -> str | None:
        return _run_id_or_none(value, f"sleeve {info.data.get('id', '?')!r}: pinned run")

    @field_validator("resources")
    @classmethod
    def _resources(cls, value: dict[str, float] | None, info: ValidationInfo) -> dict[str, float] | None:
        where = f"sleeve {info.data.get('id', '?')!r}: resources"
        for name, amount in (value or {}).items():
            if name in RAY_BUILTIN_RESOURCES or not name.strip():
                raise ValueError(f"{where}: {name!r} is not a custom Ray resource (a sleeve task takes 1 CPU); "
                                 f"name a resource its node was started with (`ray start --resources=...`)")
            if not amount > 0:
                raise ValueError(f"{where}: {name}={amount:g}; an amount must be > 0")
        return value

    @model_validator(mode="after")
    def _one_kind(self) -> "SleeveEntry":
        if (self.profile is None) == (self.meta_profile is None):
            raise ValueError(f"sleeve {self.id!r}: give exactly one of 'profile' or 'meta_profile'")
        if self.run_id is not None and self.meta_profile is not None:
            raise ValueError(f"sleeve {self.id!r}: 'run_id' pins a sleeve profile's run, not a meta_profile")
        if self.run_id is not None and self.resources:
            raise ValueError(f"sleeve {self.id!r}: 'resources' place a sleeve's task, but a pinned run "
                             f"(run_id) does not run; drop one of them")
        return self


class AllocationConfig(Strict):
    """Meta-optimization across sleeves (SPEC §3.5)."""

    method: MetaMethod
    min_weight: float = Field(ge=0, le=1)
    max_weight: float = Field(gt=0, le=1)
    risk_profile: RiskMethod
    train_days: int = Field(ge=10)
    test_days: int = Field(ge=1)


class MetaConfig(Strict):
    """Phase 3: the sleeves of a meta portfolio (empty for data and sleeve profiles)."""

    sleeves: list[SleeveEntry]
    allocation: AllocationConfig
    single_sleeve: bool
    physical_cap: float = Field(gt=0, le=1)
    ray_connect_timeout_s: float = Field(gt=0)  # joining --ray-address gives up after this (Ray retries for minutes)


class FeatureFlags(Strict):
    directional_sign_test_gate_atomic: bool
    directional_sign_test_gate: bool


class BookConfig(Strict):
    cell_timeout_s: int = Field(ge=1)
    export_html: bool


class Profile(Strict):
    """A fully resolved, validated profile."""

    name: str
    description: str
    source: SourceConfig
    data: DataConfig
    features: FeatureFlags
    book: BookConfig
    sleeve: SleeveConfig
    selection: SelectionConfig
    optimizer: OptimizerConfig
    backtest: BacktestConfig
    meta: MetaConfig


@dataclass(frozen=True)
class ResolvedProfile:
    """A profile plus where it came from: the inheritance chain and the env overrides applied."""

    profile: Profile
    chain: tuple[str, ...]
    overrides: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.profile.name

    def to_yaml(self) -> str:
        doc = {"profile": self.profile.model_dump(mode="json"), "extends_chain": list(self.chain),
               "env_overrides": self.overrides}
        return yaml.safe_dump(doc, sort_keys=False)


def default_profiles_dir() -> Path:
    """`profiles/` of the current workspace (`Workspace.current`)."""
    return Workspace.current().profiles


def list_profiles(profiles_dir: Path | None = None) -> list[str]:
    """Names of the profiles in `profiles_dir` (scanners excluded)."""
    directory = profiles_dir or default_profiles_dir()
    return sorted(p.stem for p in directory.glob("*.yaml"))


def load_yaml_chain(name: str, directory: Path, kind: str = "profile") -> tuple[list[dict], list[str]]:
    """Read `name` and its `extends` ancestors; return the documents (root first) and the chain.

    Raises ProfileError for a missing file, invalid YAML, a non-mapping document or a cycle.
    """
    docs: list[dict] = []
    chain: list[str] = []
    current: str | None = name
    while current is not None:
        check_name(current, kind)
        if current in chain:
            cycle = " -> ".join(chain + [current])
            raise ProfileError(f"cyclic 'extends' in {kind} {name!r}: {cycle}; remove one of the links")
        path = directory / f"{current}.yaml"
        if not path.exists():
            names = sorted(p.stem for p in directory.glob("*.yaml"))
            close = difflib.get_close_matches(current, names, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ProfileError(f"{kind} {current!r} not found: no file {path}; {hint}(known: {', '.join(names) or 'none'})")
        try:
            doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise ProfileError(f"{path}: invalid YAML ({str(exc).splitlines()[0]}); fix the syntax") from None
        if not isinstance(doc, dict):
            raise ProfileError(f"{path}: top level must be a mapping of keys, got {type(doc).__name__}")
        chain.append(current)
        docs.append(doc)
        parent = doc.get("extends")
        if parent is None and kind == "profile" and current != BASE_PROFILE:
            parent = BASE_PROFILE
        current = parent
    return list(reversed(docs)), chain


def deep_merge(base: Mapping, override: Mapping) -> dict:
    """Mappings merge recursively; anything else (lists included) in `override` replaces."""
    merged = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def profile_diff(old: Mapping, new: Mapping, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """(dotted key, old value, new value) for every leaf that differs between two profile dumps, sorted;
    lists compare whole (a key present on one side only has None on the other)."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out += profile_diff(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append((f"{prefix}{key}", a, b))
    return out


def override_vars(overrides: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """{section: {key: value}} as the `FW_SECTION__KEY=value` settings that give it."""
    def text(value: Any) -> str:
        return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()

    return [f"{ENV_PREFIX}{section.upper()}__{key.upper()}={text(value)}"
            for section, values in sorted(overrides.items()) for key, value in sorted(values.items())]


def env_overrides(env: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """`FW_DATA__LOOKBACK_DAYS=300` -> {"data": {"lookback_days": 300}} (values parsed as YAML)."""
    overrides: dict[str, dict[str, Any]] = {}
    labels = getattr(env, "labels", {})
    for key, raw in sorted(env.items()):
        if not key.startswith(ENV_PREFIX) or "__" not in key:
            continue
        section, _, name = key[len(ENV_PREFIX):].lower().partition("__")
        try:
            value = yaml.safe_load(raw) if raw != "" else None
        except yaml.YAMLError:
            raise ProfileError(f"{labels.get(key, f'environment {key}={raw!r}')}: not a valid YAML value") from None
        overrides.setdefault(section, {})[name] = value
    return overrides


class ParamEnv(dict):
    """An environment (`os.environ`) plus the command line's `-p section.key=value` settings, each as the
    `FW_SECTION__KEY` variable that gives the same override (so it is recorded and resumed like one; `-p`
    wins over a variable of the same name). `labels` remembers how each was typed, for error messages."""

    def __init__(self, env: Mapping[str, str], params: list[str] | tuple[str, ...] = ()) -> None:
        super().__init__(env)
        self.labels: dict[str, str] = {}
        for text in params:
            key, raw = param_var(text)
            self[key] = raw
            self.labels[key] = f"-p {text}"


def param_var(text: str) -> tuple[str, str]:
    """`data.lookback_days=300` -> ("FW_DATA__LOOKBACK_DAYS", "300"), or a ProfileError showing the form."""
    dotted, eq, raw = text.partition("=")
    parts = dotted.strip().split(".")
    if not eq or len(parts) != 2 or not all(p.strip() for p in parts):
        raise ProfileError(f"-p {text!r}: expected section.key=value, e.g. -p data.lookback_days=300 "
                           f"(a nested key takes a YAML mapping: -p meta.allocation='{{method: hrp}}')")
    section, key = (p.strip() for p in parts)
    return f"{ENV_PREFIX}{section.upper()}__{key.upper()}", raw


def _override_sources(env: Mapping[str, str]) -> dict[tuple[str, str], str]:
    """(section, key) -> how an override of it was given (`environment FW_...=...` or `-p ...`)."""
    labels = getattr(env, "labels", {})
    out = {}
    for key, raw in env.items():
        if key.startswith(ENV_PREFIX) and "__" in key:
            section, _, name = key[len(ENV_PREFIX):].lower().partition("__")
            out[(section, name)] = labels.get(key, f"environment {key}={raw!r}")
    return out


def load_profile(name: str, profiles_dir: Path | None = None, env: Mapping[str, str] | None = None,
                 overrides: Mapping[str, Mapping[str, Any]] | None = None) -> ResolvedProfile:
    """Resolve `name` (inheritance, then `overrides` {section: {key: value}} -- e.g. a parent meta run's,
    passed explicitly -- then `FW_*` env overrides) and validate it against the schema."""
    directory = profiles_dir or default_profiles_dir()
    docs, chain = load_yaml_chain(name, directory)
    merged: dict = {}
    for doc in docs:
        merged = deep_merge(merged, {k: v for k, v in doc.items() if k != "extends"})
    merged["name"] = name
    overrides = deep_merge(dict(overrides or {}), env_overrides(env or {}))
    sources = _override_sources(env or {})
    for section, values in overrides.items():
        if not isinstance(merged.get(section), dict):
            given = next((label for (sec, _), label in sorted(sources.items()) if sec == section),
                         f"environment override FW_{section.upper()}__...")
            known = ", ".join(k for k, v in merged.items() if isinstance(v, dict))
            raise ProfileError(f"{given}: unknown profile section {section!r} (sections: {known}); fix or drop it")
        merged[section] = deep_merge(merged[section], values)
    profile = validate(merged, directory / f"{name}.yaml", chain, sources)
    for key, symbol in [("data.anchors", a) for a in profile.data.anchors] + [("sleeve.benchmark", profile.sleeve.benchmark)]:
        try:
            check_symbol(symbol)
        except Exception as exc:
            raise ProfileError(f"{directory / f'{name}.yaml'}: {key}: {exc}") from None
    return ResolvedProfile(profile=profile, chain=tuple(chain), overrides=overrides)


def validate(doc: dict, path: Path, chain: list[str],
             sources: Mapping[tuple[str, str], str] | None = None) -> Profile:
    """Validate a merged document; the first error names the dotted key and where its value came from:
    the override (`sources`: environment variable or `-p`) that set it, else the file(s)."""
    try:
        return Profile.model_validate(doc)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"])
        files = " <- ".join(f"{c}.yaml" for c in chain)
        if err["type"] == "extra_forbidden":
            hint = "unknown key; check the spelling against profiles/base.yaml"
        elif err["type"] == "missing":
            hint = "required key missing; add it to profiles/base.yaml or the profile"
        else:
            hint = err["msg"].removeprefix("Value error, ")
        given = (sources or {}).get(tuple(str(p) for p in err["loc"][:2]))
        if given:
            if err["type"] == "extra_forbidden":
                hint = "unknown key; check the spelling against profiles/base.yaml"
            raise ProfileError(f"{given}: key '{key}': {hint} (profile {path.stem}); fix or unset it") from None
        raise ProfileError(f"{path} (chain {files}): key '{key}': {hint}") from None


def profile_kind(resolved: ResolvedProfile, profiles_dir: Path | None = None) -> str:
    """`meta` if the resolved `meta.sleeves` is non-empty, `sleeve` if a file of its chain other than
    base.yaml sets a `sleeve:` section, else `data` (the phase that may run it)."""
    if resolved.profile.meta.sleeves:
        return "meta"
    docs, chain = load_yaml_chain(resolved.name, profiles_dir or default_profiles_dir())
    own = [doc for doc, name in zip(docs, reversed(chain)) if name != BASE_PROFILE]
    return "sleeve" if any("sleeve" in doc for doc in own) else "data"


def check_kind(resolved: ResolvedProfile, phase: str, profiles_dir: Path | None = None) -> None:
    """A ProfileError naming the command that runs `resolved` unless it is a `phase` profile: a data run
    of a sleeve profile (or a sleeve run of a meta) would pass and leave a misnamed run."""
    kind = profile_kind(resolved, profiles_dir)
    if kind != phase:
        command = f"data --profile {resolved.name}" if kind == "data" else f"{kind} {resolved.name}"
        raise ProfileError(f"profile {resolved.name!r} is a {kind} profile, not a {phase} profile; "
                           f"run it with `run_book.py {command}`")
