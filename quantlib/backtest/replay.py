"""Replay one rebalance decision of a sleeve run and prove it equal to what the run recorded.

Without a date the production decision (the sleeve's stage artifacts); with one, the walk-forward
rebalance of that date (the validation's per-window records). The decision is rebuilt with the
functions the stages and the walk-forward call (`sleeve.universe.candidates_at`, `sleeve.window`,
`backtest.walkforward.rebalance` / `trade`), from the run's own record:
  - its resolved profile (`profile.resolved.yaml`) and the scanners its aggregate stage resolved
    (`universe.json`, which must still hash as the manifest recorded);
  - inputs: by default the lakehouse files whose sha256 the manifest recorded, re-read with the
    production loader (`sleeve.inputs.load_sleeve_inputs`) -- the replay refuses (`ReplayRefused`,
    exit 1) when any of them changed, went missing, or the loader now reads a file the run did not;
    with `from_run` the run's own copies of those inputs (`returns`, `screener`, `benchmark`, which
    must hash as recorded), so a run stays replayable after the shared lakehouse moved on.
Every replayed artifact goes through the writer the stages use (`core.storage`, in a temp folder)
and is compared with the recorded file exactly (`backtest.equality`). Nothing is written into the run.

What a walk-forward window records and is compared: its universe and scanner funnel, its eligibility
(`backtest/eligibility.parquet`; runs before it existed: the universe's healthy rows), its
selection (`backtest/selection.parquet`, when recorded) and windows-table row, its atoms and weights
(`backtest/holdings.parquet`), and its trades: the target-weight orders, that day's turnover and
costs and the delisting liquidations of its test window, re-simulated with the recorded holdings of
every other window (the book before a rebalance is the whole earlier simulation's).
"""
from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from quantlib.backtest import walkforward
from quantlib.backtest.equality import MISSING, Difference, frame_difference, json_difference, same_value
from quantlib.core import registry, storage
from quantlib.core.errors import DataError
from quantlib.core.profiles import ANNUALIZATION, Profile
from quantlib.core.runs import Run
from quantlib.core.workspace import Workspace
from quantlib.data.lakehouse import Lakehouse
from quantlib.data.scanners import Scanner
from quantlib.sleeve import signtest
from quantlib.sleeve.analysis import antifragility
from quantlib.sleeve.inputs import benchmark_returns, load_sleeve_inputs
from quantlib.sleeve.synthesis import build_atoms, flatten, synthetic_returns
from quantlib.sleeve.universe import candidates_at
from quantlib.sleeve.window import (analyze_window, optimize_window, select_window, selection_params, training_window,
                                   window_caps)

PHASE = "sleeve"
LAKEHOUSE = "lakehouse/"
INPUTS = ("returns", "screener", "benchmark")
KEYS = ["symbol", "logic", "direction"]


class ReplayRefused(DataError):
    """The recorded inputs cannot be re-read as they were (the lakehouse or a run input changed)."""


class NotARebalanceDate(DataError):
    """`--at` names no walk-forward rebalance of the run (the message names the nearest ones)."""


@dataclass
class Component:
    """One part of the decision: its rows (recorded, replayed), the artifacts compared, the first difference."""

    name: str
    rows: tuple[int, int]
    compared: list[str]
    difference: Difference | None = None

    @property
    def status(self) -> str:
        return "DIFF" if self.difference else "MATCH"


@dataclass
class Replay:
    """The outcome of one replay."""

    run_id: str
    kind: str                  # "production" | "walk-forward"
    decision: pd.Timestamp
    source: str                # where the inputs came from
    components: list[Component]
    not_compared: list[str]
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def matched(self) -> bool:
        return all(c.difference is None for c in self.components)

    @property
    def first_difference(self) -> tuple[str, Difference] | None:
        return next(((c.name, c.difference) for c in self.components if c.difference), None)


@dataclass
class _Inputs:
    """What the decision chain starts from."""

    base: list[str]
    returns: pd.DataFrame
    screener: pd.DataFrame
    benchmark: pd.DataFrame


# ------------------------------------------------------------------------------------------- the record
class _Record:
    """Read-only access to a run's artifacts (cached), the names compared, and the writer's round trip
    for replayed objects (into a scratch folder outside the run)."""

    def __init__(self, run: Run, scratch: Path) -> None:
        self.run, self.scratch, self._n = run, scratch, 0
        self._cache: dict[str, Any] = {}
        self.compared: list[str] = []

    def rel(self, name: str) -> str:
        return registry.path(PHASE, name)

    def has(self, name: str) -> bool:
        return self.run.path(self.rel(name)).exists()

    def require(self, names: tuple[str, ...], what: str) -> None:
        missing = [self.rel(n) for n in names if not self.has(n)]
        if missing:
            raise DataError(f"replay: run {self.run.id} has no {', '.join(missing)}, which its {what} records; "
                            f"the run is incomplete or was edited -- rerun the sleeve")

    def read(self, name: str) -> Any:
        """A recorded artifact (None when the run has no such file)."""
        if name not in self._cache:
            path = self.run.path(self.rel(name))
            self._cache[name] = (None if not path.exists() else storage.read_parquet(path)
                                 if path.suffix == ".parquet" else storage.read_json(path))
        return self._cache[name]

    def unchanged(self, name: str) -> bool:
        """Whether artifact `name` still hashes as the manifest recorded."""
        stage = registry.writer(PHASE, name).name
        digest = self.run.manifest.get("stages", {}).get(stage, {}).get("outputs", {}).get(self.rel(name))
        path = self.run.path(self.rel(name))
        return digest is not None and path.exists() and storage.sha256_file(path) == digest

    def written(self, obj: Any, suffix: str) -> Any:
        """`obj` as the stage writer stores it and a reader gets it back."""
        self._n += 1
        path = self.scratch / f"{self._n}{suffix}"
        if suffix == ".parquet":
            storage.write_parquet(path, obj)
            return storage.read_parquet(path)
        storage.write_json(path, obj)
        return storage.read_json(path)

    def frame(self, name: str, recorded: pd.DataFrame, replayed: pd.DataFrame, keys: list[str],
              where: str = "") -> tuple[str, Difference | None]:
        """(label, first difference) of a recorded frame (or a selection of it) and its replay."""
        self.compared.append(name)
        label = self.rel(name) + where
        return label, frame_difference(label, recorded, self.written(replayed, ".parquet"), keys)

    def json(self, name: str, recorded: Any, replayed: Any, where: str = "") -> tuple[str, Difference | None]:
        """(label, first difference) of a recorded JSON document (or a part of it) and its replay."""
        self.compared.append(name)
        label = self.rel(name) + where
        return label, json_difference(label, recorded, self.written(replayed, ".json"))


def _component(name: str, rows: tuple[int, int], checks: list[tuple[str, Difference | None]]) -> Component:
    return Component(name, rows, [c for c, _ in checks], next((d for _, d in checks if d), None))


# ------------------------------------------------------------------------------------------- inputs
def _scanners(record: _Record) -> list[Scanner]:
    if not record.unchanged("universe"):
        raise ReplayRefused(f"replay: {record.rel('universe')} of run {record.run.id} (the scanners it resolved) is "
                            f"missing or no longer hashes as its manifest recorded; the run cannot be replayed")
    return [Scanner.model_validate(s) for s in record.read("universe")["scanners"]]


def lakehouse_changes(run: Run, lake: Lakehouse) -> tuple[int, list[str]]:
    """(files recorded, one entry per recorded lakehouse file that is missing or hashes differently)."""
    recorded = {k[len(LAKEHOUSE):]: v for k, v in run.manifest.get("inputs", {}).items() if k.startswith(LAKEHOUSE)}
    changed = []
    for rel, digest in sorted(recorded.items()):
        path = lake.root / rel
        if not path.exists():
            changed.append(f"{LAKEHOUSE}{rel} missing")
        elif storage.sha256_file(path) != digest:
            changed.append(f"{LAKEHOUSE}{rel} changed")
    return len(recorded), changed


def _refuse_lake(run: Run, lake: Lakehouse, n: int, changed: list[str]) -> ReplayRefused:
    return ReplayRefused(f"replay: the lakehouse {lake.root} changed since run {run.id}: {len(changed)} of {n} files "
                         f"it read differ (first: {changed[0]}); its decision cannot be rebuilt from it -- replay "
                         f"from the inputs recorded in the run with --from-run")


def _lake_inputs(run: Run, profile: Profile, scanners: list[Scanner]) -> tuple[_Inputs, str]:
    lake = Lakehouse(Workspace(run.workspace).resolve(profile.data.lakehouse))
    n, changed = lakehouse_changes(run, lake)
    if not n:
        raise ReplayRefused(f"replay: run {run.id} recorded no lakehouse hashes (manifest inputs); replay from the "
                            f"inputs recorded in the run with --from-run")
    if changed:
        raise _refuse_lake(run, lake, n, changed)
    loaded = load_sleeve_inputs(lake, profile, scanners)
    read = {f"{LAKEHOUSE}{p.relative_to(lake.root)}" for p in loaded.files}
    new = sorted(read - set(run.manifest["inputs"]))
    if new:
        raise _refuse_lake(run, lake, n, [f"{label} new (not read by the run)" for label in new])
    bench = benchmark_returns(loaded, profile).to_frame()
    return _Inputs(loaded.base, loaded.returns, loaded.screener, bench), f"lakehouse {lake.root} ({n} files as recorded)"


def _run_inputs(record: _Record) -> tuple[_Inputs, str]:
    bad = [record.rel(n) for n in INPUTS if not record.unchanged(n)]
    if bad:
        raise ReplayRefused(f"replay: {', '.join(bad)} of run {record.run.id} missing or no longer hashing as its "
                            f"manifest recorded; the run's inputs are not as recorded")
    returns, screener, bench = (record.read(n) for n in INPUTS)
    return _Inputs([str(c) for c in returns.columns], returns, screener, bench), \
        f"run {record.run.id} ({', '.join(record.rel(n) for n in INPUTS)}, hashes as recorded)"


# ------------------------------------------------------------------------------------------- production
PRODUCTION = ("candidates", "funnel", "universe", "health", "selection", "selection_audit", "atoms",
              "synthetic_returns", "sign_test_pre_opt", "clusters", "regime", "antifragility", "weights",
              "optimization", "flattened", "sign_test")
PRODUCTION_NOT_COMPARED = [
    "universe.json data_run_export and scanners (the data run's live list, recorded beside the decision; the "
    "scanners are the replay's input)",
    "run ids and times (health.json run_id/generated_at/data_run, selection_audit.json run_id)",
    "data_inputs.json (the hashes the replay verified)",
    "reports, plots, weights.csv, flattened.csv, audit.json (renderings and checks of the artifacts compared)",
]


def replay_production(record: _Record, inputs: _Inputs, profile: Profile, scanners: list[Scanner],
                      compare_inputs: bool) -> tuple[list[Component], pd.Timestamp]:
    """The stages' chain, aggregate to optimize, each step on the replayed step before it."""
    record.require(PRODUCTION, "production decision")
    cfg, rd = profile.sleeve, record.read
    returns, now = inputs.returns, inputs.returns.index[-1]
    out = []
    if compare_inputs:
        out.append(_component("inputs", (len(rd("returns")), len(returns)), [
            record.frame("returns", rd("returns"), returns, []),
            record.frame("benchmark", rd("benchmark"), inputs.benchmark, []),
            record.frame("screener", rd("screener"), inputs.screener, ["date", "symbol"])]))
    candidates, funnel = candidates_at(returns, inputs.screener, scanners, [now], window=len(returns),
                                       min_history_days=cfg.min_history_days, toxic_return=profile.data.toxic_return)
    healthy = int(candidates["health"].eq("OK").sum())
    universe = {"as_of": now, "base_universe": {"count": len(inputs.base), "symbols": inputs.base},
                "production": {"count": len(candidates), "healthy": healthy}}
    doc = rd("universe")
    recorded = {"as_of": doc.get("as_of"), "base_universe": {k: doc["base_universe"].get(k) for k in ("count", "symbols")},
                "production": doc.get("production")}
    out.append(_component("universe", (len(rd("candidates")), len(candidates)), [
        record.frame("candidates", rd("candidates"), candidates, KEYS),
        record.frame("funnel", rd("funnel"), funnel, ["scanner", "step"]),
        record.json("universe", recorded, universe, " {as_of, base_universe, production}")]))

    health = candidates.drop_duplicates("symbol")[["symbol", "scanner", "health", "health_returns", "last_bar",
                                                   "health_detail"]]
    health = health.rename(columns={"health": "status", "health_returns": "returns", "health_detail": "detail"})
    eligibility = {"window": [returns.index[0], now], "benchmark": cfg.benchmark,
                   "counts": {k: int(v) for k, v in candidates["health"].value_counts().items()},
                   "healthy": healthy, "symbols": health.to_dict(orient="records")}
    recorded = {k: rd("health").get(k) for k in eligibility}
    out.append(_component("eligibility", (recorded["healthy"] or 0, healthy), [
        record.json("health", recorded, eligibility, " {window, benchmark, counts, healthy, symbols}")]))

    train = training_window(returns, cfg.train_days)
    result = select_window(train, candidates, cfg.asset_class, selection_params(profile))
    result.audit.update(train_start=train.index[0], train_end=train.index[-1])
    out.append(_component("selection", (len(rd("selection")), len(result.selection)), [
        record.frame("selection", rd("selection"), result.selection, KEYS),
        record.json("selection_audit", {k: v for k, v in rd("selection_audit").items() if k != "run_id"},
                    result.audit, " (all but run_id)")]))

    atoms = build_atoms(result.selection)
    synthetic = synthetic_returns(train, atoms)
    out.append(_component("atoms", (len(rd("atoms")), len(atoms)), [
        record.frame("atoms", rd("atoms"), atoms, ["atom_id"]),
        record.frame("synthetic_returns", rd("synthetic_returns"), synthetic, []),
        record.json("sign_test_pre_opt", rd("sign_test_pre_opt"),
                    signtest.pre_opt(atoms, train, synthetic, result.selection).to_dict())]))

    clusters, state = analyze_window(synthetic, profile)
    stats = antifragility(synthetic, ANNUALIZATION[cfg.asset_class]).rename_axis("atom_id")
    out.append(_component("clusters/regime", (len(rd("antifragility")), len(stats)), [
        record.json("clusters", rd("clusters"), clusters), record.json("regime", rd("regime"), state),
        record.frame("antifragility", rd("antifragility"), stats, [])]))

    weights, infos = optimize_window(synthetic, clusters, state, profile)
    atom_cap, cluster_cap = window_caps(clusters, state, profile)
    caps = ("engine", "linkage", "cluster_cap", "atom_cap")
    mine_caps = dict(zip(caps, (profile.optimizer.engine, profile.optimizer.linkage, cluster_cap, atom_cap)))
    for method in map(str, profile.optimizer.profiles):
        mine, theirs = _profile_rows(weights, method), _profile_rows(rd("weights"), method)
        recorded = {**{k: rd("optimization").get(k) for k in caps},
                    "profiles": {method: rd("optimization").get("profiles", {}).get(method)}}
        out.append(_component(f"weights:{method}", (len(theirs), len(mine)), [
            record.frame("weights", theirs, mine, ["atom_id"], f"[profile={method}]"),
            record.json("optimization", recorded, {**mine_caps, "profiles": {method: infos[method]}},
                        f" {{caps, profiles.{method}}}")]))

    flat = flatten(weights, atoms)
    out.append(_component("trades", (len(rd("flattened")), len(flat)), [
        record.frame("flattened", rd("flattened"), flat, ["profile", "symbol"], " {orders from cash}"),
        record.json("sign_test", rd("sign_test"), signtest.post_opt(atoms, weights, flat).to_dict())]))
    return out, now


def _profile_rows(frame: pd.DataFrame, method: str) -> pd.DataFrame:
    return frame[frame["profile"] == method].reset_index(drop=True)


# ------------------------------------------------------------------------------------------- walk-forward
WALK_FORWARD = ("wf_universe", "wf_funnel", "wf_windows", "wf_holdings", "wf_turnover", "wf_costs", "wf_events")
WALK_FORWARD_NOT_COMPARED = [
    "the window's clusters beyond each atom's label and its regime beyond the label (not recorded per window)",
    "strategy and benchmark returns, metrics, parity (streams of the whole simulation, not one decision)",
]


def rebalance_window(plan: list[walkforward.Window], at: str, production: pd.Timestamp) -> walkforward.Window:
    """The window decided on `at` (an ISO date: that calendar day; a timestamp with a time: exactly)."""
    try:
        when = pd.Timestamp(at)
    except (TypeError, ValueError):
        raise DataError(f"replay: --at {at!r} is not a date; give an ISO date such as "
                        f"{plan[0].decision.date()}") from None
    if when.tzinfo is None and plan[0].decision.tz is not None:
        when = when.tz_localize(plan[0].decision.tz)
    day_only = len(str(at).strip()) <= 10
    for w in plan:
        if (w.decision.normalize() == when.normalize()) if day_only else (w.decision == when):
            return w
    before = [w.decision.date() for w in plan if w.decision < when][-1:] or ["none"]
    after = [w.decision.date() for w in plan if w.decision > when][:1] or ["none"]
    hint = (f"; {production.date()} is the production decision (replay it without --at)"
            if when.normalize() == production.normalize() else "")
    raise NotARebalanceDate(f"replay: {when.date()} is not a walk-forward rebalance date of this run; nearest "
                            f"rebalances: before {before[0]}, after {after[0]} ({len(plan)} rebalances, "
                            f"{plan[0].decision.date()} .. {plan[-1].decision.date()}){hint}")


def _window_row(label: str, recorded: pd.DataFrame, row: dict) -> tuple[str, Difference | None]:
    """The windows-table row field by field: its column dtypes are the whole table's, so values only."""
    if len(recorded) != 1:
        return label, Difference(label, "rows", "", len(recorded), 1)
    doc = recorded.iloc[0].to_dict()
    for key in [*doc, *[k for k in row if k not in doc]]:
        a, b = doc.get(key, MISSING), row.get(key, MISSING)
        if not same_value(a, b):
            return label, Difference(label, key, "0", a, b)
    return label, None


def _at(frame: pd.DataFrame, k: pd.Timestamp) -> pd.DataFrame:
    return frame[frame["decision"] == k].reset_index(drop=True)


def replay_window(record: _Record, inputs: _Inputs, profile: Profile, scanners: list[Scanner], at: str
                  ) -> tuple[list[Component], pd.Timestamp, list[str], list[str]]:
    """The walk-forward rebalance on `at`. Returns (components, decision date, notes, not compared)."""
    record.require(WALK_FORWARD, "walk-forward validation")
    cfg, returns = walkforward.settings(profile), inputs.returns
    plan = walkforward.windows(returns.index, cfg.train_days, cfg.test_days, profile.name)
    w = rebalance_window(plan, at, returns.index[-1])
    k, where = w.decision, f"[decision={w.decision.date()}]"
    rd = lambda name: _at(record.read(name), k)  # noqa: E731
    notes, not_compared = [], list(WALK_FORWARD_NOT_COMPARED)
    pools, funnel = walkforward.point_in_time_pool(returns, inputs.screener, scanners, profile, [k], cfg.train_days)
    step = walkforward.rebalance(returns, pools, funnel, profile, w)
    out = [_component("universe", (len(rd("wf_universe")), len(pools)), [
        record.frame("wf_universe", rd("wf_universe"), pools.rename(columns={"date": "decision"}), KEYS, where),
        record.frame("wf_funnel", rd("wf_funnel"), funnel.rename(columns={"date": "decision"}),
                     ["scanner", "step"], where)])]

    eligible = step.eligible[["decision", *KEYS]].reset_index(drop=True)
    theirs = _at(_recorded_eligibility(record), k)
    if record.has("wf_eligibility"):
        check = record.frame("wf_eligibility", theirs, eligible, KEYS, where)
    else:
        notes.append(f"{record.rel('wf_eligibility')} is not recorded by this run: eligibility compared with the "
                     f"healthy rows of {record.rel('wf_universe')}")
        check = record.frame("wf_universe", theirs, eligible, KEYS, f"{where}[health=OK]")
    out.append(_component("eligibility", (len(theirs), len(eligible)), [check]))

    d = step.decision
    holdings = walkforward.window_holdings(w, d) if d is not None else rd("wf_holdings").iloc[:0]
    trading, events = _trades(record, inputs, profile, plan, w, holdings, eligible, cfg)
    row = walkforward.with_delistings(pd.DataFrame([step.row]), events).iloc[0].to_dict()
    checks = [_window_row(record.rel("wf_windows") + where, rd("wf_windows"), row)]
    selected = 0 if d is None else len(d.selection.selection)
    if record.has("wf_selection"):
        selection = (d.selection.selection.assign(decision=k) if d is not None
                     else rd("wf_selection").iloc[:0])
        checks.insert(0, record.frame("wf_selection", rd("wf_selection"), selection, KEYS, where))
    else:
        not_compared.insert(0, f"the window's selection table ({record.rel('wf_selection')} is not recorded by "
                               f"this run; its windows row and holdings are)")
    record.compared.append("wf_windows")
    recorded_selected = len(rd("wf_selection")) if record.has("wf_selection") else int(rd("wf_windows")["selected"].sum())
    out.append(_component("selection", (recorded_selected, selected), checks))

    first = str(profile.optimizer.profiles[0])
    atom_cols = ["atom_id", "symbol", "logic", "direction"]
    theirs = _profile_rows(rd("wf_holdings"), first)[atom_cols]
    out.append(_component("atoms", (len(theirs), len(_profile_rows(holdings, first))), [
        record.frame("wf_holdings", theirs, _profile_rows(holdings, first)[atom_cols], ["atom_id"],
                     f"{where}[profile={first}] {{atoms}}")]))
    for method in map(str, profile.optimizer.profiles):
        mine, theirs = _profile_rows(holdings, method), _profile_rows(rd("wf_holdings"), method)
        out.append(_component(f"weights:{method}", (len(theirs), len(mine)), [
            record.frame("wf_holdings", theirs, mine, ["atom_id"], f"{where}[profile={method}]")]))
    out.append(trading)
    return out, k, notes, not_compared


def _recorded_eligibility(record: _Record) -> pd.DataFrame:
    if record.has("wf_eligibility"):
        return record.read("wf_eligibility")
    universe = record.read("wf_universe")
    return universe[universe["health"].eq("OK")][["decision", *KEYS]].reset_index(drop=True)


def _trades(record: _Record, inputs: _Inputs, profile: Profile, plan: list[walkforward.Window],
            w: walkforward.Window, holdings: pd.DataFrame, eligible: pd.DataFrame, cfg: walkforward.Settings
            ) -> tuple[Component, pd.DataFrame]:
    """Window `w`'s trades: the target orders, turnover and costs of its decision day and the
    liquidations of its test window, simulated with the recorded holdings and eligibility of every
    other window (the book before a rebalance is the earlier simulation's)."""
    k, where, day = w.decision, f"[date={w.decision.date()}]", lambda frame: frame.loc[[w.decision]]
    recorded_holdings, recorded_eligibility = record.read("wf_holdings"), _recorded_eligibility(record)
    book_holdings = pd.concat([recorded_holdings[recorded_holdings["decision"] != k], holdings], ignore_index=True)
    book_eligibility = pd.concat([recorded_eligibility[recorded_eligibility["decision"] != k], eligible],
                                 ignore_index=True)
    book = walkforward.simulation_book(inputs.returns, book_holdings, book_eligibility, plan[0].decision)
    decisions, primary = [p.decision for p in plan], [walkforward.primary_simulator(cfg)]
    orders, turnover, costs, events = [], {}, {}, []
    for method in map(str, profile.optimizer.profiles):
        t = walkforward.trade(book_holdings, book, decisions, cfg, method, simulators=primary)
        target = t.targets.loc[k]
        orders.append(pd.DataFrame({"profile": method, "atom_id": target.index.astype(str),
                                    "weight": target.to_numpy()}))
        turnover[method], costs[method] = t.turnover, t.costs
        events.append(t.events)
    order = lambda frame: (frame[frame["weight"].ne(0)][["profile", "atom_id", "weight"]]  # noqa: E731
                           .sort_values(["profile", "atom_id"], kind="stable", ignore_index=True))
    orders, theirs = order(pd.concat(orders, ignore_index=True)), order(_at(recorded_holdings, k))
    events = pd.concat(events, ignore_index=True)
    in_test = lambda frame: frame[(frame["date"] > k) & (frame["date"] <= w.end)].reset_index(drop=True)  # noqa: E731
    return _component("trades", (len(theirs), len(orders)), [
        record.frame("wf_holdings", theirs, orders, ["profile", "atom_id"],
                     f"[decision={k.date()}][weight!=0] {{orders: the simulator's targets}}"),
        record.frame("wf_turnover", day(record.read("wf_turnover")), day(pd.DataFrame(turnover).rename_axis("date")),
                     [], where),
        record.frame("wf_costs", day(record.read("wf_costs")), day(pd.DataFrame(costs).rename_axis("date")), [], where),
        record.frame("wf_events", in_test(record.read("wf_events")), in_test(events), ["date", "profile", "atom_id"],
                     f"[{k.date()} < date <= {w.end.date()}]")]), events


# ------------------------------------------------------------------------------------------- entry point
def replay_run(run: Run, at: str | None = None, from_run: bool = False) -> Replay:
    """Replay the production decision of sleeve run `run`, or its walk-forward rebalance on `at`."""
    start = time.perf_counter()
    if run.manifest.get("phase") != PHASE:
        raise DataError(f"replay: run {run.id} is a {run.manifest.get('phase')} run, not a sleeve run; pass a "
                        f"sleeve run id (`python run_book.py runs`)")
    validate = run.manifest.get("stages", {}).get("validate", {}).get("status", "not run")
    if at is not None and validate != "completed":
        raise DataError(f"replay: run {run.id} has no walk-forward validation (its validate stage is {validate}), "
                        f"so it records no rebalance on {at}; replay its production decision without --at")
    profile = run.profile
    with tempfile.TemporaryDirectory(prefix="fw-replay-") as tmp:
        record = _Record(run, Path(tmp))
        scanners = _scanners(record)
        if at is not None:  # a date that is no rebalance is refused before the inputs are read
            record.require(WALK_FORWARD, "walk-forward validation")
            windows = record.read("wf_windows")
            rebalance_window([walkforward.Window(d, s, e) for d, s, e in zip(windows["decision"], windows["start"],
                                                                              windows["end"])],
                             at, pd.Timestamp(record.read("universe")["as_of"]))
        inputs, source = _run_inputs(record) if from_run else _lake_inputs(run, profile, scanners)
        notes: list[str] = []
        not_compared = [f"{', '.join(record.rel(n) for n in INPUTS)} (the replay's inputs)"] if from_run else []
        if at is None:
            components, decision = replay_production(record, inputs, profile, scanners, compare_inputs=not from_run)
            not_compared += PRODUCTION_NOT_COMPARED
        else:
            components, decision, notes, more = replay_window(record, inputs, profile, scanners, at)
            not_compared += more
        notes += [f"{record.rel(n)} no longer hashes as the manifest recorded (edited after the run)"
                  for n in dict.fromkeys(record.compared) if not record.unchanged(n)]
    return Replay(run.id, "production" if at is None else "walk-forward", decision, source, components,
                  not_compared, notes, time.perf_counter() - start)


def report_lines(result: Replay) -> list[str]:
    """The terminal report: a header, one line per component, notes, what is not compared, a summary."""
    what = "production decision" if result.kind == "production" else "walk-forward rebalance"
    lines = [f"replay of {result.run_id}: {what} of {result.decision.date()} · inputs: {result.source}",
             f"  {'component':<22} {'status':<6} {'recorded':>8} {'replayed':>8}  compared"]
    for c in result.components:
        lines.append(f"  {c.name:<22} {c.status:<6} {c.rows[0]:>8} {c.rows[1]:>8}  {', '.join(c.compared)}")
        if c.difference:
            lines.append(f"  {'':<22} first difference: {c.difference}")
    lines += [f"  note: {n}" for n in result.notes] + [f"  not compared: {n}" for n in result.not_compared]
    found = result.first_difference
    if found is None:
        lines.append(f"MATCH: {len(result.components)} components, {sum(len(c.compared) for c in result.components)} "
                     f"artifact selections equal to the record ({result.seconds:.1f} s)")
    else:
        bad = sum(1 for c in result.components if c.difference)
        lines.append(f"DIFF: {bad} of {len(result.components)} components differ; first: {found[0]} -- {found[1]} "
                     f"({result.seconds:.1f} s)")
    return lines
