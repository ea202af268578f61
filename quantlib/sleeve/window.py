"""One rebalance decision, in memory: the chain the production stages, the walk-forward backtest and
the look-ahead audit all run (LESSONS L-X3: the validated decisions are the produced ones).

training window -> HTR selection on the window's universe -> atoms and synthetic returns -> clusters
and the regime's cluster cap -> every risk profile through the Stable Sum Gate (the optimizer floors
the caps: `window_caps` gives the ones it applies). Pure functions of their inputs;
nothing here reads a file.
"""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from quantlib.sleeve.analysis import atom_clusters, regime, regime_cluster_cap
from quantlib.portfolio.caps import cluster_labels, effective_caps
from quantlib.portfolio.optimize import optimize_gated
from quantlib.core.profiles import Profile
from quantlib.sleeve.selection import SelectionParams, SelectionResult
from quantlib.sleeve.selection import select as htr
from quantlib.sleeve.synthesis import build_atoms, synthetic_returns


def training_window(returns: pd.DataFrame, train_days: int, end: pd.Timestamp | None = None) -> pd.DataFrame:
    """The last `train_days` rows of `returns` up to and including `end` (default: the last row)."""
    if end is not None:
        returns = returns.loc[returns.index <= end]
    return returns.iloc[-train_days:]


def selection_params(profile: Profile) -> SelectionParams:
    """The profile's `selection:` section as the HTR parameters."""
    cfg = profile.selection.model_dump()
    cfg["lookbacks"] = tuple(cfg["lookbacks"])
    cfg["hurst_band"] = tuple(cfg["hurst_band"])
    return SelectionParams(**cfg)


def select_window(train: pd.DataFrame, candidates: pd.DataFrame, asset_class: str, params):
    """Selection for one training window: the universe's healthy candidates (toxic ones too, so the
    selection audit counts their veto) with a return on every day of the window; their ratings and
    value traded are the screener's at the window's last bar (`universe.candidates_at`)."""
    complete = train.columns[train.notna().all()]  # strict health on this window: no missing return
    pool = candidates[candidates["health"].eq("OK") | candidates["toxic"]].copy()
    pool = pool[pool["symbol"].isin(complete) | pool["toxic"]]
    return htr(train[[c for c in complete if c in set(pool["symbol"])]], pool.reset_index(drop=True),
               asset_class=asset_class, params=params)


def analyze_window(synthetic: pd.DataFrame, profile: Profile) -> tuple[dict, dict]:
    """Atom clusters and the regime with the cluster cap it implies (`regime_cluster_cap`, not floored)."""
    sel, opt = profile.selection, profile.optimizer
    clusters = atom_clusters(synthetic, threshold=sel.threshold, max_clusters=sel.max_clusters)
    state = regime(synthetic)
    state["cluster_cap"] = regime_cluster_cap(state["label"], opt.cluster_cap)
    return clusters, state


def window_caps(clusters: dict, state: dict, profile: Profile) -> tuple[float, float]:
    """(atom cap, cluster cap) the optimizer applies to this window's atoms: `effective_caps` of the
    profile's atom cap and the regime's cluster cap (atom cap >= 1/n, cluster cap >= 1/n_clusters and
    raised further if the caps could not add up to 1) -- the numbers every profile's info reports."""
    labels = pd.Series(clusters["labels"])
    _, sizes = cluster_labels(pd.Index(labels.index), labels, "window caps")
    return effective_caps(len(labels), sizes, state["cluster_cap"], profile.optimizer.atom_cap)


def optimize_window(synthetic: pd.DataFrame, clusters: dict, state: dict, profile: Profile,
                    methods: list[str] | None = None) -> tuple[pd.DataFrame, dict]:
    """Weights (profile, atom_id, weight, cluster) of every risk profile, each through the Stable Sum Gate."""
    opt = profile.optimizer
    labels = pd.Series(clusters["labels"]).reindex(synthetic.columns)
    frames, infos = [], {}
    for method in methods or opt.profiles:
        w, info = optimize_gated(synthetic, method, opt.engine, profile_name=profile.name, clusters=labels,
                                 cluster_cap=state["cluster_cap"], atom_cap=opt.atom_cap, linkage=opt.linkage)
        frames.append(pd.DataFrame({"profile": method, "atom_id": w.index.astype(str), "weight": w.to_numpy(),
                                    "cluster": labels.reindex(w.index).to_numpy().astype(int)}))
        infos[method] = info
    return pd.concat(frames, ignore_index=True), infos


@dataclass
class WindowDecision:
    """Everything one rebalance decided."""

    selection: SelectionResult
    atoms: pd.DataFrame
    synthetic: pd.DataFrame
    clusters: dict
    regime: dict
    weights: pd.DataFrame        # profile, atom_id, weight, cluster


def decide_window(returns: pd.DataFrame, candidates: pd.DataFrame, profile: Profile,
                  end: pd.Timestamp, methods: list[str] | None = None) -> WindowDecision:
    """Selection -> synthesis -> analysis -> optimization on the training window ending at `end` (the
    same functions the production stages call, so the validated decisions are the produced ones).
    `candidates` is the universe at `end`; uses only rows of `returns` dated <= `end`."""
    train = training_window(returns, profile.sleeve.train_days, end)
    result = select_window(train, candidates, profile.sleeve.asset_class, selection_params(profile))
    atoms = build_atoms(result.selection)
    synthetic = synthetic_returns(train, atoms)
    clusters, state = analyze_window(synthetic, profile)
    weights, _ = optimize_window(synthetic, clusters, state, profile, methods)
    return WindowDecision(result, atoms, synthetic, clusters, state, weights)
