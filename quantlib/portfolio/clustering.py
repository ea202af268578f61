"""Correlation clusters shared by selection (§2.2), pre-optimization analysis (§2.4) and HRP.

Distance d = sqrt(0.5 * (1 - rho)) with rho the Pearson correlation averaged over the trailing
lookbacks that fit in the window (60/120/200 days by default; the whole window if none fits).
Ward linkage on that distance, cut at `threshold`, at most `max_clusters` clusters.
NaN policy: correlations are computed pairwise on the rows where both columns have data; a pair
with no overlap (or a zero-variance column) gets rho = 0.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

DEFAULT_LOOKBACKS = (60, 120, 200)


@dataclass(frozen=True)
class Clusters:
    """Cluster labels (1..k, indexed by column name) and the Ward linkage matrix they came from."""

    labels: pd.Series
    linkage: np.ndarray
    distance: pd.DataFrame

    @property
    def count(self) -> int:
        return int(self.labels.nunique())


def average_correlation(returns: pd.DataFrame, lookbacks: Sequence[int] = DEFAULT_LOOKBACKS) -> pd.DataFrame:
    """Correlation matrix averaged over the trailing `lookbacks` that fit in `returns` (dates x assets)."""
    n = len(returns)
    fits = [lb for lb in lookbacks if lb <= n] or [n]
    acc = np.zeros((returns.shape[1], returns.shape[1]))
    for lb in fits:
        rho = returns.iloc[-lb:].corr().to_numpy()
        acc += np.nan_to_num(rho, nan=0.0)
    rho = acc / len(fits)
    np.fill_diagonal(rho, 1.0)
    return pd.DataFrame(np.clip(rho, -1.0, 1.0), index=returns.columns, columns=returns.columns)


def correlation_distance(rho: pd.DataFrame) -> pd.DataFrame:
    """d = sqrt(0.5 * (1 - rho)), zero on the diagonal."""
    d = np.sqrt(np.clip(0.5 * (1.0 - rho.to_numpy()), 0.0, None))
    np.fill_diagonal(d, 0.0)
    return pd.DataFrame(d, index=rho.index, columns=rho.columns)


def ward_clusters(returns: pd.DataFrame, threshold: float = 0.45, max_clusters: int = 25,
                  lookbacks: Sequence[int] = DEFAULT_LOOKBACKS) -> Clusters:
    """Ward clusters of the columns of `returns`, cut at distance `threshold` (<= `max_clusters`)."""
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import squareform

    cols = returns.columns
    dist = correlation_distance(average_correlation(returns, lookbacks))
    if len(cols) == 1:
        return Clusters(pd.Series([1], index=cols, name="cluster"), np.empty((0, 4)), dist)
    z = linkage(squareform(dist.to_numpy(), checks=False), method="ward")
    labels = fcluster(z, t=threshold, criterion="distance")
    if labels.max() > max_clusters:
        labels = fcluster(z, t=max_clusters, criterion="maxclust")
    return Clusters(pd.Series(labels.astype(int), index=cols, name="cluster"), z, dist)


def match_labels(previous: pd.Series, current: pd.Series, next_id: int) -> tuple[dict, int]:
    """Ids for `current`'s clusters that continue `previous`'s: {current id: id} and the next fresh id.

    `previous` and `current` map item (atom) -> cluster id. The overlap matrix counts, for each pair
    (current cluster, previous cluster), the items they share; the assignment maximizing the total
    overlap (Hungarian, `scipy.optimize.linear_sum_assignment`, each previous id used at most once)
    gives a current cluster its previous id; a cluster matched to nothing it overlaps (overlap 0, or
    more current than previous clusters) gets a fresh id `next_id`, `next_id + 1`, ... in the order of
    its smallest original id. Only ids change: which items are together is untouched."""
    from scipy.optimize import linear_sum_assignment

    cur_ids = sorted(pd.unique(current.dropna()).tolist(), key=id_order)
    prev_ids = sorted(pd.unique(previous.dropna()).tolist(), key=id_order)
    mapping: dict = {}
    if cur_ids and prev_ids:
        shared = current.index.intersection(previous.index)
        cur, prev = current.reindex(shared), previous.reindex(shared)
        both = cur.notna().to_numpy() & prev.notna().to_numpy()
        rows_of, cols_of = {c: i for i, c in enumerate(cur_ids)}, {c: j for j, c in enumerate(prev_ids)}
        overlap = np.zeros((len(cur_ids), len(prev_ids)), dtype=np.int64)  # pd.crosstab's counts, ~50x faster
        np.add.at(overlap, ([rows_of[c] for c in cur[both]], [cols_of[c] for c in prev[both]]), 1)
        rows, cols = linear_sum_assignment(-overlap)
        mapping = {cur_ids[r]: prev_ids[c] for r, c in zip(rows, cols) if overlap[r, c] > 0}
    for cid in cur_ids:
        if cid not in mapping:
            mapping[cid] = next_id
            next_id += 1
    return mapping, next_id


def id_order(value) -> tuple:
    """Sort key for cluster ids: numbers by value (2 before 10), then anything else by its text."""
    try:
        return (0, float(value), str(value))
    except (TypeError, ValueError):
        return (1, 0.0, str(value))
