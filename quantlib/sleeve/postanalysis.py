"""Post-analysis (SPEC §2.8): cluster map, factor map and drift monitor as tables and plotly figures.

Pure functions: tables in, tables and plotly figures out (the post-analysis stage writes them).
plotly and scipy are imported inside the functions so `import quantlib.sleeve.postanalysis` stays light.

Inputs
- `returns`: dates x atom_id synthetic returns on a training window. NaN policy: no NaN and no
  infinite value allowed (the caller passes a clean window); anything else raises ``ValueError``
  naming the offending atoms.
- `labels`: cluster id per atom (a Series indexed by atom_id, e.g. ``ward_clusters(...).labels``).
- `history`: one row per (profile, rebalance, atom_id) with columns ``rebalance`` (Timestamp),
  ``profile``, ``atom_id``, ``weight``, ``cluster``. An atom is *held* at a rebalance when it has a
  row there with a non-zero weight. ``cluster`` may be missing (NaN) for an atom; such atoms are
  left out of ``n_clusters`` and ``cluster_changes`` and shown as "unclustered".

Clusters and distances are the ones of selection (§2.2): `clustering.average_correlation`,
`clustering.correlation_distance`, `clustering.ward_clusters`.
"""
from __future__ import annotations

import html

import numpy as np
import pandas as pd

from quantlib.portfolio import clustering

HISTORY_COLUMNS = ("rebalance", "profile", "atom_id", "weight", "cluster")
DRIFT_COLUMNS = ("profile", "rebalance", "n_atoms", "turnover", "weight_entered", "n_clusters",
                 "cluster_changes")


# ----------------------------------------------------------------------------- validation
def _check_returns(returns: pd.DataFrame, min_atoms: int, what: str) -> None:
    if not isinstance(returns, pd.DataFrame):
        raise ValueError(f"{what}: returns must be a pandas DataFrame (dates x atom_id), got {type(returns).__name__}")
    if returns.columns.has_duplicates:
        dup = sorted(map(str, returns.columns[returns.columns.duplicated()].unique()))
        raise ValueError(f"{what}: duplicate atom columns in returns: {dup}")
    if returns.shape[1] < min_atoms:
        raise ValueError(f"{what} needs at least {min_atoms} atoms (columns of returns), got {returns.shape[1]}")
    if len(returns) < 2:
        raise ValueError(f"{what} needs at least 2 dates of returns to compute correlations, got {len(returns)}")
    try:
        values = returns.to_numpy(dtype=float)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what}: returns must be numeric ({exc})") from None
    bad = ~np.isfinite(values)
    if bad.any():
        cols = [str(c) for c in returns.columns[bad.any(axis=0)]]
        shown = ", ".join(cols[:10]) + (f" (+{len(cols) - 10} more)" if len(cols) > 10 else "")
        raise ValueError(f"{what}: returns contain NaN or infinite values in {len(cols)} atom(s): {shown}; "
                         "pass a clean training window of synthetic returns")


def _aligned_labels(labels: pd.Series, columns: pd.Index, what: str) -> pd.Series:
    if not isinstance(labels, pd.Series):
        raise ValueError(f"{what}: labels must be a pandas Series indexed by atom_id, got {type(labels).__name__}")
    missing = [str(c) for c in columns if c not in labels.index]
    if missing:
        raise ValueError(f"{what}: no cluster label for atom(s) {missing[:10]}; labels must cover every returns column")
    out = labels.loc[~labels.index.duplicated()].reindex(columns)
    if out.isna().any():
        raise ValueError(f"{what}: NaN cluster label for atom(s) {[str(c) for c in out.index[out.isna()]][:10]}")
    return out.rename("cluster")


def _check_history(history: pd.DataFrame) -> pd.DataFrame:
    if not isinstance(history, pd.DataFrame):
        raise ValueError(f"history must be a pandas DataFrame, got {type(history).__name__}")
    missing = [c for c in HISTORY_COLUMNS if c not in history.columns]
    if missing:
        raise ValueError(f"history lacks column(s) {missing}; expected {list(HISTORY_COLUMNS)}")
    h = history.loc[:, list(HISTORY_COLUMNS)].copy()
    for col in ("rebalance", "profile", "atom_id", "weight"):
        if h[col].isna().any():
            raise ValueError(f"history has {int(h[col].isna().sum())} row(s) with a missing {col!r}")
    h["rebalance"] = pd.to_datetime(h["rebalance"])
    try:
        h["weight"] = h["weight"].astype(float)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"history 'weight' must be numeric ({exc})") from None
    if not np.isfinite(h["weight"].to_numpy()).all():
        raise ValueError("history 'weight' contains infinite values")
    dup = h.duplicated(["profile", "rebalance", "atom_id"])
    if dup.any():
        first = h.loc[dup].iloc[0]
        raise ValueError(f"history has {int(dup.sum())} duplicate (profile, rebalance, atom_id) row(s), "
                         f"e.g. ({first['profile']}, {first['rebalance']}, {first['atom_id']})")
    return h


def _profile_history(history: pd.DataFrame, profile: str) -> pd.DataFrame:
    h = _check_history(history)
    sub = h.loc[h["profile"] == profile]
    if sub.empty:
        raise ValueError(f"profile {profile!r} not in history; available: {sorted(map(str, h['profile'].unique()))}")
    return sub


# ----------------------------------------------------------------------------- cluster map
def _ordered_clusters(returns: pd.DataFrame, threshold: float, max_clusters: int):
    from scipy.cluster.hierarchy import leaves_list

    clusters = clustering.ward_clusters(returns, threshold=threshold, max_clusters=max_clusters)
    cols = list(returns.columns)
    if len(cols) < 2:
        return cols, clusters
    order = [cols[i] for i in leaves_list(clusters.linkage)]
    return order, clusters


def dendrogram_order(returns: pd.DataFrame, threshold: float = 0.45,
                     max_clusters: int = 25) -> tuple[list[str], pd.Series]:
    """Leaf order of the Ward linkage of §2.2 (scipy `leaves_list`) and the cluster labels.

    Returns ``(order, labels)``: `order` lists every column of `returns` once, so that each cluster
    is a contiguous run; `labels` is ``ward_clusters(...).labels`` (1..k, indexed by atom_id, in
    the input column order). One atom gives ``([atom], labels)``.
    """
    _check_returns(returns, 1, "dendrogram_order")
    order, clusters = _ordered_clusters(returns, threshold, max_clusters)
    return order, clusters.labels


def _runs(values: list) -> list[tuple[int, int, object]]:
    """(start, end inclusive, value) of consecutive equal values."""
    out: list[tuple[int, int, object]] = []
    start = 0
    for i in range(1, len(values) + 1):
        if i == len(values) or values[i] != values[start]:
            out.append((start, i - 1, values[start]))
            start = i
    return out


def short_names(names: list[str]) -> tuple[list[str], str]:
    """Axis labels for atom ids: the prefix and suffix every id shares are cut (`BINANCE:SUSHIUSDT/rating_all/LONG`
    -> `SUSHIUSDT` when all share `BINANCE:` and `/rating_all/LONG`), cut only at a `:` or `/`, and only if
    the labels stay distinct and non-empty. Returns (labels, the shared part as `prefix…suffix`, "" if none)."""
    import os

    if len(names) < 2:
        return list(names), ""
    prefix = os.path.commonprefix(names)
    prefix = prefix[:max(prefix.rfind(":"), prefix.rfind("/")) + 1]
    rev = os.path.commonprefix([n[::-1] for n in names])[::-1]
    cut = [i for i, ch in enumerate(rev) if ch in ":/"]
    suffix = rev[cut[0]:] if cut else ""
    short = [n[len(prefix):len(n) - len(suffix)] for n in names]
    if not all(short) or len(set(short)) < len(short):
        return list(names), ""
    return short, f"{prefix}…{suffix}" if (prefix or suffix) else ""


def cluster_map(returns: pd.DataFrame, threshold: float = 0.45, max_clusters: int = 25):
    """Heatmap of the averaged correlation (same lookbacks as the clusters) in dendrogram order.

    Rows and columns follow `dendrogram_order`; each cluster is outlined by a square (layout shapes,
    one per cluster, ``name = "cluster <id>"``). The heatmap trace's ``z`` is
    ``average_correlation(returns).loc[order, order]``; hover shows both atoms' clusters.
    Raises ``ValueError`` for fewer than 2 atoms or NaN/inf returns.
    """
    import plotly.graph_objects as go

    _check_returns(returns, 2, "cluster_map")
    order, clusters = _ordered_clusters(returns, threshold, max_clusters)
    rho = clustering.average_correlation(returns).loc[order, order]
    labels = clusters.labels.loc[order]
    lab = [str(v) for v in labels]
    hover = [[f"{order[i]} (cluster {lab[i]})<br>{order[j]} (cluster {lab[j]})" for j in range(len(order))]
             for i in range(len(order))]
    names, common = short_names([str(a) for a in order])
    fig = go.Figure(go.Heatmap(
        z=rho.to_numpy(), x=names, y=names, zmin=-1.0, zmax=1.0, colorscale="RdBu_r",
        colorbar=dict(title="corr"), text=hover,
        hovertemplate="%{text}<br>corr %{z:.3f}<extra></extra>"))
    for start, end, value in _runs(list(labels)):
        fig.add_shape(type="rect", x0=start - 0.5, x1=end + 0.5, y0=start - 0.5, y1=end + 0.5,
                      xref="x", yref="y", line=dict(color="black", width=2), fillcolor="rgba(0,0,0,0)",
                      name=f"cluster {value}")
    size = max(420, min(1000, 220 + 18 * len(order)))
    fig.update_layout(
        title=f"Cluster map: averaged correlation in dendrogram order "
              f"({clusters.count} clusters, Ward cut at {threshold:g})"
              + (f"<br><sup>atoms {html.escape(common)}</sup>" if common else ""),
        height=size + 60, width=size + 160,
        xaxis=dict(type="category", tickangle=-60, constrain="domain", automargin=True),
        yaxis=dict(type="category", autorange="reversed", scaleanchor="x", automargin=True))
    return fig


# ----------------------------------------------------------------------------- factor map
def classical_mds(distance: pd.DataFrame | np.ndarray, n_components: int = 2) -> np.ndarray:
    """Classical (Torgerson) MDS of a symmetric distance matrix, shape (n, n) -> (n, n_components).

    B = -1/2 J D² J (J the centring matrix); coordinates = top eigenvectors x sqrt(eigenvalue),
    negative eigenvalues clipped to 0 (axes beyond the matrix rank are 0). Deterministic: each
    axis's sign is fixed so that its largest-|.| entry is positive (first such entry on ties).
    When D is exactly embeddable in `n_components` dimensions, the Euclidean distances of the
    result reproduce D.
    """
    d = np.asarray(distance, dtype=float)
    if d.ndim != 2 or d.shape[0] != d.shape[1]:
        raise ValueError(f"classical_mds needs a square distance matrix, got shape {d.shape}")
    if not np.isfinite(d).all():
        raise ValueError("classical_mds: distance matrix contains NaN or infinite values")
    if not np.allclose(d, d.T, atol=1e-10):
        raise ValueError("classical_mds: distance matrix is not symmetric")
    n = d.shape[0]
    if n == 0:
        return np.zeros((0, n_components))
    j = np.eye(n) - np.full((n, n), 1.0 / n)
    b = -0.5 * j @ (d ** 2) @ j
    b = 0.5 * (b + b.T)
    vals, vecs = np.linalg.eigh(b)
    idx = np.argsort(vals)[::-1][:n_components]
    coords = np.zeros((n, n_components))
    for k, i in enumerate(idx):
        lam = max(float(vals[i]), 0.0)
        axis = vecs[:, i] * np.sqrt(lam)
        pivot = int(np.argmax(np.abs(axis)))
        if axis[pivot] < 0:
            axis = -axis
        coords[:, k] = axis
    coords[np.abs(coords) < 1e-15] = 0.0
    return coords


def factor_embedding(returns: pd.DataFrame, labels: pd.Series) -> pd.DataFrame:
    """2-D classical MDS of the atoms on the correlation distance d = sqrt(0.5 (1 - rho)).

    rho is `clustering.average_correlation(returns)` (the one the clusters use). Returns a frame
    indexed by atom_id (returns column order) with columns ``x``, ``y`` (float) and ``cluster``
    (the label of each atom). Deterministic (see `classical_mds`). Raises ``ValueError`` for
    fewer than 2 atoms, NaN/inf returns, or labels that miss an atom.
    """
    _check_returns(returns, 2, "factor_embedding")
    lab = _aligned_labels(labels, returns.columns, "factor_embedding")
    dist = clustering.correlation_distance(clustering.average_correlation(returns))
    xy = classical_mds(dist.to_numpy(), 2)
    out = pd.DataFrame({"x": xy[:, 0], "y": xy[:, 1]}, index=returns.columns)
    out["cluster"] = lab.to_numpy()
    out.index.name = "atom_id"
    return out


def factor_map(returns: pd.DataFrame, labels: pd.Series, weights: pd.Series | None = None):
    """Scatter of `factor_embedding`, one trace per cluster (categorical colours, legend "cluster k").

    Marker size grows with |weight| when `weights` (Series by atom_id) is given; atoms absent from
    `weights` (or NaN) count as weight 0 and get the smallest marker. Hover shows the atom id,
    its cluster and weight.
    """
    import plotly.express as px
    import plotly.graph_objects as go

    emb = factor_embedding(returns, labels)
    if weights is not None:
        if not isinstance(weights, pd.Series):
            raise ValueError(f"factor_map: weights must be a pandas Series by atom_id, got {type(weights).__name__}")
        w = weights.loc[~weights.index.duplicated()].reindex(emb.index).astype(float).fillna(0.0)
        scale = float(w.abs().max())
        size = 8.0 + 32.0 * (w.abs() / scale if scale > 0 else 0.0 * w)
    else:
        w = None
        size = pd.Series(11.0, index=emb.index)
    palette = px.colors.qualitative.Dark24
    fig = go.Figure()
    for k, cl in enumerate(sorted(emb["cluster"].unique(), key=clustering.id_order)):
        sub = emb.loc[emb["cluster"] == cl]
        atoms = [str(a) for a in sub.index]
        if w is None:
            custom = np.array([[str(cl), ""] for _ in atoms], dtype=object)
        else:
            custom = np.array([[str(cl), f"<br>weight {w.loc[a]:.4f}"] for a in sub.index], dtype=object)
        fig.add_trace(go.Scatter(
            x=sub["x"], y=sub["y"], mode="markers", name=f"cluster {cl}", text=atoms, customdata=custom,
            marker=dict(size=size.loc[sub.index].to_numpy(), color=palette[k % len(palette)],
                        line=dict(width=0.5, color="white"), opacity=0.85),
            hovertemplate="%{text}<br>cluster %{customdata[0]}%{customdata[1]}<extra></extra>"))
    fig.update_layout(
        title="Factor map: classical MDS of the correlation distance, coloured by cluster"
              + (" (size = weight)" if weights is not None else ""),
        xaxis_title="MDS axis 1", yaxis_title="MDS axis 2", height=520, legend_title_text="cluster")
    return fig


# ----------------------------------------------------------------------------- drift
def _drift_one(h: pd.DataFrame, profile) -> list[dict]:
    rows: list[dict] = []
    prev_w: pd.Series | None = None
    prev_c: pd.Series | None = None
    for reb, snap in h.sort_values(["rebalance", "atom_id"]).groupby("rebalance", sort=True):
        held = snap.loc[snap["weight"] != 0.0]
        w = pd.Series(held["weight"].to_numpy(), index=held["atom_id"].to_numpy())
        c = pd.Series(held["cluster"].to_numpy(), index=held["atom_id"].to_numpy())
        row = {"profile": profile, "rebalance": reb, "n_atoms": int(len(w)),
               "n_clusters": int(c.dropna().nunique())}
        if prev_w is None:
            row.update(turnover=np.nan, weight_entered=np.nan, cluster_changes=pd.NA)
        else:
            union = w.index.union(prev_w.index)
            diff = w.reindex(union, fill_value=0.0) - prev_w.reindex(union, fill_value=0.0)
            entered = w.index.difference(prev_w.index)
            both = w.index.intersection(prev_w.index)
            cn, cp = c.reindex(both), prev_c.reindex(both)
            known = cn.notna() & cp.notna()
            row.update(turnover=0.5 * float(diff.abs().sum()),
                       weight_entered=float(w.reindex(entered).sum()),
                       cluster_changes=int((cn[known] != cp[known]).sum()))
        rows.append(row)
        prev_w, prev_c = w, c
    return rows


def drift_table(history: pd.DataFrame) -> pd.DataFrame:
    """Per (profile, rebalance), sorted: how the book drifts between consecutive rebalances.

    Columns: ``profile``, ``rebalance``, ``n_atoms`` (atoms held), ``turnover`` (½ Σ|w_t − w_prev|
    over the union of atoms, an atom missing on one side counting as 0), ``weight_entered`` (sum of
    the weights of atoms held now but not at the previous rebalance), ``n_clusters`` (distinct
    clusters among held atoms), ``cluster_changes`` (atoms held at both rebalances whose cluster id
    differs; ids are compared literally, as written in `history`). The first rebalance of each
    profile has NaN ``turnover`` / ``weight_entered`` and <NA> ``cluster_changes`` (nullable Int64).
    """
    h = _check_history(history)
    rows: list[dict] = []
    for profile, sub in h.groupby("profile", sort=True):
        rows.extend(_drift_one(sub, profile))
    out = pd.DataFrame(rows, columns=list(DRIFT_COLUMNS))
    out["turnover"] = out["turnover"].astype(float)
    out["weight_entered"] = out["weight_entered"].astype(float)
    out["n_atoms"] = out["n_atoms"].astype(int)
    out["n_clusters"] = out["n_clusters"].astype(int)
    out["cluster_changes"] = out["cluster_changes"].astype("Int64")
    return out


TOP_SERIES = 10
"""Drift and cluster charts draw this many atoms / clusters (largest mean weight) and one "other"."""
OTHER_COLOUR, UNCLUSTERED_COLOUR = "#b0b0b0", "#dddddd"


def stable_cluster_ids(history: pd.DataFrame) -> pd.DataFrame:
    """`history` with `cluster` renumbered per profile so that an id names the same group over time.

    Rebalances are walked in order; the first keeps its ids, each later one takes the ids of the
    previous rebalance by maximum overlap of atoms (`clustering.match_labels`, Hungarian), and a
    cluster that continues none gets a fresh id (never used before in that profile). Which atoms are
    together is unchanged; only the numbers move -- for charts: the recorded artifacts keep the
    optimizer's ids (integers, as `clustering.ward_clusters` gives them). `cluster` comes back as nullable
    Int64 (NaN stays <NA>)."""
    h = _check_history(history).sort_values(["profile", "rebalance", "atom_id"], kind="stable").copy()
    out = pd.Series(pd.NA, index=h.index, dtype="Int64")
    for _, sub in h.groupby("profile", sort=True):
        previous, next_id = None, None
        for _, snap in sub.groupby("rebalance", sort=True):
            current = pd.Series(snap["cluster"].to_numpy(), index=snap["atom_id"].to_numpy()).dropna().astype(int)
            if previous is None:
                mapping = {c: c for c in current.unique().tolist()}
                next_id = max(mapping, default=0) + 1
            else:
                mapping, next_id = clustering.match_labels(previous, current, next_id)
            relabelled = current.map(mapping)
            known = snap["cluster"].notna().to_numpy()
            out.loc[snap.index[known]] = relabelled.to_numpy()
            previous = relabelled
    h["cluster"] = out
    return h


def _top_columns(wide: pd.DataFrame, n: int) -> tuple[list, list]:
    """(the `n` columns of largest mean, largest first; the others)."""
    order = list(wide.mean().sort_values(ascending=False, kind="stable").index)
    return order[:n], order[n:]


def drift_monitor(history: pd.DataFrame, profile: str, top: int = TOP_SERIES, drift: pd.DataFrame | None = None):
    """Two rows for one profile: stacked area of atom weights per rebalance (top), turnover bars (bottom).

    The `top` atoms of largest mean weight are drawn one by one (largest at the bottom), the rest summed
    as "other (k atoms)"; atoms absent at a rebalance count as weight 0. Turnover is over all atoms.
    `drift`: `drift_table(history)` when the caller has it (else computed for this profile).
    Raises ``ValueError`` if `profile` is not in `history`.
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    sub = _profile_history(history, profile)
    wide = sub.pivot(index="rebalance", columns="atom_id", values="weight").sort_index().fillna(0.0)
    shown, rest = _top_columns(wide, top)
    drift = drift_table(sub) if drift is None else drift[drift["profile"] == profile]
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.7, 0.3], vertical_spacing=0.08,
                        subplot_titles=("Atom weights", "Turnover (½ Σ|Δw|)"))
    for atom in shown:
        fig.add_trace(go.Scatter(x=wide.index, y=wide[atom].to_numpy(), name=str(atom), mode="lines",
                                 stackgroup="weights", line=dict(width=0.5),
                                 hovertemplate=f"{atom}<br>%{{x}}<br>weight %{{y:.4f}}<extra></extra>"),
                      row=1, col=1)
    if rest:
        name = f"other ({len(rest)} atoms)"
        fig.add_trace(go.Scatter(x=wide.index, y=wide[rest].sum(axis=1).to_numpy(), name=name, mode="lines",
                                 stackgroup="weights", line=dict(width=0.5, color=OTHER_COLOUR),
                                 fillcolor=OTHER_COLOUR,
                                 hovertemplate=f"{name}<br>%{{x}}<br>weight %{{y:.4f}}<extra></extra>"),
                      row=1, col=1)
    fig.add_trace(go.Bar(x=drift["rebalance"], y=drift["turnover"], name="turnover", marker_color="#444",
                         showlegend=False, hovertemplate="%{x}<br>turnover %{y:.4f}<extra></extra>"),
                  row=2, col=1)
    fig.update_yaxes(title_text="weight", row=1, col=1)
    fig.update_yaxes(title_text="turnover", row=2, col=1)
    fig.update_layout(title=f"Drift monitor: {profile} (top {len(shown)} atoms by mean weight"
                            + (f", {len(rest)} more as other)" if rest else ")"),
                      height=620, hovermode="closest", legend_title_text="atom")
    return fig


def cluster_composition(history: pd.DataFrame, profile: str, top: int = TOP_SERIES):
    """Stacked bars for one profile: total weight per cluster at each rebalance (one trace per cluster).

    Cluster ids are `stable_cluster_ids` (a colour is the same group over time); the `top` clusters
    of largest mean weight are drawn one by one, the rest summed as "other clusters", atoms without a
    cluster as "unclustered". Raises ``ValueError`` for an unknown profile.
    """
    import plotly.express as px
    import plotly.graph_objects as go

    sub = stable_cluster_ids(_profile_history(history, profile))
    clustered = sub.loc[sub["cluster"].notna()]
    table = clustered.pivot_table(index="rebalance", columns="cluster", values="weight", aggfunc="sum",
                                  fill_value=0.0).reindex(sorted(sub["rebalance"].unique())).fillna(0.0)
    shown, rest = _top_columns(table, top) if len(table.columns) else ([], [])
    first_seen = {c: table.index[table[c].to_numpy() != 0][:1].tolist() or [table.index[-1]] for c in shown}
    palette = px.colors.qualitative.Dark24
    series = [(f"cluster {c}", table[c], palette[k % len(palette)])
              for k, c in enumerate(sorted(shown, key=lambda c: (first_seen[c][0], c)))]
    if rest:
        series.append((f"other clusters ({len(rest)})", table[rest].sum(axis=1), OTHER_COLOUR))
    loose = sub.loc[sub["cluster"].isna()]
    if len(loose):
        series.append(("unclustered", loose.groupby("rebalance")["weight"].sum().reindex(table.index, fill_value=0.0),
                       UNCLUSTERED_COLOUR))
    fig = go.Figure()
    for name, values, colour in series:
        fig.add_trace(go.Bar(x=values.index, y=values.to_numpy(), name=name, marker_color=colour,
                             hovertemplate=f"{name}<br>%{{x}}<br>weight %{{y:.4f}}<extra></extra>"))
    fig.update_layout(barmode="relative", yaxis_title="weight", height=460, legend_title_text="cluster",
                      title=f"Cluster composition per rebalance: {profile}<br><sup>cluster ids follow the "
                            f"largest overlap with the previous rebalance; top {len(shown)} by mean weight</sup>")
    return fig
