"""Natural selection -- HTR v3.4, Hierarchical Threshold Relaxation (SPEC §2.2).

Pure functions on pandas/numpy: features per candidate, a direction-aware alpha score, vetoes,
Ward clusters and the four relaxation stages. No file I/O; the stage code writes the artifacts.

Candidates are atoms keyed by (symbol, logic, direction); `direction` is a typed column
("LONG"/"SHORT"), never parsed from a string. Hard vetoes (no returns, toxic, missing tick/lot
size, entropy above `hard_entropy_max`) apply at every stage (LESSONS L-S2); `hurst` is the raw
R/S exponent and the random-walk band is applied to it (L-S3); SHORT candidates are ranked on
negated momentum and ratings (L-S4); the audit records the funnel and vetoes (L-S5).

Decisions where SPEC is silent:
- alpha ranks are taken across every candidate that has returns (hard-vetoed ones included), so a
  candidate's alpha does not change between relaxation stages; no returns -> alpha NaN.
- percentile p = average rank / number of non-NaN values; constant features tie (no effect on order).
- relaxation is monotone: a later stage keeps the earlier picks and fills each cluster's remaining
  `top_n` slots; the `max_assets` cap keeps earlier stages first, then the best alpha.
- stage 3 treats NaN efficiency/Hurst as spectral failures but needs a finite entropy <= hard max.
- the `veto` column lists every reason at the strict (stage-1) thresholds; the audit's
  `vetoes_by_reason` counts each candidate once, by its first reason in HARD_REASONS + SOFT_REASONS
  order (so the funnel adds up), `veto_mentions` counts every reason.
- CVaR and the other risk features are computed on the asset's returns for both directions.
- with window 120 and order 5 there are at most 116 patterns, so normalized entropy is at most
  log(116)/log(120) ~ 0.993: the 0.995/0.999 entropy thresholds cannot fire at the default window.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from quantlib.portfolio.clustering import ward_clusters
from quantlib.core.errors import GateError
from quantlib.portfolio.stats import cvar_loss, efficiency_ratio, hurst_rs, permutation_entropy

ANNUALIZATION = {"crypto": 365, "equities": 252}
DEFAULT_ENTROPY_MAX = {"crypto": 0.999, "equities": 0.995}

#: feature name -> True when a higher value is better (after the SHORT sign flip).
FEATURES: dict[str, bool] = {
    "momentum": True,
    "volatility": False,
    "entropy": False,
    "efficiency": True,
    "hurst": True,
    "recommend_all": True,
    "recommend_ma": True,
    "liquidity": True,
    "cvar": False,
}
#: features negated for SHORT candidates before ranking (the most bearish ranks best).
SHORT_FLIPPED = ("momentum", "recommend_all", "recommend_ma")
DEFAULT_WEIGHTS: dict[str, float] = {
    "momentum": 1.0, "recommend_all": 1.0, "recommend_ma": 1.0, "efficiency": 1.0,
    "liquidity": 0.5, "volatility": 0.5, "entropy": 0.5, "hurst": 0.5, "cvar": 0.5,
}
DOMINANT_WEIGHT = 3.0
P_FLOOR = 0.01
LIQUIDITY_SCALE = 1e7

KEY = ["symbol", "logic", "direction"]
REQUIRED_COLUMNS = ["symbol", "direction", "logic", "value_traded", "recommend_all", "recommend_ma",
                    "tick_size", "lot_size", "toxic"]
PASSTHROUGH = ["value_traded", "tick_size", "lot_size", "toxic"]
FEATURE_COLUMNS = ["n_obs", *FEATURES]

# Veto reasons, in precedence order (a candidate's first reason is its primary one in the audit).
HARD_REASONS = ("no_returns", "toxic", "missing_tick_size", "missing_lot_size", "entropy_above_hard_max")
SOFT_REASONS = ("insufficient_history", "entropy_above_max", "efficiency_below_min", "hurst_random_walk")


@dataclass(frozen=True)
class SelectionParams:
    """Knobs of HTR (the profile's `selection:` section). Validated on construction (ValueError)."""

    top_n: int = 15                 # per cluster, best by alpha
    threshold: float = 0.45         # Ward cut distance
    max_clusters: int = 25
    lookbacks: tuple[int, ...] = (60, 120, 200)
    min_assets: int = 15
    max_assets: int = 25
    entropy_max: float | None = None   # None -> 0.999 crypto, 0.995 equities
    efficiency_min: float = 0.03
    hurst_band: tuple[float, float] = (0.48, 0.52)
    hard_entropy_max: float = 0.999
    window: int = 120               # returns used for entropy / efficiency
    entropy_order: int = 5
    entropy_delay: int = 1
    weights: dict[str, float] | None = None   # None -> DEFAULT_WEIGHTS; a partial dict overrides them
    dominant_signal: str | None = None        # a feature name whose weight becomes 3.0

    def __post_init__(self) -> None:
        problems = []
        if self.top_n < 1:
            problems.append(f"top_n must be >= 1 (got {self.top_n})")
        if not 1 <= self.min_assets <= self.max_assets:
            problems.append(f"need 1 <= min_assets <= max_assets (got {self.min_assets}, {self.max_assets})")
        if self.threshold <= 0 or self.max_clusters < 1:
            problems.append(f"threshold must be > 0 and max_clusters >= 1 (got {self.threshold}, {self.max_clusters})")
        if len(self.hurst_band) != 2 or self.hurst_band[0] > self.hurst_band[1]:
            problems.append(f"hurst_band must be (low, high) with low <= high (got {self.hurst_band})")
        if self.entropy_order < 2 or self.entropy_delay < 1 or self.window < 2:
            problems.append("entropy_order must be >= 2, entropy_delay >= 1, window >= 2")
        if problems:
            raise ValueError("selection parameters: " + "; ".join(problems))
        resolve_weights(self.weights, self.dominant_signal)  # raises ValueError on bad names


class SelectionError(GateError):
    """HTR left fewer than 2 assets; the message shows the funnel and the vetoes by reason."""

    def __init__(self, message: str, audit: dict | None = None):
        super().__init__(message)
        self.audit = audit or {}


@dataclass
class SelectionResult:
    """`selection`: one row per selected atom; `features`: every candidate; `audit`: JSON-ready."""

    selection: pd.DataFrame
    features: pd.DataFrame
    audit: dict = field(default_factory=dict)


def resolve_weights(weights: dict[str, float] | None = None, dominant_signal: str | None = None) -> dict[str, float]:
    """Default weights updated by `weights`, then `dominant_signal`'s weight set to 3.0.

    Raises ValueError for an unknown feature name or a negative/non-finite weight.
    """
    valid = ", ".join(FEATURES)
    out = dict(DEFAULT_WEIGHTS)
    for name, w in (weights or {}).items():
        if name not in FEATURES:
            raise ValueError(f"selection weights: unknown feature {name!r}; valid features: {valid}")
        if not (isinstance(w, (int, float)) and math.isfinite(w) and w >= 0):
            raise ValueError(f"selection weights: weight of {name!r} must be a finite number >= 0 (got {w!r})")
        out[name] = float(w)
    if dominant_signal is not None:
        if dominant_signal not in FEATURES:
            raise ValueError(f"selection dominant_signal: unknown feature {dominant_signal!r}; valid features: {valid}")
        out[dominant_signal] = DOMINANT_WEIGHT
    return out


def _validate_candidates(candidates: pd.DataFrame) -> pd.DataFrame:
    missing = [c for c in REQUIRED_COLUMNS if c not in candidates.columns]
    if missing:
        raise ValueError(f"selection: candidates table lacks column(s) {missing}; required: {REQUIRED_COLUMNS}")
    cands = candidates.reset_index(drop=True).copy()
    bad = sorted(set(cands["direction"].astype(str)) - {"LONG", "SHORT"})
    if bad or cands["direction"].isna().any():
        raise ValueError(f"selection: direction must be 'LONG' or 'SHORT' (found {bad or ['<NA>']})")
    dup = cands.duplicated(KEY, keep=False)
    if dup.any():
        first = cands.loc[dup, KEY].iloc[0].tolist()
        raise ValueError(f"selection: duplicate candidate key (symbol, logic, direction) {first}; "
                         "deduplicate the candidate lists before selection")
    cands["toxic"] = cands["toxic"].astype("boolean").fillna(False).astype(bool)
    for col in ("value_traded", "recommend_all", "recommend_ma", "tick_size", "lot_size"):
        cands[col] = pd.to_numeric(cands[col], errors="coerce").astype(float)
    return cands


def _symbol_features(r: np.ndarray, annualization: int, params: SelectionParams) -> dict[str, float]:
    n = len(r)
    w = r[-params.window:]
    return {
        "n_obs": n,
        "momentum": float(r.mean() * annualization) if n else math.nan,
        "volatility": float(r.std(ddof=1) * math.sqrt(annualization)) if n > 1 else math.nan,
        "entropy": permutation_entropy(w, params.entropy_order, params.entropy_delay),
        "efficiency": efficiency_ratio(w),
        "hurst": hurst_rs(r),
        "cvar": cvar_loss(r, 0.95),
        "cvar_short": cvar_loss(-np.minimum(r, 1.0), 0.95),  # the loss tail of a short is the upside
    }


def candidate_features(returns: pd.DataFrame, candidates: pd.DataFrame, annualization: int,
                       params: SelectionParams) -> pd.DataFrame:
    """Features of every candidate (rows in the order of `candidates`, RangeIndex).

    `returns`: dates x symbols simple returns; each symbol's features use its non-NaN values
    (momentum, volatility (ddof 1), Hurst, CVaR on all of them; entropy and efficiency on the last
    `params.window`). Columns: symbol, logic, direction, value_traded, tick_size, lot_size, toxic,
    n_obs, momentum, volatility, entropy, efficiency, hurst, recommend_all, recommend_ma, liquidity,
    cvar (positive = loss of the position: for SHORT rows measured on -clip(r, upper=1)). Momentum and
    ratings are raw: no SHORT sign flip here. A symbol without a returns column
    (or with no data) has n_obs = 0 and NaN return features.
    """
    cands = _validate_candidates(candidates)
    per_symbol: dict[str, dict[str, float]] = {}
    for sym in cands["symbol"].unique():
        if sym in returns.columns:
            col = returns[sym]
            if isinstance(col, pd.DataFrame):
                raise ValueError(f"selection: returns has duplicate column {sym!r}")
            r = col.to_numpy(dtype=np.float64)
            r = r[np.isfinite(r)]
        else:
            r = np.empty(0)
        per_symbol[sym] = _symbol_features(r, annualization, params) if len(r) else {
            "n_obs": 0, **{k: math.nan for k in ("momentum", "volatility", "entropy", "efficiency", "hurst", "cvar",
                                                 "cvar_short")}}
    feats = pd.DataFrame([per_symbol[s] for s in cands["symbol"]], index=cands.index,
                         columns=["n_obs", "momentum", "volatility", "entropy", "efficiency", "hurst", "cvar",
                                  "cvar_short"])
    # CVaR is the loss of the *position*: on the synthetic short stream -clip(r, upper=1) for SHORT rows
    feats["cvar"] = feats["cvar"].where(cands["direction"] != "SHORT", feats.pop("cvar_short"))
    feats["n_obs"] = feats["n_obs"].astype(int)
    out = pd.concat([cands[KEY + PASSTHROUGH], feats], axis=1)
    out["recommend_all"] = cands["recommend_all"]
    out["recommend_ma"] = cands["recommend_ma"]
    out["liquidity"] = np.minimum(1.0, cands["value_traded"] / LIQUIDITY_SCALE)
    return out[KEY + PASSTHROUGH + FEATURE_COLUMNS]


def percentile_rank(values: pd.Series, higher_is_better: bool = True) -> pd.Series:
    """p = rank / count in [0.01, 1] (average rank for ties, count = non-NaN values; NaN -> 0.01).

    The best value gets p = 1; with `higher_is_better=False` the smallest value is the best.
    """
    v = pd.to_numeric(values, errors="coerce").astype(float)
    ranked = (v if higher_is_better else -v).rank(method="average", ascending=True)
    count = int(v.notna().sum())
    p = ranked / count if count else ranked
    return p.clip(lower=P_FLOOR).fillna(P_FLOOR)


def alpha_scores(features: pd.DataFrame, weights: dict[str, float]) -> pd.Series:
    """Direction-aware alpha = prod_f p_f ** w_f over the rows of `features`.

    For rows with direction SHORT, momentum and both ratings are negated before ranking. Ranks are
    taken across all rows given. Features with weight 0 are ignored. Returns a Series named
    "alpha" in (0, 1] aligned with `features.index`. Unknown weight names -> ValueError.
    """
    unknown = sorted(set(weights) - set(FEATURES))
    if unknown:
        raise ValueError(f"alpha_scores: unknown feature(s) {unknown}; valid features: {', '.join(FEATURES)}")
    short = (features["direction"] == "SHORT").to_numpy()
    log_alpha = pd.Series(0.0, index=features.index)
    for name, w in weights.items():
        if w == 0:
            continue
        if name not in features.columns:
            raise ValueError(f"alpha_scores: features lack column {name!r}")
        v = pd.to_numeric(features[name], errors="coerce").astype(float)
        if name in SHORT_FLIPPED:
            v = v.where(~short, -v)
        log_alpha += w * np.log(percentile_rank(v, FEATURES[name]))
    return np.exp(log_alpha).rename("alpha")


def _reasons(feats: pd.DataFrame, params: SelectionParams, entropy_max: float) -> pd.DataFrame:
    """Boolean frame (candidates x reason) at the strict thresholds."""
    no_ret = feats["n_obs"] == 0
    lo, hi = params.hurst_band
    with np.errstate(invalid="ignore"):
        spectral_nan = feats[["entropy", "efficiency", "hurst"]].isna().any(axis=1)
        cols = {
            "no_returns": no_ret,
            "toxic": feats["toxic"].astype(bool),
            "missing_tick_size": ~(feats["tick_size"] > 0),
            "missing_lot_size": ~(feats["lot_size"] > 0),
            "entropy_above_hard_max": feats["entropy"] > params.hard_entropy_max,
            "insufficient_history": spectral_nan & ~no_ret,
            "entropy_above_max": feats["entropy"] > entropy_max,
            "efficiency_below_min": feats["efficiency"] < params.efficiency_min,
            "hurst_random_walk": feats["hurst"].between(lo, hi, inclusive="both"),
        }
    return pd.DataFrame(cols, index=feats.index)[list(HARD_REASONS + SOFT_REASONS)].fillna(False).astype(bool)


def _passes(feats: pd.DataFrame, hard: pd.Series, params: SelectionParams, entropy_max: float,
            efficiency_min: float) -> pd.Series:
    lo, hi = params.hurst_band
    ok = (feats["entropy"] <= entropy_max) & (feats["efficiency"] >= efficiency_min) \
        & ~feats["hurst"].between(lo, hi, inclusive="both") & feats["hurst"].notna()
    return ok.fillna(False).astype(bool) & ~hard


def _by_alpha(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows sorted best-first: alpha descending, then the key (deterministic ties)."""
    return frame.sort_values(["alpha", *KEY], ascending=[False, True, True, True], kind="mergesort")


def _error_message(funnel: list[dict], vetoes: dict[str, int], stage: int, n: int) -> str:
    chain = " -> ".join(f"{f['step']}={f['remaining']}" for f in funnel)
    veto_txt = ", ".join(f"{k}={v}" for k, v in vetoes.items() if v) or "none"
    hard = sum(vetoes.get(r, 0) for r in HARD_REASONS)
    hard_txt = ("; hard vetoes (no returns, toxic, missing tick/lot size, entropy above the hard max) are never "
                "relaxed: check the symbols' metadata and health" if hard else "")
    return (f"selection (HTR): only {n} asset(s) survive after relaxation stage {stage} (need >= 2); "
            f"funnel: {chain}; vetoes by reason: {veto_txt}; widen the scanner (more candidates) or lower "
            f"the thresholds (entropy_max, efficiency_min, hurst_band) in the profile's `selection:` section{hard_txt}")


def select(returns: pd.DataFrame, candidates: pd.DataFrame, *, asset_class: str,
           params: SelectionParams = SelectionParams()) -> SelectionResult:
    """Run HTR on the training-window `returns` (dates x symbols) and the `candidates` table.

    Stages stop at the first that yields >= `min_assets`; the book is capped at `max_assets`
    keeping earlier stages first, then the best alpha. Raises SelectionError if fewer than 2
    atoms are selected, ValueError for bad inputs (unknown asset class, missing columns, ...).
    """
    if asset_class not in ANNUALIZATION:
        raise ValueError(f"selection: asset_class must be one of {sorted(ANNUALIZATION)} (got {asset_class!r})")
    annualization = ANNUALIZATION[asset_class]
    entropy_max = DEFAULT_ENTROPY_MAX[asset_class] if params.entropy_max is None else float(params.entropy_max)
    weights = resolve_weights(params.weights, params.dominant_signal)

    feats = candidate_features(returns, candidates, annualization, params)
    has_ret = feats["n_obs"] > 0
    feats["alpha"] = np.nan
    if has_ret.any():
        feats.loc[has_ret, "alpha"] = alpha_scores(feats.loc[has_ret], weights)

    reasons = _reasons(feats, params, entropy_max)
    hard = reasons[list(HARD_REASONS)].any(axis=1)
    feats["veto"] = reasons.apply(lambda row: ",".join(row.index[row.to_numpy()]), axis=1) if len(feats) else ""
    feats["hard_veto"] = hard

    # Clusters on the symbols that pass the hard vetoes.
    feats["cluster"] = pd.array([pd.NA] * len(feats), dtype="Int64")
    eligible_syms = list(dict.fromkeys(feats.loc[~hard, "symbol"]))
    n_clusters = 0
    if eligible_syms:
        clusters = ward_clusters(returns[eligible_syms], params.threshold, params.max_clusters, params.lookbacks)
        feats.loc[~hard, "cluster"] = feats.loc[~hard, "symbol"].map(clusters.labels).astype("Int64")
        n_clusters = clusters.count

    strict_t = {"entropy_max": entropy_max, "efficiency_min": params.efficiency_min,
                "hurst_band": [float(params.hurst_band[0]), float(params.hurst_band[1])],
                "hard_entropy_max": params.hard_entropy_max}
    relaxed_t = dict(strict_t, entropy_max=min(entropy_max * 1.2, 1.0),
                     efficiency_min=params.efficiency_min * 0.8)
    strict = _passes(feats, hard, params, strict_t["entropy_max"], strict_t["efficiency_min"])
    relaxed = _passes(feats, hard, params, relaxed_t["entropy_max"], relaxed_t["efficiency_min"])

    picks: dict[Any, int] = {}  # candidate index -> stage admitted

    def fill_clusters(pool: pd.Series, stage: int) -> None:
        taken = feats.loc[list(picks), "cluster"].value_counts().to_dict() if picks else {}
        for cl, grp in _by_alpha(feats[pool]).groupby("cluster", sort=True):
            free = [i for i in grp.index if i not in picks]
            for i in free[: max(params.top_n - taken.get(cl, 0), 0)]:
                picks[i] = stage

    trace = []
    fill_clusters(strict, 1)
    stage = 1
    trace.append({"stage": 1, "picked": len(picks)})
    if len(picks) < params.min_assets:
        stage = 2
        fill_clusters(relaxed, 2)
        trace.append({"stage": 2, "picked": len(picks)})
    if len(picks) < params.min_assets:
        stage = 3
        lo, hi = params.hurst_band
        spectral_fail = ~(feats["efficiency"] >= relaxed_t["efficiency_min"]).fillna(False) \
            | feats["hurst"].between(lo, hi, inclusive="both") | feats["hurst"].isna()
        fallback = ~hard & (feats["entropy"] <= params.hard_entropy_max).fillna(False) & spectral_fail & ~relaxed
        covered = set(feats.loc[relaxed, "cluster"].dropna())
        for cl, grp in _by_alpha(feats[fallback]).groupby("cluster", sort=True):
            if cl not in covered:
                picks[grp.index[0]] = 3
        trace.append({"stage": 3, "picked": len(picks)})
    if len(picks) < params.min_assets:
        stage = 4
        rest = _by_alpha(feats[relaxed & ~feats.index.isin(list(picks))])
        for i in rest.index[: params.min_assets - len(picks)]:
            picks[i] = 4
        trace.append({"stage": 4, "picked": len(picks)})

    chosen = feats.loc[list(picks)].assign(stage=[picks[i] for i in picks])
    chosen = chosen.sort_values(["stage", "alpha", *KEY], ascending=[True, False, True, True, True], kind="mergesort")
    chosen = chosen.head(params.max_assets)
    selection = chosen[KEY[:1] + ["direction", "logic", "cluster", "alpha", "stage"] + PASSTHROUGH[:3]
                       + FEATURE_COLUMNS].reset_index(drop=True)
    selection["cluster"] = selection["cluster"].astype("int64")
    selection["stage"] = selection["stage"].astype("int64")

    # Audit: primary reason per vetoed candidate so that the funnel adds up.
    primary = reasons.idxmax(axis=1).where(reasons.any(axis=1)) if len(reasons) else pd.Series(dtype=object)
    vetoes_by_reason = {r: int((primary == r).sum()) for r in HARD_REASONS + SOFT_REASONS}
    veto_mentions = {r: int(reasons[r].sum()) for r in HARD_REASONS + SOFT_REASONS}
    funnel = [
        {"step": "candidates", "remaining": int(len(feats))},
        {"step": "with_returns", "remaining": int(has_ret.sum())},
        {"step": "after_hard_vetoes", "remaining": int((~hard).sum())},
        {"step": "after_stage1_thresholds", "remaining": int(strict.sum())},
        {"step": "selected", "remaining": int(len(selection))},
    ]
    thresholds = dict(strict_t if stage == 1 else relaxed_t)
    if stage >= 3:
        thresholds["fallback_entropy_max"] = params.hard_entropy_max
    audit = {
        "stage_reached": stage,
        "thresholds": thresholds,
        "strict_thresholds": strict_t,
        "relaxed_thresholds": relaxed_t,
        "funnel": funnel,
        "vetoes_by_reason": vetoes_by_reason,
        "veto_mentions": veto_mentions,
        "n_candidates": int(len(feats)),
        "n_clusters": int(n_clusters),
        "n_selected": int(len(selection)),
        "selected_by_stage": {s: int((selection["stage"] == s).sum()) for s in (1, 2, 3, 4)},
        "stage_trace": trace,
        "params": {
            "asset_class": asset_class, "annualization": annualization, "top_n": params.top_n,
            "threshold": params.threshold, "max_clusters": params.max_clusters,
            "lookbacks": list(params.lookbacks), "min_assets": params.min_assets,
            "max_assets": params.max_assets, "window": params.window,
            "entropy_order": params.entropy_order, "entropy_delay": params.entropy_delay,
            "weights": weights, "dominant_signal": params.dominant_signal,
        },
    }
    if len(selection) < 2:
        raise SelectionError(_error_message(funnel, vetoes_by_reason, stage, len(selection)), audit)
    return SelectionResult(selection=selection, features=feats, audit=audit)
